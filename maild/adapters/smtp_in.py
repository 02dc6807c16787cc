"""Mail intake over SMTP: aiosmtpd's protocol on the daemon's own loop.

`start_listener` listens on `config.host:port` and hands every message that passes
the SMTP checks to `Intake.receive`, whose return value is the reply to the end of
DATA. What the listener does on its own:

* RCPT is accepted only for `config.addresses` (compared case-insensitively); anything
  else is `550 5.7.1 Relaying denied`. maild is never a relay.
* SIZE is advertised as `max_size`; a larger `SIZE=` on MAIL, or DATA growing past it,
  is refused with 552 and the intake is not called.
* `receive` raising, returning something that is not a reply line, or being cancelled
  by `Listener.abort_clients` gives `451 4.3.0 Temporary failure, try again later`;
  nothing is answered 250 unless `receive` returned it. A client that disconnects
  while `receive` runs cancels it (nobody is left to answer).
* AUTH is neither advertised nor accepted (submissions are authenticated by their
  OpenPGP signatures), nor SMTPUTF8; aiosmtpd answers 555 to unknown MAIL parameters.
* With `require_tls`, every command but EHLO, NOOP, STARTTLS and QUIT is refused with
  `530 5.7.0 Must issue a STARTTLS command first` until STARTTLS (RFC 3207 section 4).
* End of DATA is only CRLF.CRLF: aiosmtpd (>= 1.4.5) reads DATA in CRLF-terminated
  lines, so a bare-LF `\\n.\\n` or `\\r\\n.\\n` stays inside the message and cannot
  smuggle a second one. Such bare LFs reach the intake as they were sent.

Connections end with a 421 line and a close when idle for `idle_timeout` (no command,
or no DATA bytes, for that long; the time `receive` takes does not count), when the
whole session has lasted `session_limit`, or at the command after `command_limit`
commands. A limit reached while `receive` runs waits for its reply to be sent.

Stopping: `Listener.close()` stops accepting at once; connections waiting for a
command or sending DATA get `421 4.3.2 ... shutting down` and are closed; a connection
whose message is in `receive` gets the intake's reply first, then the 421.
`wait_closed()` returns once every connection has ended. If that takes too long,
`abort_clients()` (which also stops accepting) cancels the receives still running
(their clients get 451, then 421) and aborts every other connection; calling it
again aborts the rest. A daemon stops with `close()`, `wait_for(wait_closed(),
grace)`, and on timeout `abort_clients()` then `wait_closed()` again.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import re
import socket
import ssl
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["Intake", "Listener", "ListenerConfig", "Received", "start_listener"]

log = structlog.get_logger(__name__)

TEMPFAIL = "451 4.3.0 Temporary failure, try again later"
RELAY_DENIED = "550 5.7.1 Relaying denied"
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
_BEFORE_STARTTLS = frozenset({"EHLO", "NOOP", "QUIT", "STARTTLS"})  # RFC 3207 section 4
_REPLY = re.compile(r"[245][0-9]{2}(?: [\x20-\x7e]*)?")  # one line, ASCII
_HOSTNAME = re.compile(r"[A-Za-z0-9.-]+")


@dataclass(frozen=True)
class Received:
    """One message that passed the SMTP checks, for the intake to commit or refuse."""

    peer: str  # "ip:port" ("[ip]:port" for IPv6)
    mail_from: str  # "" for the null reverse-path <>
    rcpt_tos: tuple[str, ...]  # as the client spelled them, all in config.addresses
    data: bytes  # exactly as received, dot-unstuffed; lines end in CRLF (bare LF kept)
    tls: bool  # the session was under STARTTLS


class Intake(Protocol):
    async def receive(self, message: Received) -> str:
        """Commit or refuse `message`, then return the reply to the end of DATA."""
        ...


@dataclass(frozen=True)
class ListenerConfig:
    host: str
    port: int  # 0: pick a free port
    hostname: str  # FQDN in the banner and EHLO; never looked up
    addresses: tuple[str, ...]  # the only RCPT accepted (case-insensitive)
    max_size: int = 10 * 1024 * 1024
    tls_context: ssl.SSLContext | None = None  # STARTTLS offered when set
    require_tls: bool = False  # 530 before STARTTLS for everything but EHLO/NOOP/QUIT
    idle_timeout: float = 60.0
    session_limit: float = 600.0
    command_limit: int = 100  # commands per connection, all verbs together

    def __post_init__(self) -> None:
        problems = [
            (not _HOSTNAME.fullmatch(self.hostname), "hostname must be a domain name"),
            (not self.addresses, "addresses must not be empty"),
            (self.max_size < 1, "max_size must be at least 1"),
            (self.idle_timeout <= 0, "idle_timeout must be positive"),
            (self.session_limit <= 0, "session_limit must be positive"),
            (self.command_limit < 1, "command_limit must be at least 1"),
            (self.require_tls and self.tls_context is None, "require_tls needs tls_context"),
        ]
        for bad, text in problems:
            if bad:
                raise ValueError(f"listener: {text}")


class _Handler:
    """aiosmtpd hooks: who may be written to, and the hand-over to the intake."""

    def __init__(self, addresses: tuple[str, ...], intake: Intake) -> None:
        self._addresses = frozenset(a.lower() for a in addresses)
        self._intake = intake

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # this hook's duty in aiosmtpd
        return [line for line in responses if not line.startswith("250-AUTH")]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower() not in self._addresses:
            return RELAY_DENIED
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _Session)
        message = Received(
            peer=server.peer,
            mail_from="" if envelope.mail_from == "<>" else envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            tls=session.ssl is not None,
        )
        ids = {"session": server.number, "peer": server.peer}
        try:
            reply = await server.receiving(self._intake.receive(message))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the connection is gone: nobody to answer
            log.error("smtp-in-receive-cancelled", **ids)
            return TEMPFAIL
        except Exception as exc:
            log.error("smtp-in-receive-failed", error=type(exc).__qualname__, at=_at(exc), **ids)
            return TEMPFAIL
        if not isinstance(reply, str) or not _REPLY.fullmatch(reply):
            log.error("smtp-in-receive-bad-reply", **ids)
            return TEMPFAIL
        log.info("smtp-in-received", code=int(reply[:3]), size=len(message.data), **ids)
        return reply

    async def handle_exception(self, error: Exception) -> str:
        log.warning("smtp-in-error", error=type(error).__qualname__, at=_at(error))
        return TEMPFAIL


class _Sessions:
    """The live connections of one listener, and whether it is closing."""

    def __init__(self) -> None:
        self.live: set[_Session] = set()
        self.closing = False
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, session: _Session) -> None:
        self.live.add(session)
        self._empty.clear()

    def discard(self, session: _Session) -> None:
        self.live.discard(session)
        if not self.live:
            self._empty.set()

    async def ended(self) -> None:
        await self._empty.wait()


class _Session(SMTP):
    """aiosmtpd's SMTP with this listener's limits, TLS rule and shutdown.

    Relies on aiosmtpd 1.4 internals: `_smtp_methods` (wrapped to count commands and
    gate them on TLS), `_timeout_cb`/`_reset_timeout`/`_timeout_handle` (the idle timer).
    """

    def __init__(
        self,
        handler: _Handler,
        config: ListenerConfig,
        sessions: _Sessions,
        number: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # aiosmtpd keeps these in a class-wide dict that every new connection clears.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(
            handler,
            data_size_limit=config.max_size,
            hostname=config.hostname,
            ident="ESMTP maild",
            tls_context=config.tls_context,
            timeout=config.idle_timeout,
            loop=loop,
        )
        self.number = number
        self.peer = "?"
        self._config = config
        self._sessions = sessions
        self._commands = 0
        self._in_data = False
        self._receive: asyncio.Task[str] | None = None
        self._then_end: str | None = None  # a 421 to send once the DATA reply is out
        self._deadline: asyncio.TimerHandle | None = None
        self._smtp_methods = {
            name: self._guarded(name, method)
            for name, method in self._smtp_methods.items()
            if name != "AUTH"
        }

    # -- connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._deadline is not None:  # the same connection, now under TLS
            return
        self.peer = _peer(transport.get_extra_info("peername"))
        self._deadline = self.loop.call_later(self._config.session_limit, self._over_time)
        self._sessions.add(self)
        if self._sessions.closing:
            self._end(self._closing("4.3.2", "Service shutting down"))

    def connection_lost(self, error: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        try:
            super().connection_lost(error)
        finally:
            self._sessions.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._in_data and self._receive is None:
            self._reset_timeout()  # DATA bytes count as activity
        super().data_received(data)

    # -- commands -------------------------------------------------------------------
    def _guarded(
        self, name: str, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        @functools.wraps(method)  # keeps aiosmtpd's HELP text
        async def command(arg: str | None) -> None:
            self._commands += 1
            if self._commands > self._config.command_limit:
                log.warning("smtp-in-command-limit", session=self.number, peer=self.peer)
                self._end(self._closing("4.7.0", "Too many commands, closing connection"))
                return
            tls = self.session is not None and self.session.ssl is not None
            if name == "STARTTLS" and tls:
                await self.push("503 5.5.1 TLS already active")
                return
            if self._config.require_tls and not tls and name not in _BEFORE_STARTTLS:
                await self.push(MUST_STARTTLS)
                return
            self._in_data = name == "DATA"
            try:
                await method(arg)
            finally:
                self._in_data = False
            if self._then_end is not None:
                self._end(self._then_end)

        return command

    async def receiving(self, work: Coroutine[Any, Any, str]) -> str:
        """Run the intake's `receive`; the client waiting for it is not idle."""
        self._receive = asyncio.ensure_future(work)
        assert self._timeout_handle is not None
        self._timeout_handle.cancel()
        try:
            return await self._receive
        finally:
            self._receive = None
            if self.transport is not None:
                self._reset_timeout()

    # -- ending ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """The listener is closing: 421 now, or after the reply to the message in hand."""
        self._end_soon(self._closing("4.3.2", "Service shutting down"))

    def abort(self) -> None:
        """Cancel the intake's receive (451, then 421), or abort the connection."""
        if self._receive is not None and not self._receive.done():
            self._then_end = self._closing("4.3.2", "Service shutting down")
            self._receive.cancel()
        elif self.transport is not None:
            _abort(self.transport)

    def _timeout_cb(self) -> None:
        log.info("smtp-in-idle-timeout", session=self.number, peer=self.peer)
        self._end(self._closing("4.4.2", "Idle timeout, closing connection"))

    def _over_time(self) -> None:
        log.info("smtp-in-session-limit", session=self.number, peer=self.peer)
        self._end_soon(self._closing("4.4.2", "Session time limit, closing connection"))

    def _end_soon(self, reply: str) -> None:
        if self._receive is not None:
            self._then_end = reply
        else:
            self._end(reply)

    def _end(self, reply: str) -> None:
        """Send `reply` and close; a connection already closing is aborted instead
        (its peer is not reading what we write)."""
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing():
            _abort(transport)
            return
        handshaking = self._tls_protocol is not None and (
            self.session is None or self.session.ssl is None
        )
        if not handshaking:
            self._writer.write(reply.encode("ascii") + b"\r\n")
        transport.close()

    def _closing(self, status: str, text: str) -> str:
        return f"421 {status} {self.hostname} {text}"


class Listener(asyncio.AbstractServer):
    """The running listener: an asyncio server whose `close()` also ends the
    connections it accepted (see the module docstring for how)."""

    def __init__(self, server: asyncio.Server, sessions: _Sessions) -> None:
        self._server = server
        self._sessions = sessions

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self._server.sockets

    def close(self) -> None:
        self._server.close()
        self._sessions.closing = True
        for session in list(self._sessions.live):
            session.shutdown()

    def abort_clients(self) -> None:
        self._server.close()
        self._sessions.closing = True
        for session in list(self._sessions.live):
            session.abort()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()
        await self._sessions.ended()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server.is_serving()

    async def start_serving(self) -> None:
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        try:
            await self._server.serve_forever()
        finally:
            self.close()


async def start_listener(config: ListenerConfig, intake: Intake) -> Listener:
    """Listen on config.host:port on the running loop and serve until closed."""
    loop = asyncio.get_running_loop()
    # Keep message content out of the log: aiosmtpd logs DATA lines at DEBUG, and at
    # WARNING the first word of lines it took for commands (a client that does not
    # dot-stuff a "." line has its next lines read as commands).
    aiosmtpd_log = logging.getLogger("mail.log")
    if aiosmtpd_log.getEffectiveLevel() < logging.ERROR:
        aiosmtpd_log.setLevel(logging.ERROR)
    handler = _Handler(config.addresses, intake)
    sessions = _Sessions()
    numbers = itertools.count(1)
    server = await loop.create_server(
        lambda: _Session(handler, config, sessions, next(numbers), loop), config.host, config.port
    )
    log.info("smtp-in-listening", port=server.sockets[0].getsockname()[1])
    return Listener(server, sessions)


def _peer(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)


def _abort(transport: asyncio.BaseTransport) -> None:
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


def _at(error: BaseException) -> str:
    """Where an exception was raised (file:line), without its message."""
    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
