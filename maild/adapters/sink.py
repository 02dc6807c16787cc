"""A loopback smarthost for `maild demo` and the tests: aiosmtpd on the caller's loop.

`DsnSMTP` is aiosmtpd's SMTP with the DSN extension (RFC 3461) advertised and its
parameters accepted; `Sink` is the handler that keeps what it accepts (in memory, and
in a Maildir when given one) and can be scripted to refuse a recipient's first tries.

Run on its own for end-to-end tests of the daemon:

    python -m maild.adapters.sink --port PORT [--maildir DIR] [--no-dsn] [--script FILE]

prints `listening on 127.0.0.1:PORT` once ready and runs until SIGTERM or SIGINT. The
script is JSON mapping a recipient to its replies by attempt, null meaning accept:
`{"a@example.org": ["451 4.3.0 later", null], "b@example.org": ["550 5.1.1 no such user"]}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import ssl
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

__all__ = ["DsnSMTP", "Received", "Replies", "RunningSink", "Sink", "start_sink"]

SERVER_NAME = "maild-sink.localhost"  # given to aiosmtpd: its default is a DNS lookup

Replies = Callable[[str, int], str | None]
"""(recipient, attempt number for it, from 1) -> None to accept, or a 4xx/5xx reply
line to refuse it at RCPT; prefixed with "data:", the reply refuses the message at
the end of DATA instead."""

_XTEXT = r"(?:[\x21-\x2A\x2C-\x3C\x3E-\x7E]|\+[0-9A-F]{2})+"
_DSN_VALUES = {  # RFC 3461 section 4; aiosmtpd upper-cases parameters before we see them
    "RET": re.compile(r"FULL|HDRS"),
    "ENVID": re.compile(_XTEXT),
    "NOTIFY": re.compile(r"NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*"),
    "ORCPT": re.compile(r"[A-Z0-9-]+;" + _XTEXT),
}
_MAIL_DSN = frozenset({"RET", "ENVID"})
_RCPT_DSN = frozenset({"NOTIFY", "ORCPT"})
_REPLY = re.compile(r"[45][0-9][0-9]([ -].*)?")


class DsnSMTP(SMTP):
    """aiosmtpd's SMTP that advertises DSN in EHLO (when `dsn`) and accepts RET and
    ENVID on MAIL, NOTIFY and ORCPT on RCPT, instead of answering 555. Invalid DSN
    values get aiosmtpd's 501 syntax reply. The envelope keeps the options as the
    client spelled them (aiosmtpd upper-cases them; ENVID and ORCPT are case-sensitive).
    """

    def __init__(self, handler: Any, *, dsn: bool = True, **kwargs: Any) -> None:
        self.dsn = dsn
        self._accepting: frozenset[str] = frozenset()
        self._in_ehlo = False
        super().__init__(handler, **kwargs)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def push(self, status: AnyStr) -> None:
        # The EHLO reply's last line ("250 HELP") is the one without a hyphen.
        if self._in_ehlo and self.dsn:
            line = status if isinstance(status, str) else status.decode("ascii", "replace")
            if line.startswith("250 "):
                await super().push("250-DSN")
        await super().push(status)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._with_dsn(super().smtp_MAIL, arg, _MAIL_DSN, "FROM:", "mail_options")

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._with_dsn(super().smtp_RCPT, arg, _RCPT_DSN, "TO:", "rcpt_options")

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result = super()._getparams(params)
        if result is None:
            return None
        for key in self._accepting & result.keys():
            value = result.pop(key)
            if not isinstance(value, str) or not _DSN_VALUES[key].fullmatch(value):
                return None
        return result

    async def _with_dsn(
        self,
        command: Callable[[str | None], Any],
        arg: str | None,
        accept: frozenset[str],
        keyword: str,
        options_name: str,
    ) -> None:
        envelope = self.envelope
        options: list[str] = getattr(envelope, options_name) if envelope else []
        before = len(options)
        self._accepting = accept if self.dsn else frozenset()
        try:
            await command(arg)
        finally:
            self._accepting = frozenset()
        if arg is not None and len(options) > before:
            rest = self._strip_command_keyword(keyword, arg)
            _, params = self._getaddr(rest) if rest is not None else (None, None)
            spelled = (params or "").split()
            if [p.upper() for p in spelled] == options[before:]:
                options[before:] = spelled


@dataclass(frozen=True)
class Received:
    """One accepted message, as the sink got it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # exactly the message bytes, dot-unstuffed, with their final CRLF
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    queue_id: str
    at: datetime
    login: str | None = None  # the AUTH user, when the client authenticated
    tls: bool = False  # whether the transaction ran over STARTTLS


@dataclass
class Sink:
    """aiosmtpd handler: accept mail, keep it, answer with a queue id.

    With `credentials`, MAIL needs a successful AUTH as one of those users.
    `peak_transactions` is the most MAIL..end-of-DATA transactions seen at once
    (one left unfinished by a dropped connection keeps counting).
    """

    maildir: Path | None = None
    replies: Replies | None = None
    credentials: Mapping[str, str] | None = None
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    quits: int = 0
    peak_transactions: int = 0
    _attempts: Counter[str] = field(default_factory=Counter)
    _open: set[int] = field(default_factory=set)  # sessions inside a transaction
    _at_data: dict[int, str] = field(default_factory=dict)  # session -> DATA refusal
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.maildir is not None:
            for sub in ("tmp", "new", "cur"):
                (self.maildir / sub).mkdir(parents=True, exist_ok=True)

    def attempts(self, recipient: str) -> int:
        """How many times a RCPT for this recipient was seen."""
        return self._attempts[recipient.lower()]

    def authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """aiosmtpd authenticator: LOGIN and PLAIN against `credentials`."""
        if isinstance(data, LoginPassword) and self.credentials is not None:
            user = data.login.decode("utf-8", "replace")
            if self.credentials.get(user) == data.password.decode("utf-8", "replace"):
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    # -- aiosmtpd hooks -----------------------------------------------------------
    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self._open.add(id(session))
        self.peak_transactions = max(self.peak_transactions, len(self._open))
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        self._attempts[address.lower()] += 1
        reply = self.replies(address, self._attempts[address.lower()]) if self.replies else None
        if reply is not None:
            at_data = reply[:5].lower() == "data:"
            line = reply[5:].strip() if at_data else reply
            if not _REPLY.fullmatch(line):
                raise ValueError(f"scripted reply {reply!r} is not a 4xx or 5xx reply line")
            if not at_data:
                return line
            self._at_data[id(session)] = line
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._open.discard(id(session))
        refusal = self._at_data.pop(id(session), None)
        if refusal is not None:
            return refusal
        queue_id = f"{secrets.token_hex(3).upper()}{next(self._serial):04X}"
        data = envelope.original_content or b""
        if self.maildir is not None:
            self._deliver(queue_id, data)
        self.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=data,
                mail_options=tuple(envelope.mail_options),
                rcpt_options=tuple(envelope.rcpt_options),
                queue_id=queue_id,
                at=datetime.now(UTC),
                login=session.auth_data if isinstance(session.auth_data, str) else None,
                tls=session.ssl is not None,
            )
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._end(session)
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        self._end(session)
        return "221 2.0.0 Bye"

    def _end(self, session: Session) -> None:
        self._open.discard(id(session))
        self._at_data.pop(id(session), None)

    def _deliver(self, queue_id: str, data: bytes) -> None:
        """Maildir delivery: write under tmp/, fsync, rename into new/."""
        assert self.maildir is not None
        now = time.time()
        host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{queue_id}.{host}"
        tmp = self.maildir / "tmp" / name
        with tmp.open("xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.rename(self.maildir / "new" / name)


@dataclass
class RunningSink:
    """A sink listening on the loop that started it."""

    server: asyncio.Server
    sink: Sink
    host: str
    port: int
    _protocols: weakref.WeakSet[DsnSMTP]

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        self.server.close()
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.close()
        await self.server.wait_closed()

    async def __aenter__(self) -> RunningSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_sink(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    maildir: Path | None = None,
    dsn: bool = True,
    replies: Replies | None = None,
    credentials: Mapping[str, str] | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> RunningSink:
    """Listen on host:port (0: any free port) on the running loop.

    `credentials` (user -> password) makes AUTH required; it is offered without TLS
    unless `tls_context` is given, in which case STARTTLS is offered and AUTH only
    after it.
    """
    loop = asyncio.get_running_loop()
    sink = Sink(maildir=maildir, replies=replies, credentials=credentials)
    protocols: weakref.WeakSet[DsnSMTP] = weakref.WeakSet()

    def connection() -> DsnSMTP:
        sink.connections += 1
        protocol = DsnSMTP(
            sink,
            dsn=dsn,
            hostname=SERVER_NAME,
            loop=loop,
            tls_context=tls_context,
            authenticator=sink.authenticator if credentials is not None else None,
            auth_require_tls=tls_context is not None or credentials is None,
        )
        protocols.add(protocol)
        return protocol

    server = await loop.create_server(connection, host, port)
    bound = server.sockets[0].getsockname()[1]
    return RunningSink(server, sink, host, bound, protocols)


def script_replies(script: Mapping[str, Sequence[str | None]]) -> Replies:
    """Replies from a {recipient: [reply by attempt, ...]} script; later attempts accept."""
    by_recipient = {rcpt.lower(): list(replies) for rcpt, replies in script.items()}

    def replies(recipient: str, attempt: int) -> str | None:
        scripted = by_recipient.get(recipient.lower(), [])
        return scripted[attempt - 1] if attempt <= len(scripted) else None

    return replies


def _load_script(path: Path) -> Replies:
    script = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(script, dict) or not all(
        isinstance(v, list) and all(r is None or isinstance(r, str) for r in v)
        for v in script.values()
    ):
        raise ValueError(f"{path}: must map each recipient to a list of replies or nulls")
    return script_replies(script)


async def _serve(args: argparse.Namespace) -> None:
    replies = _load_script(args.script) if args.script else None
    running = await start_sink(
        args.host, args.port, maildir=args.maildir, dsn=not args.no_dsn, replies=replies
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {running.host}:{running.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await running.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m maild.adapters.sink", description="A loopback SMTP sink."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--maildir", type=Path, help="also keep each message in this Maildir")
    parser.add_argument("--no-dsn", action="store_true", help="do not advertise DSN")
    parser.add_argument("--script", type=Path, help="JSON: recipient -> replies by attempt")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except (OSError, ValueError) as exc:
        print(f"sink: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
