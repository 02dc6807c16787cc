"""The SMTP intake listener, spoken to by aiosmtplib and by raw sockets on loopback.

Time-based behaviour (idle timeout, session limit) is observed by reading the socket
until the server's 421 and close arrive; nothing sleeps. The timeouts on reads are
upper bounds that only matter when a test fails.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
import pytest
import structlog

from maild.adapters.smtp_in import Listener, ListenerConfig, Received, start_listener

HOSTNAME = "intake.maild.test"
INTAKE = "embargo@maild.test"
SENDER = "member@wg.test"
WAIT = 5.0  # upper bound for anything a test waits for
# Dot-stuffing must round-trip: a lone ".", ".." and ". " lines, 8-bit, final CRLF.
MESSAGE = (
    b"From: member@wg.test\r\n"
    b"To: embargo@maild.test\r\n"
    b"Subject: submission\r\n"
    b"\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b". dot space\r\n"
    b"\xc3\xa9 eight-bit\r\n"
    b"CONFIDENTIAL-ADVISORY-TEXT\r\n"
)
STUFFED = MESSAGE.replace(b"\r\n.", b"\r\n..")  # as it goes over the wire in DATA


@dataclass
class RecordingIntake:
    """Keeps what it is given; answers from `replies` in order (an exception is
    raised instead), then with a 250 naming the message's number. With `gate`, each
    receive waits for it to be set."""

    replies: list[str | Exception] = field(default_factory=list)
    gate: asyncio.Event | None = None
    received: list[Received] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: int = 0

    async def receive(self, message: Received) -> str:
        self.received.append(message)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.finished.set()
        reply = self.replies.pop(0) if self.replies else None
        if isinstance(reply, Exception):
            raise reply
        return f"250 2.0.0 Ok: queued as {len(self.received)}" if reply is None else reply


def run(factory: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await factory()

    asyncio.run(main())


@asynccontextmanager
async def listening(intake: RecordingIntake, **changes: Any) -> AsyncIterator[tuple[Listener, int]]:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "hostname": HOSTNAME,
        "addresses": (INTAKE,),
    }
    fields.update(changes)
    listener = await start_listener(ListenerConfig(**fields), intake)
    try:
        yield listener, listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        listener.abort_clients()
        await asyncio.wait_for(listener.wait_closed(), WAIT)


def client(port: int, **kwargs: Any) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname="wg.test", start_tls=False, **kwargs
    )


class Raw:
    """A plain socket conversation: exact bytes out, reply lines in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self) -> str:
        """One (possibly multi-line) reply, lines joined by \\n."""
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), WAIT)
            if not line:
                raise EOFError(f"connection closed after {lines!r}")
            lines.append(line.decode("ascii").rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    async def say(self, line: str) -> str:
        self.writer.write(line.encode("ascii") + b"\r\n")
        return await self.reply()

    async def rest(self) -> list[str]:
        """Everything the server sends until it closes the connection."""
        data = await asyncio.wait_for(self.reader.read(), WAIT)
        self.close()
        return data.decode("ascii").splitlines()

    async def start(self, *commands: str) -> None:
        """Banner, EHLO, then each command, each expected to succeed (2xx or 354)."""
        assert (await self.reply()).startswith("220 ")
        for line in ("EHLO wg.test", *commands):
            answer = await self.say(line)
            assert answer[:1] in "23", (line, answer)

    def close(self) -> None:
        self.writer.close()


# -- delivery ---------------------------------------------------------------------------


def test_message_reaches_the_intake_byte_for_byte_and_its_reply_is_passed_through() -> None:
    """The intake gets peer, envelope and the exact message bytes (dot lines unstuffed,
    8-bit, final CRLF) and tls=False; the client gets the intake's reply verbatim."""
    intake = RecordingIntake(replies=["250 2.0.0 Ok: queued as WG-42"])

    async def go() -> None:
        async with listening(intake) as (_, port), client(port) as smtp:
            _, response = await smtp.sendmail(SENDER, [INTAKE], MESSAGE)
            local = smtp.get_transport_info("sockname")
            assert response == "2.0.0 Ok: queued as WG-42"
            assert intake.received == [
                Received(f"{local[0]}:{local[1]}", SENDER, (INTAKE,), MESSAGE, tls=False)
            ]

    run(go)


def test_a_refusal_from_the_intake_is_passed_through() -> None:
    """A 5xx the intake returns is the reply to DATA, unchanged."""
    intake = RecordingIntake(replies=["550 5.7.1 Message refused: bad signature"])

    async def go() -> None:
        async with listening(intake) as (_, port), client(port) as smtp:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await smtp.sendmail(SENDER, [INTAKE], MESSAGE)
            assert (refused.value.code, refused.value.message) == (
                550,
                "5.7.1 Message refused: bad signature",
            )

    run(go)


def test_foreign_recipient_is_relaying_denied_even_beside_an_accepted_one() -> None:
    """RCPT for any address not configured gets 550 5.7.1 Relaying denied; in a
    transaction that also names the intake address, the message goes through with
    only the accepted recipients."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, addresses=(INTAKE, "second@maild.test")) as (_, port):
            async with client(port) as smtp:
                with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                    await smtp.sendmail(SENDER, ["victim@elsewhere.test"], MESSAGE)
                (error,) = refused.value.recipients
                assert (error.code, error.message) == (550, "5.7.1 Relaying denied")

                rcpts = ["victim@elsewhere.test", INTAKE, "second@maild.test"]
                errors, _ = await smtp.sendmail(SENDER, rcpts, MESSAGE)
                assert list(errors) == ["victim@elsewhere.test"]
                assert errors["victim@elsewhere.test"].message == "5.7.1 Relaying denied"
            (got,) = intake.received
            assert got.rcpt_tos == (INTAKE, "second@maild.test")

    run(go)


def test_recipient_match_ignores_case_and_keeps_the_client_spelling() -> None:
    """EMBARGO@Maild.TEST matches embargo@maild.test; the intake sees it as sent."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake) as (_, port), client(port) as smtp:
            await smtp.sendmail(SENDER, ["EMBARGO@Maild.TEST"], MESSAGE)
        assert intake.received[0].rcpt_tos == ("EMBARGO@Maild.TEST",)

    run(go)


def test_null_reverse_path_reaches_the_intake_as_empty_sender() -> None:
    """MAIL FROM:<> (bounces, DSNs) is accepted and given to the intake as ""."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake) as (_, port):
            raw = await Raw.open(port)
            await raw.start("MAIL FROM:<>", f"RCPT TO:<{INTAKE}>", "DATA")
            raw.writer.write(STUFFED + b".\r\n")
            assert (await raw.reply()).startswith("250 ")
            raw.close()
        assert intake.received[0].mail_from == ""

    run(go)


# -- size -------------------------------------------------------------------------------


def test_size_is_advertised_and_a_larger_declared_size_is_552() -> None:
    """EHLO advertises SIZE max_size; MAIL with SIZE=max_size is fine, one more is 552
    (aiosmtplib declares the size itself: a too-large message is refused at MAIL)."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, max_size=1000) as (_, port):
            raw = await Raw.open(port)
            await raw.reply()
            assert "250-SIZE 1000" in (await raw.say("EHLO wg.test")).split("\n")
            assert (await raw.say(f"MAIL FROM:<{SENDER}> SIZE=1001")).startswith("552 ")
            assert (await raw.say(f"MAIL FROM:<{SENDER}> SIZE=1000")).startswith("250 ")
            raw.close()
            async with client(port) as smtp:
                with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                    await smtp.sendmail(SENDER, [INTAKE], b"x" * 1000 + b"\r\n")
                assert refused.value.code == 552
        assert intake.received == []

    run(go)


def test_data_growing_past_max_size_is_552_and_never_reaches_the_intake() -> None:
    """Without SIZE on MAIL, DATA larger than max_size is read to its end, answered
    552, and not given to the intake; the connection can go on with a smaller one."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, max_size=1000) as (_, port):
            raw = await Raw.open(port)
            await raw.start(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA")
            raw.writer.write((b"y" * 98 + b"\r\n") * 11 + b".\r\n")
            assert (await raw.reply()).startswith("552 ")
            assert intake.received == []
            for line in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA"):
                assert (await raw.say(line))[:1] in "23"
            raw.writer.write(STUFFED + b".\r\n")
            assert (await raw.reply()).startswith("250 ")
            raw.close()
        assert [m.data for m in intake.received] == [MESSAGE]

    run(go)


# -- intake failures --------------------------------------------------------------------


def test_intake_raising_is_451_logged_without_content_and_the_connection_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception from receive gives 451 4.3.0; the log names the event and the
    exception type, never its message or the message content (not even aiosmtpd's
    DEBUG lines); the next transaction on the same connection is accepted."""
    caplog.set_level(logging.DEBUG)
    intake = RecordingIntake(replies=[RuntimeError("CONFIDENTIAL-ADVISORY-TEXT")])

    async def go() -> None:
        with structlog.testing.capture_logs() as events:
            async with listening(intake) as (_, port), client(port) as smtp:
                with pytest.raises(aiosmtplib.SMTPDataError) as failed:
                    await smtp.sendmail(SENDER, [INTAKE], MESSAGE)
                assert (failed.value.code, failed.value.message) == (
                    451,
                    "4.3.0 Temporary failure, try again later",
                )
                _, response = await smtp.sendmail(SENDER, [INTAKE], MESSAGE)
                assert response == "2.0.0 Ok: queued as 2"
        (failure,) = [e for e in events if e["event"] == "smtp-in-receive-failed"]
        assert failure["error"] == "RuntimeError"
        assert "CONFIDENTIAL" not in repr(events) + caplog.text

    run(go)


def test_message_lines_read_as_commands_never_reach_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that does not dot-stuff ends DATA at its own "." line and has the rest
    of the message read as commands; aiosmtpd would log those words (WARNING
    "unrecognised: ..."), so its logger is kept at ERROR: no message text in the log."""
    caplog.set_level(logging.DEBUG)
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake) as (_, port):
            raw = await Raw.open(port)
            await raw.start(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA")
            raw.writer.write(MESSAGE + b".\r\n")  # not stuffed: the first "." ends it
            assert (await raw.reply()).startswith("250 ")
            replies = [await raw.reply() for _ in range(4)]
            assert all(r.startswith("500 ") for r in replies), replies
            raw.close()
        assert intake.received[0].data == MESSAGE.split(b"\r\n.\r\n")[0] + b"\r\n"
        assert "CONFIDENTIAL" not in caplog.text

    run(go)


@pytest.mark.parametrize("reply", ["", "250Ok", "354 go on", "250 Ok\r\n250 more", "250 \u00e9"])
def test_a_malformed_intake_reply_is_never_sent_but_451(reply: str) -> None:
    """A reply that is not one printable-ASCII 2xx/4xx/5xx line is replaced by 451."""
    intake = RecordingIntake(replies=[reply])

    async def go() -> None:
        async with listening(intake) as (_, port), client(port) as smtp:
            with pytest.raises(aiosmtplib.SMTPDataError) as failed:
                await smtp.sendmail(SENDER, [INTAKE], MESSAGE)
            assert failed.value.code == 451

    run(go)


def test_client_leaving_during_receive_cancels_it() -> None:
    """A client that disconnects while receive runs cancels it: nobody is left to
    answer, and the client still holds the message."""
    intake = RecordingIntake(gate=asyncio.Event())

    async def go() -> None:
        async with listening(intake) as (_, port):
            raw = await Raw.open(port)
            await raw.start(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA")
            raw.writer.write(STUFFED + b".\r\n")
            await asyncio.wait_for(intake.started.wait(), WAIT)
            raw.close()
            await asyncio.wait_for(intake.finished.wait(), WAIT)
            assert intake.cancelled == 1

    run(go)


# -- SMTP smuggling -----------------------------------------------------------------------


def test_bare_lf_dot_cannot_end_data_and_smuggle_a_second_message() -> None:
    """`\\n.\\n` and `\\r\\n.\\n` followed by SMTP commands stay inside the one message
    (aiosmtpd >= 1.4.5 ends DATA only at CRLF.CRLF); the only change is the usual
    unstuffing of the dot that starts a CRLF-terminated line."""
    intake = RecordingIntake()
    smuggle = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<embargo@maild.test>\r\nDATA\r\n"
    payload = (
        b"Subject: one\r\n\r\nfirst\n.\n"
        + smuggle
        + b"Subject: two\r\n\r\nsecond\r\n.\n"
        + smuggle
        + b"Subject: three\r\n\r\nthird\r\n"
    )

    async def go() -> None:
        async with listening(intake) as (_, port):
            raw = await Raw.open(port)
            await raw.start(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA")
            raw.writer.write(payload + b".\r\nQUIT\r\n")
            assert await raw.rest() == ["250 2.0.0 Ok: queued as 1", "221 Bye"]
        (got,) = intake.received
        assert got.mail_from == SENDER
        assert got.data == payload.replace(b"\r\n.\nMAIL", b"\r\n\nMAIL")

    run(go)


# -- TLS ----------------------------------------------------------------------------------


def test_starttls_is_offered_and_marks_the_message_as_received_over_tls(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """With a TLS context, EHLO offers STARTTLS (and, after it, neither STARTTLS nor
    AUTH); a message sent after STARTTLS reaches the intake with tls=True, one sent
    in the clear on another connection with tls=False."""
    server_ctx, client_ctx = tls
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, tls_context=server_ctx) as (_, port):
            async with client(port, tls_context=client_ctx) as smtp:
                await smtp.ehlo()
                assert smtp.supports_extension("starttls")
                await smtp.starttls()
                await smtp.ehlo()
                assert not smtp.supports_extension("starttls")
                assert not smtp.supports_extension("auth")
                await smtp.sendmail(SENDER, [INTAKE], MESSAGE)
            async with client(port) as smtp:
                await smtp.sendmail(SENDER, [INTAKE], MESSAGE)
        assert [m.tls for m in intake.received] == [True, False]
        assert intake.received[0].data == MESSAGE

    run(go)


def test_require_tls_refuses_mail_rcpt_and_data_before_starttls(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """With require_tls, MAIL, RCPT and DATA before STARTTLS get 530 5.7.0 Must issue
    a STARTTLS command first (EHLO and NOOP still work); after STARTTLS the message
    is accepted."""
    server_ctx, client_ctx = tls
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, tls_context=server_ctx, require_tls=True) as (_, port):
            raw = await Raw.open(port)
            await raw.start("NOOP")
            for line in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA"):
                assert await raw.say(line) == "530 5.7.0 Must issue a STARTTLS command first"
            raw.close()
            async with client(port, tls_context=client_ctx) as smtp:
                await smtp.starttls()
                await smtp.sendmail(SENDER, [INTAKE], MESSAGE)
        assert [m.tls for m in intake.received] == [True]

    run(go)


def test_commands_pipelined_after_starttls_in_the_clear_are_dropped(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A command sent in the clear right behind STARTTLS is discarded, not run
    after the handshake (RFC 3207 section 5; aiosmtpd 1.4.6, CVE-2024-34083)."""
    server_ctx, client_ctx = tls
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, tls_context=server_ctx) as (_, port):
            raw = await Raw.open(port)
            await raw.start()
            raw.writer.write(b"STARTTLS\r\nVRFY <injected@attacker.test>\r\n")
            assert (await raw.reply()).startswith("220 ")
            await raw.writer.start_tls(client_ctx)
            assert (await raw.say("NOOP")).startswith("250 ")
            assert (await raw.say("STARTTLS")) == "503 5.5.1 TLS already active"
            raw.close()

    run(go)


# -- limits -------------------------------------------------------------------------------


def test_command_limit_counts_every_command_then_421_and_close() -> None:
    """command_limit counts all commands of a connection together, refused ones
    included (not per verb, as aiosmtpd's own limit does): with 5, the sixth gets
    421 4.7.0 and the connection is closed."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, command_limit=5) as (_, port):
            raw = await Raw.open(port)
            await raw.start(f"MAIL FROM:<{SENDER}>")
            assert (await raw.say("RCPT TO:<victim@elsewhere.test>")).startswith("550 ")
            await raw.say(f"RCPT TO:<{INTAKE}>")
            await raw.say("NOOP")
            raw.writer.write(b"DATA\r\n")
            assert await raw.rest() == [
                f"421 4.7.0 {HOSTNAME} Too many commands, closing connection"
            ]
        assert intake.received == []

    run(go)


def test_idle_connection_and_stalled_data_get_421_and_close() -> None:
    """A connection silent for idle_timeout, whether waiting for a command or in the
    middle of DATA, gets 421 4.4.2 and is closed; the stalled message is dropped."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, idle_timeout=0.2) as (_, port):
            quiet, stalled = await Raw.open(port), await Raw.open(port)
            assert (await quiet.reply()).startswith(f"220 {HOSTNAME} ")
            await stalled.start(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA")
            stalled.writer.write(b"Subject: half a line")
            idle = f"421 4.4.2 {HOSTNAME} Idle timeout, closing connection"
            assert await quiet.rest() == [idle]
            assert await stalled.rest() == [idle]
        assert intake.received == []

    run(go)


def test_session_limit_ends_a_connection_with_421() -> None:
    """A connection lasts at most session_limit, idle timeout or not: then 421 4.4.2."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake, session_limit=0.3) as (_, port):
            raw = await Raw.open(port)
            await raw.start()
            assert await raw.rest() == [
                f"421 4.4.2 {HOSTNAME} Session time limit, closing connection"
            ]

    run(go)


def test_time_in_receive_is_not_idle_time() -> None:
    """A receive that outlasts idle_timeout still gets its reply to the client: the
    clock here is a second connection, opened after receive began, being timed out."""
    intake = RecordingIntake(gate=asyncio.Event())

    async def go() -> None:
        async with listening(intake, idle_timeout=0.2) as (_, port):
            waiting = await Raw.open(port)
            await waiting.start(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA")
            waiting.writer.write(STUFFED + b".\r\n")
            await asyncio.wait_for(intake.started.wait(), WAIT)
            clock = await Raw.open(port)
            assert (await clock.rest())[-1].startswith("421 4.4.2 ")
            assert intake.gate is not None
            intake.gate.set()
            assert await waiting.reply() == "250 2.0.0 Ok: queued as 1"
            assert await waiting.say("QUIT") == "221 Bye"
            waiting.close()

    run(go)


# -- greeting -----------------------------------------------------------------------------


def test_banner_and_ehlo_show_the_configured_hostname_and_no_auth() -> None:
    """The banner and EHLO name config.hostname; AUTH is neither offered nor
    understood; HELP still lists the commands."""
    intake = RecordingIntake()

    async def go() -> None:
        async with listening(intake) as (_, port):
            raw = await Raw.open(port)
            assert await raw.reply() == f"220 {HOSTNAME} ESMTP maild"
            ehlo = (await raw.say("EHLO wg.test")).split("\n")
            assert ehlo[0] == f"250-{HOSTNAME}"
            assert not any("AUTH" in line for line in ehlo)
            assert (await raw.say("AUTH PLAIN AGEAYg==")).startswith("500 ")
            assert "MAIL" in await raw.say("HELP")
            raw.close()

    run(go)


# -- stopping -----------------------------------------------------------------------------


def test_close_stops_accepting_ends_idle_sessions_and_lets_a_receive_answer() -> None:
    """close(): new connections are refused; a connection waiting for a command gets
    421 4.3.2 and is closed; one whose message is in receive gets the intake's reply,
    then the 421; wait_closed() returns once both have ended."""
    intake = RecordingIntake(gate=asyncio.Event())
    shutting = f"421 4.3.2 {HOSTNAME} Service shutting down"

    async def go() -> None:
        listener = await start_listener(ListenerConfig("127.0.0.1", 0, HOSTNAME, (INTAKE,)), intake)
        port = listener.sockets[0].getsockname()[1]
        busy, idle = await Raw.open(port), await Raw.open(port)
        await busy.start(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA")
        busy.writer.write(STUFFED + b".\r\n")
        await idle.start()
        await asyncio.wait_for(intake.started.wait(), WAIT)

        listener.close()
        with pytest.raises(ConnectionRefusedError):
            await Raw.open(port)
        assert await idle.rest() == [shutting]
        assert intake.gate is not None
        intake.gate.set()
        assert await busy.rest() == ["250 2.0.0 Ok: queued as 1", shutting]
        await asyncio.wait_for(listener.wait_closed(), WAIT)

    run(go)


def test_abort_clients_cancels_a_running_receive_with_451() -> None:
    """abort_clients() after close(): a receive still running is cancelled and its
    client gets 451 4.3.0, then 421; wait_closed() then returns."""
    intake = RecordingIntake(gate=asyncio.Event())

    async def go() -> None:
        listener = await start_listener(ListenerConfig("127.0.0.1", 0, HOSTNAME, (INTAKE,)), intake)
        busy = await Raw.open(listener.sockets[0].getsockname()[1])
        await busy.start(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTAKE}>", "DATA")
        busy.writer.write(STUFFED + b".\r\n")
        await asyncio.wait_for(intake.started.wait(), WAIT)

        listener.close()
        listener.abort_clients()
        assert await busy.rest() == [
            "451 4.3.0 Temporary failure, try again later",
            f"421 4.3.2 {HOSTNAME} Service shutting down",
        ]
        await asyncio.wait_for(listener.wait_closed(), WAIT)
        assert intake.cancelled == 1

    run(go)


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"require_tls": True}, "require_tls needs tls_context"),
        ({"addresses": ()}, "addresses must not be empty"),
        ({"hostname": "bad host\r\n"}, "hostname must be a domain name"),
        ({"command_limit": 0}, "command_limit must be at least 1"),
        ({"idle_timeout": 0}, "idle_timeout must be positive"),
    ],
)
def test_config_is_checked(changes: dict[str, Any], problem: str) -> None:
    """Settings the listener cannot honour are refused when the config is built."""
    fields: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "hostname": HOSTNAME}
    fields["addresses"] = (INTAKE,)
    fields.update(changes)
    with pytest.raises(ValueError, match=problem):
        ListenerConfig(**fields)
