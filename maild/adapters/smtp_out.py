"""The outbound smarthost client: a small pool of reused aiosmtplib connections.

Rules this module keeps:

* one RCPT per transaction; the prebuilt bytes go out with `sendmail()`, never
  `send_message()`, so nothing re-encodes the signed message (aiosmtplib only
  dot-stuffs it and turns lone CR or LF into CRLF: build messages with CRLF);
* at most `connections` connections and transactions at once; a reused connection is
  probed with RSET first, one that errs is dropped and a new one opened next time;
* `send()` classifies every SMTP and network error instead of raising: 2xx is
  ACCEPTED, 5xx to MAIL, RCPT or DATA is FAILED, everything else (4xx, timeouts,
  lost connections, and any trouble setting the session up) is DEFERRED;
* DSN parameters go out only when the server's EHLO advertises DSN;
* message content never reaches the log.

Trouble setting up the session (greeting, EHLO, STARTTLS, AUTH) is DEFERRED whatever
its code: it says nothing about the message, and a wrong password or a misconfigured
smarthost must not fail every notice for good (Postfix does the same by default:
`smtp_skip_5xx_greeting`, `smtp_sasl_auth_soft_bounce`). The code is kept in the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

import aiosmtplib
import structlog

from maild.config import SmtpConfig, StartTls

__all__ = ["Envelope", "Outcome", "SendResult", "Smarthost", "xtext"]

log = structlog.get_logger("maild.smtp_out")

_MAX_RESPONSE = 500
_QUIT_TIMEOUT = 5.0
# What aiosmtplib and the socket layer raise for a failed or lost conversation.
_NETWORK_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DEFERRED = "deferred"
    FAILED = "failed"


@dataclass(frozen=True)
class Envelope:
    sender: str  # envelope MAIL FROM
    recipient: str  # one RCPT per message (maild sends one copy per recipient)
    data: bytes  # the complete prebuilt message, CRLF line ends
    envid: str | None = None  # DSN ENVID, sent xtext-encoded (RFC 3461 section 4)


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    code: int | None  # SMTP reply code (None on timeout or connection failure)
    response: str  # the smarthost's reply text (with its queue id), one line; or why it failed
    dsn_requested: bool


def xtext(value: str) -> str:
    """RFC 3461 xtext: printable ASCII but '+' and '=' as is, every other byte as +HH."""
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}"
        for b in value.encode("utf-8")
    )


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_RESPONSE else flat[: _MAX_RESPONSE - 3] + "..."


def _by_code(code: int) -> Outcome:
    """A refusal of MAIL, RCPT or DATA: 5xx is for good, anything else may pass later."""
    return Outcome.FAILED if 500 <= code < 600 else Outcome.DEFERRED


class _SessionError(Exception):
    """The session could not be set up (greeting, EHLO, STARTTLS, AUTH): DEFERRED."""

    def __init__(self, code: int | None, response: str) -> None:
        super().__init__(response)
        self.code = code
        self.response = response


class _TlsFailed(_SessionError):
    """The STARTTLS handshake failed; opportunistic mode retries without it."""


class Smarthost:
    """The configured smarthost, with up to `config.connections` pooled connections.

    `timeout` bounds every step (connect, each command, the TLS handshake, the
    reply after DATA), not the whole send. Without `tls_context`, `required`
    STARTTLS verifies the server's certificate and name against the system's CAs,
    while `opportunistic` encrypts without verifying and falls back to plaintext
    when the handshake fails (RFC 7435).
    """

    def __init__(
        self,
        config: SmtpConfig,
        *,
        local_hostname: str,
        password: str | None = None,
        timeout: float = 60.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._config = config
        self._local_hostname = local_hostname
        self._password = password
        self._timeout = timeout
        self._tls_context = tls_context
        self._where = f"{config.host}:{config.port}"
        self._slots = asyncio.Semaphore(max(1, config.connections))
        self._idle: list[aiosmtplib.SMTP] = []  # connected, between transactions
        self._generation = 0  # bumped by close(): connections from before are not pooled

    async def __aenter__(self) -> Smarthost:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, envelope: Envelope) -> SendResult:
        """One transaction for one recipient. Never raises for SMTP or network errors."""
        async with self._slots:
            generation = self._generation
            try:
                client = await self._checkout()
            except _SessionError as exc:
                result = SendResult(Outcome.DEFERRED, exc.code, exc.response, False)
            except _NETWORK_ERRORS as exc:
                result = SendResult(Outcome.DEFERRED, None, self._describe(exc), False)
            else:
                try:
                    result, keep = await self._transact(client, envelope)
                except BaseException:  # cancelled: the conversation is in an unknown state
                    client.close()
                    raise
                await self._checkin(client, keep and generation == self._generation)
        log.debug(
            "smtp-send",
            recipient=envelope.recipient,
            envid=envelope.envid,
            outcome=str(result.outcome),
            code=result.code,
            response=result.response,
            dsn=result.dsn_requested,
        )
        return result

    async def close(self) -> None:
        """QUIT every pooled connection; those in use are QUIT when their send ends.
        A later send opens new connections."""
        idle, self._idle = self._idle, []
        self._generation += 1
        await asyncio.gather(*(self._quit(client) for client in idle))

    # -- one transaction ----------------------------------------------------------
    async def _transact(
        self, client: aiosmtplib.SMTP, envelope: Envelope
    ) -> tuple[SendResult, bool]:
        """The result, and whether the connection may be reused."""
        dsn = client.supports_extension("dsn")
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if dsn:
            mail_options.append("RET=HDRS")
            if envelope.envid:
                mail_options.append(f"ENVID={xtext(envelope.envid)}")
            rcpt_options.append("NOTIFY=SUCCESS,FAILURE,DELAY")
        if client.supports_extension("8bitmime") and not envelope.data.isascii():
            mail_options.append("BODY=8BITMIME")
        try:
            errors, reply = await client.sendmail(
                envelope.sender,
                [envelope.recipient],
                envelope.data,
                mail_options=mail_options,
                rcpt_options=rcpt_options,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return self._refused(first.code, first.message, dsn), True
        except aiosmtplib.SMTPResponseException as exc:  # MAIL or DATA refused
            return self._refused(exc.code, exc.message, dsn), True
        except ValueError as exc:  # an address aiosmtplib will not put on the wire
            return SendResult(Outcome.FAILED, None, _one_line(f"not sent: {exc}"), dsn), False
        except _NETWORK_ERRORS as exc:
            return SendResult(Outcome.DEFERRED, None, self._describe(exc), dsn), False
        if errors:  # the one recipient refused, reported instead of raised
            refusal = next(iter(errors.values()))
            return self._refused(refusal.code, refusal.message, dsn), True
        return SendResult(Outcome.ACCEPTED, 250, _one_line(reply), dsn), True

    @staticmethod
    def _refused(code: int, message: str, dsn: bool) -> SendResult:
        return SendResult(_by_code(code), code, _one_line(message), dsn)

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        return _one_line(text if self._config.host in text else f"{self._where}: {text}")

    # -- the pool -----------------------------------------------------------------
    async def _checkout(self) -> aiosmtplib.SMTP:
        """An idle connection that still answers RSET, else a new one."""
        while self._idle:
            client = self._idle.pop()
            if not client.is_connected:
                client.close()
                continue
            try:
                await client.rset()
            except _NETWORK_ERRORS:
                client.close()
                continue
            return client
        return await self._connect()

    async def _checkin(self, client: aiosmtplib.SMTP, keep: bool) -> None:
        if keep and client.is_connected:
            self._idle.append(client)
        else:
            await self._quit(client)

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            with contextlib.suppress(*_NETWORK_ERRORS):
                await client.quit(timeout=min(self._timeout, _QUIT_TIMEOUT))
        client.close()

    # -- session setup ------------------------------------------------------------
    async def _connect(self) -> aiosmtplib.SMTP:
        try:
            return await self._open(starttls=self._config.starttls is not StartTls.OFF)
        except _TlsFailed as exc:
            if self._config.starttls is not StartTls.OPPORTUNISTIC:
                raise
            log.warning("smtp-starttls-fallback", server=self._where, reason=exc.response)
            return await self._open(starttls=False)

    async def _open(self, *, starttls: bool) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self._config.host,
            port=self._config.port,
            local_hostname=self._local_hostname,
            timeout=self._timeout,
            start_tls=False,
        )
        try:
            try:
                await client.connect()
            except aiosmtplib.SMTPConnectResponseError as exc:
                raise self._session_error("greeting", exc.code, exc.message) from None
            await self._hello(client)
            if starttls:
                await self._starttls(client)
            if self._config.username:
                await self._login(client)
        except BaseException:
            client.close()
            raise
        return client

    async def _hello(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if not client.is_connected:
                raise self._session_error("EHLO", exc.code, exc.message) from None
            try:
                await client.helo()
            except aiosmtplib.SMTPHeloError as helo:
                raise self._session_error("HELO", helo.code, helo.message) from None

    async def _starttls(self, client: aiosmtplib.SMTP) -> None:
        if not client.supports_extension("starttls"):
            if self._config.starttls is StartTls.REQUIRED:
                raise self._session_error(
                    "STARTTLS", None, "required, but the server does not offer it"
                )
            return
        try:
            await client.starttls(server_hostname=self._config.host, tls_context=self._context())
        except aiosmtplib.SMTPResponseException as exc:
            raise _TlsFailed(exc.code, self._session_text("STARTTLS", exc.message)) from None
        except _NETWORK_ERRORS as exc:  # ssl.SSLError is an OSError
            text = f"handshake failed: {exc or type(exc).__name__}"
            raise _TlsFailed(None, self._session_text("STARTTLS", text)) from None
        await self._hello(client)

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.login(self._config.username, self._password or "")
        except aiosmtplib.SMTPResponseException as exc:
            raise self._session_error("AUTH", exc.code, exc.message) from None
        except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected):
            raise
        except aiosmtplib.SMTPException as exc:  # AUTH not offered, no usable mechanism
            raise self._session_error("AUTH", None, str(exc)) from None

    def _context(self) -> ssl.SSLContext:
        if self._tls_context is None:
            context = ssl.create_default_context()
            if self._config.starttls is StartTls.OPPORTUNISTIC:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls_context = context
        return self._tls_context

    def _session_text(self, stage: str, text: str) -> str:
        return _one_line(f"{self._where} {stage}: {text}")

    def _session_error(self, stage: str, code: int | None, text: str) -> _SessionError:
        return _SessionError(code, self._session_text(stage, text))
