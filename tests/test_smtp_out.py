"""The smarthost client against the loopback sink (and a few misbehaving servers),
and the sink itself: in process and as `python -m maild.adapters.sink`."""

from __future__ import annotations

import asyncio
import json
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import pytest

from maild.adapters.sink import RunningSink, start_sink
from maild.adapters.smtp_out import Envelope, Outcome, SendResult, Smarthost, xtext
from maild.config import SmtpConfig, StartTls

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SENDER = "security@maild.test"
RCPT = "security@distro.test"
# Dot-stuffing must round-trip: a lone ".", ".." and ". " lines, a dot at the very end.
MESSAGE = (
    b"From: security@maild.test\r\n"
    b"To: security@distro.test\r\n"
    b"Subject: Embargoed notice\r\n"
    b"\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b". dot space\r\n"
    b"middle . dot\r\n"
    b"\xc3\xa9 eight-bit\r\n"
    b".\r\n"
)


def config(port: int, *, starttls: StartTls = StartTls.OFF, **changes: Any) -> SmtpConfig:
    fields: dict[str, Any] = {"username": "", "password_file": None, "connections": 2}
    fields.update(changes)
    return SmtpConfig("127.0.0.1", port, starttls, **fields)


def smarthost(port: int, *, timeout: float = 5.0, **kwargs: Any) -> Smarthost:
    tls = kwargs.pop("tls_context", None)
    password = kwargs.pop("password", None)
    return Smarthost(
        config(port, **kwargs),
        local_hostname="maild.test",
        password=password,
        timeout=timeout,
        tls_context=tls,
    )


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


def send_once(running: RunningSink, **kwargs: Any) -> Callable[[], Awaitable[SendResult]]:
    async def go() -> SendResult:
        async with smarthost(running.port, **kwargs) as host:
            return await host.send(Envelope(SENDER, RCPT, MESSAGE, envid="Notice-1"))

    return go


@asynccontextmanager
async def sink(**kwargs: Any) -> AsyncIterator[RunningSink]:
    running = await start_sink(**kwargs)
    try:
        yield running
    finally:
        await running.close()


def client(port: int) -> aiosmtplib.SMTP:
    """A bare aiosmtplib client, to speak to the sink directly."""
    return aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname="maild.test", start_tls=False
    )


def free_port() -> int:
    """A port nothing listens on (bound, never listened, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- delivery -------------------------------------------------------------------------


def test_accepted_message_arrives_byte_for_byte_and_result_carries_queue_id() -> None:
    """The prebuilt bytes arrive unchanged (dot lines, 8-bit, final CRLF), and the
    result is ACCEPTED with code 250 and the sink's reply, queue id included."""

    async def go() -> None:
        async with sink() as running, smarthost(running.port) as host:
            result = await host.send(Envelope(SENDER, RCPT, MESSAGE))
            (got,) = running.sink.received
            assert got.data == MESSAGE
            assert (got.mail_from, got.rcpt_tos) == (SENDER, (RCPT,))
            assert result == SendResult(
                Outcome.ACCEPTED, 250, f"2.0.0 Ok: queued as {got.queue_id}", True
            )
            assert "BODY=8BITMIME" in got.mail_options

    run(go)


def test_dsn_parameters_are_sent_when_the_server_advertises_dsn() -> None:
    """With DSN in EHLO: RET=HDRS and the ENVID (xtext, case kept) on MAIL, and
    NOTIFY=SUCCESS,FAILURE,DELAY on RCPT; the result says DSN was requested."""

    async def go() -> None:
        async with sink() as running, smarthost(running.port) as host:
            envid = "Notice+7=a b"
            result = await host.send(Envelope(SENDER, RCPT, MESSAGE, envid=envid))
            (got,) = running.sink.received
            assert result.outcome is Outcome.ACCEPTED and result.dsn_requested
            assert "RET=HDRS" in got.mail_options
            assert "ENVID=Notice+2B7+3Da+20b" in got.mail_options
            assert got.rcpt_options == ("NOTIFY=SUCCESS,FAILURE,DELAY",)

    run(go)


def test_no_dsn_parameters_when_the_server_does_not_advertise_dsn() -> None:
    """Without DSN in EHLO nothing DSN-related is sent (the sink would answer 555),
    the message is still accepted, and the result says no DSN was requested."""

    async def go() -> None:
        async with sink(dsn=False) as running:
            result = await send_once(running)()
            (got,) = running.sink.received
            assert result.outcome is Outcome.ACCEPTED and not result.dsn_requested
            assert not any(o.upper().startswith(("RET", "ENVID")) for o in got.mail_options)
            assert got.rcpt_options == ()

    run(go)


def test_xtext_encodes_plus_equals_controls_and_non_ascii() -> None:
    """ENVID values are xtext: '+', '=', space, controls and non-ASCII bytes become +HH."""
    assert xtext("<id-42@maild.test>") == "<id-42@maild.test>"
    assert xtext("a+b=c d\x01\u00e9") == "a+2Bb+3Dc+20d+01+C3+A9"


# -- refusals and failures ----------------------------------------------------------------


def test_4xx_at_rcpt_is_deferred_and_the_retry_is_accepted() -> None:
    """A 451 at RCPT gives DEFERRED with code 451 and the server's text; the next
    attempt (same pooled connection) is accepted."""
    replies = {1: "451 4.3.0 try later"}

    async def go() -> None:
        async with (
            sink(replies=lambda rcpt, n: replies.get(n)) as running,
            smarthost(running.port) as host,
        ):
            first = await host.send(Envelope(SENDER, RCPT, MESSAGE))
            second = await host.send(Envelope(SENDER, RCPT, MESSAGE))
            assert (first.outcome, first.code, first.response) == (
                Outcome.DEFERRED,
                451,
                "4.3.0 try later",
            )
            assert second.outcome is Outcome.ACCEPTED
            assert running.sink.attempts(RCPT) == 2
            assert len(running.sink.received) == 1
            assert running.sink.connections == 1

    run(go)


def test_5xx_at_rcpt_is_failed() -> None:
    """A 550 at RCPT gives FAILED with code 550 and the server's text."""

    async def go() -> None:
        async with sink(replies=lambda rcpt, n: "550 5.1.1 no such user") as running:
            result = await send_once(running)()
            assert (result.outcome, result.code) == (Outcome.FAILED, 550)
            assert result.response == "5.1.1 no such user"
            assert running.sink.received == []

    run(go)


@pytest.mark.parametrize(
    ("reply", "outcome", "code"),
    [
        ("data:452 4.3.1 out of space", Outcome.DEFERRED, 452),
        ("data:554 5.6.0 no", Outcome.FAILED, 554),
    ],
)
def test_refusal_after_data_is_classified_by_its_code(
    reply: str, outcome: Outcome, code: int
) -> None:
    """A refusal at the end of DATA: 4xx is DEFERRED, 5xx FAILED, code kept."""

    async def go() -> None:
        async with sink(replies=lambda rcpt, n: reply) as running:
            result = await send_once(running)()
            assert (result.outcome, result.code) == (outcome, code)
            assert running.sink.received == []

    run(go)


def test_server_down_is_deferred_without_a_code() -> None:
    """Nothing listening: DEFERRED, code None, the response names the server."""
    port = free_port()

    async def go() -> SendResult:
        async with smarthost(port) as host:
            return await host.send(Envelope(SENDER, RCPT, MESSAGE))

    result = run(go)
    assert (result.outcome, result.code, result.dsn_requested) == (Outcome.DEFERRED, None, False)
    assert "127.0.0.1" in result.response and str(port) in result.response


def test_silent_server_is_deferred_after_the_configured_timeout() -> None:
    """A server that accepts the connection and never greets: DEFERRED, code None,
    once the (here 0.5 s) timeout has passed."""

    async def go() -> tuple[SendResult, float]:
        writers: list[asyncio.StreamWriter] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with smarthost(port, timeout=0.5) as host:
                start = time.monotonic()
                result = await host.send(Envelope(SENDER, RCPT, MESSAGE))
                return result, time.monotonic() - start
        finally:
            for writer in writers:
                writer.close()
            server.close()
            await server.wait_closed()

    result, elapsed = run(go)
    assert (result.outcome, result.code) == (Outcome.DEFERRED, None)
    assert "timed out" in result.response.lower()
    assert 0.4 < elapsed < 5


# -- the pool -----------------------------------------------------------------------------


def test_twenty_messages_share_at_most_two_connections() -> None:
    """With connections = 2, 20 concurrent sends open two TCP connections, reuse
    them, never run more than two transactions at once, and all are accepted;
    close() QUITs both."""

    async def go() -> None:
        async with sink() as running:
            host = smarthost(running.port, connections=2)
            envelopes = [
                Envelope(SENDER, f"rcpt{i}@distro.test", MESSAGE, envid=f"n{i}") for i in range(20)
            ]
            results = await asyncio.gather(*(host.send(e) for e in envelopes))
            assert all(r.outcome is Outcome.ACCEPTED for r in results)
            assert len({r.response for r in results}) == 20
            assert running.sink.connections == 2
            assert running.sink.peak_transactions <= 2
            assert len(running.sink.received) == 20
            await host.close()
            assert running.sink.quits == 2

    run(go)


def test_a_connection_the_server_dropped_is_replaced() -> None:
    """When the smarthost goes away between sends (restart), the pooled connection
    is noticed dead and the next send opens a new one and is accepted."""

    async def go() -> None:
        first_sink = await start_sink()
        port = first_sink.port
        async with smarthost(port) as host:
            assert (await host.send(Envelope(SENDER, RCPT, MESSAGE))).outcome is Outcome.ACCEPTED
            await first_sink.close()
            async with sink(port=port) as second_sink:
                result = await host.send(Envelope(SENDER, RCPT, MESSAGE))
                assert result.outcome is Outcome.ACCEPTED
                assert len(second_sink.sink.received) == 1

    run(go)


# -- STARTTLS and AUTH --------------------------------------------------------------------


def test_starttls_required_but_not_offered_is_deferred_and_nothing_is_sent() -> None:
    """starttls = required against a server without STARTTLS: DEFERRED with a
    response saying so, and no MAIL is ever sent in the clear."""

    async def go() -> None:
        async with sink() as running:
            result = await send_once(running, starttls=StartTls.REQUIRED)()
            assert (result.outcome, result.code) == (Outcome.DEFERRED, None)
            assert "STARTTLS" in result.response and "does not offer" in result.response
            assert running.sink.received == [] and running.sink.attempts(RCPT) == 0

    run(go)


def test_starttls_required_carries_auth_and_message_over_verified_tls(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """starttls = required with a trusted certificate: STARTTLS, then AUTH, then
    the message, all over TLS."""
    server_ctx, client_ctx = tls

    async def go() -> None:
        async with sink(tls_context=server_ctx, credentials={"maild": "s3cret"}) as running:
            result = await send_once(
                running,
                starttls=StartTls.REQUIRED,
                tls_context=client_ctx,
                username="maild",
                password="s3cret",
            )()
            assert result.outcome is Outcome.ACCEPTED, result
            (got,) = running.sink.received
            assert got.tls and got.login == "maild"

    run(go)


def test_starttls_required_verifies_the_certificate(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """starttls = required without a context trusting the server's self-signed
    certificate: the handshake fails, DEFERRED, nothing sent in the clear."""
    server_ctx, _ = tls

    async def go() -> None:
        async with sink(tls_context=server_ctx) as running:
            result = await send_once(running, starttls=StartTls.REQUIRED)()
            assert result.outcome is Outcome.DEFERRED
            assert "STARTTLS" in result.response and "handshake failed" in result.response
            assert running.sink.received == []

    run(go)


def test_opportunistic_starttls_encrypts_when_offered(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """starttls = opportunistic upgrades when the server offers STARTTLS, even to a
    self-signed certificate, and sends in the clear when it does not."""
    server_ctx, _ = tls

    async def go() -> None:
        async with sink(tls_context=server_ctx) as with_tls, sink() as without:
            assert (await send_once(with_tls, starttls=StartTls.OPPORTUNISTIC)()).outcome == (
                Outcome.ACCEPTED
            )
            assert (await send_once(without, starttls=StartTls.OPPORTUNISTIC)()).outcome == (
                Outcome.ACCEPTED
            )
            assert with_tls.sink.received[0].tls and not without.sink.received[0].tls

    run(go)


def test_auth_is_used_when_a_username_is_set() -> None:
    """With a username, the client authenticates (the sink requires it) and the
    message is accepted as that user; without one, MAIL is refused (530)."""

    async def go() -> None:
        async with sink(credentials={"maild": "s3cret"}) as running:
            ok = await send_once(running, username="maild", password="s3cret")()
            anonymous = await send_once(running)()
            assert ok.outcome is Outcome.ACCEPTED
            assert running.sink.received[0].login == "maild"
            assert (anonymous.outcome, anonymous.code) == (Outcome.FAILED, 530)

    run(go)


def test_rejected_credentials_are_deferred_not_failed() -> None:
    """A 535 to AUTH is a configuration problem, not the message's: DEFERRED, with
    the server's code and a response naming AUTH."""

    async def go() -> None:
        async with sink(credentials={"maild": "s3cret"}) as running:
            result = await send_once(running, username="maild", password="wrong")()
            assert (result.outcome, result.code) == (Outcome.DEFERRED, 535)
            assert "AUTH" in result.response
            assert running.sink.received == []

    run(go)


# -- the sink -----------------------------------------------------------------------------


def test_maildir_holds_one_file_per_accepted_message(tmp_path: Path) -> None:
    """Each accepted message is one file in new/ with exactly its bytes; refused
    ones leave nothing, and tmp/ is empty afterwards."""
    maildir = tmp_path / "Maildir"

    def replies(rcpt: str, attempt: int) -> str | None:
        return "550 5.1.1 no such user" if rcpt.startswith("nobody") else None

    async def go() -> None:
        async with sink(maildir=maildir, replies=replies) as running:
            async with smarthost(running.port) as host:
                for rcpt in ("a@distro.test", "nobody@distro.test", "b@distro.test"):
                    await host.send(Envelope(SENDER, rcpt, MESSAGE + rcpt.encode()))
            files = sorted((maildir / "new").iterdir())
            assert len(files) == 2
            assert {f.read_bytes() for f in files} == {r.data for r in running.sink.received}
            for got in running.sink.received:  # each file is named after its queue id
                assert [f for f in files if got.queue_id in f.name] == [
                    f for f in files if f.read_bytes() == got.data
                ]
            assert list((maildir / "tmp").iterdir()) == []
            assert (maildir / "cur").is_dir()

    run(go)


def test_sink_without_dsn_refuses_dsn_parameters_and_with_dsn_checks_them() -> None:
    """The sink with DSN off answers 555 to RET (as aiosmtpd does); with DSN on it
    answers 501 to a malformed NOTIFY."""

    async def go() -> None:
        async with sink(dsn=False) as plain, sink() as dsn:
            async with client(plain.port) as c:
                with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                    await c.mail(SENDER, options=["RET=HDRS"])
                assert refused.value.code == 555
            async with client(dsn.port) as c:
                await c.ehlo()
                assert c.supports_extension("dsn")
                await c.mail(SENDER, options=["RET=FULL", "ENVID=x"])
                with pytest.raises(aiosmtplib.SMTPRecipientRefused) as bad:
                    await c.rcpt(RCPT, options=["NOTIFY=SOMETIMES"])
                assert bad.value.code == 501

    run(go)


def test_sink_process_prints_its_port_follows_its_script_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """`python -m maild.adapters.sink` prints "listening on 127.0.0.1:PORT", defers
    a recipient's first attempt as scripted, accepts the retry into its Maildir,
    and exits 0 on SIGTERM."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps({RCPT: ["451 4.3.0 later", None]}), encoding="utf-8")
    maildir = tmp_path / "Maildir"
    command = [sys.executable, "-m", "maild.adapters.sink", "--port", "0"]
    command += ["--maildir", str(maildir), "--script", str(script)]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the sink printed nothing within 10 s"
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", proc.stdout.readline())
        assert match, "unexpected first line"
        port = int(match.group(1))

        async def go() -> list[SendResult]:
            async with smarthost(port) as host:
                return [await host.send(Envelope(SENDER, RCPT, MESSAGE)) for _ in range(2)]

        first, second = run(go)
        assert (first.outcome, first.code) == (Outcome.DEFERRED, 451)
        assert second.outcome is Outcome.ACCEPTED and second.dsn_requested
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        (stored,) = (maildir / "new").iterdir()
        assert stored.read_bytes() == MESSAGE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
