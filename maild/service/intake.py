"""Mail intake: what maild does with each message its listener receives.

Three kinds of mail are taken: delivery status reports (DSNs) for what maild
sent, organisations' signed acknowledgements of their notices, and WG
members' PGP/MIME mail (an advisory or a command). Everything else, and
every authentication failure, gets the same generic 550 and changes nothing
(the audit log records why, never the content; junk is only logged). A
member's action, the signature it came with (for replay refusal) and the
reply are committed in one transaction before the 250; the dispatcher
encrypts and sends the reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from maild.adapters.gpg import GpgError, Keyring, Signature
from maild.adapters.smtp_in import Received
from maild.domain import inmail
from maild.domain.businessdays import BusinessCalendar
from maild.domain.inmail import Command, CommandError, DsnReport, Kind, Verb
from maild.domain.mailtext import Text
from maild.domain.mimeparse import DEFAULT_LIMITS, Entity, Limits, MimeError, parse, walk
from maild.domain.models import (
    MessageKind,
    MessageRecord,
    MessageState,
    NewEvent,
    message_order,
)
from maild.domain.policy import PolicyError
from maild.domain.tomlsource import SourceError
from maild.service import failpoints, replies
from maild.service.embargo import Desk, UserError, bundle, find, fresh_message
from maild.service.groupcommit import GroupCommit
from maild.service.membermail import (
    Content,
    Payload,
    SignedPartError,
    payload_content,
    read_payload,
    seal_mail,
)
from maild.service.ports import Store
from maild.service.views import Clock

ACCEPTED = "250 2.0.0 Ok: accepted"
DEFERRED = "451 4.3.1 Insufficient system storage, try again later"
REFUSED = "550 5.7.1 Message refused"  # the same for every refusal: it tells nothing
SOURCE = "the advisory"  # how errors name a mailed advisory ("the advisory:3: ...")
FUTURE_SKEW = timedelta(minutes=5)  # a signature this far ahead of our clock is refused
# DSN actions, as recorded on the receipt; a final report is never replaced
# by a later "delayed".
DSN_ACTIONS = {
    "delivered": "delivered",
    "relayed": "delivered",
    "expanded": "delivered",
    "failed": "failed",
    "delayed": "delayed",
}
FINAL_DSN = ("delivered", "failed")

BAD_INPUT = (SourceError, UserError, PolicyError)  # what the CLI exits 2 for
log = structlog.get_logger("maild.intake")
T = TypeVar("T")


class Refused(Exception):
    """Mail maild will not act on; the reason goes to the audit log only."""

    def __init__(self, reason: str, signer: str | None = None, *, audit: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signer = signer
        self.audit = audit


@dataclass
class Intake:
    """Implements the listener's Intake port (maild.adapters.smtp_in)."""

    store: Store
    keyring: Keyring
    desk: Callable[[datetime], Desk]  # the embargo desk, for changes at that time
    calendar: BusinessCalendar
    members: Mapping[str, str | None]  # member fingerprint -> address in its key's user id
    mail_domain: str
    seal: Callable[[bytes], bytes]  # encrypt to the identity key (gpg: run in the pool)
    clock: Callable[[], datetime]
    pool: Executor
    approvals: int = 1
    max_signature_age: timedelta = timedelta(days=3)
    wake: Callable[[str | None], None] = lambda advisory_id: None  # tell the dispatcher
    limits: Limits = DEFAULT_LIMITS
    # The binary packets of an armored ciphertext cut down to the identity key's
    # session key alone (Keyring.only_for), else None: a mailed advisory in such a
    # ciphertext is stored that way (maild.service.membermail), not sealed again.
    # The key id gpg opened it with is passed along (see Keyring.only_for).
    sealable: Callable[[bytes, str | None], bytes | None] = lambda armored, opened: None
    # A line when maild's disk is (nearly) full, else None: gpg then fails in
    # ways that look like a bad message, so nothing is refused for good.
    full_disk: Callable[[], str | None] = lambda: None

    def __post_init__(self) -> None:
        self._commits = GroupCommit(self.store)

    @property
    def _views(self) -> Clock:
        return Clock(self.calendar)

    async def receive(self, message: Received) -> str:
        """The SMTP reply for one message, after committing what it changes."""
        try:
            return await self._receive(message)
        except Refused as refusal:
            if (full := self.full_disk()) is not None:
                log.error("mail-deferred", reason=full)
                return DEFERRED  # the sender's MTA tries again; judged then
            self._refused(refusal, message)
            return REFUSED

    async def _receive(self, message: Received) -> str:
        try:
            entity = parse(message.data, self.limits)
            kind = inmail.classify(entity)
        except MimeError as exc:
            raise Refused(f"malformed: {exc}", audit=False) from None
        if kind is Kind.DSN:
            return self._dsn(entity)
        if kind is Kind.ENCRYPTED:
            return await self._encrypted(entity)
        if kind is Kind.SIGNED:
            data, signature, part = _signed(entity)
            found = await self._gpg(self.keyring.detached_signature, data, signature)
            return self._signed_only(found, part)
        if kind is Kind.CLEARSIGNED:
            try:
                text = entity.decoded()
            except MimeError as exc:
                raise Refused(f"malformed: {exc}", audit=False) from None
            try:
                plain, found = await self._gpg(self.keyring.clearsigned, text)
            except GpgError as exc:
                raise Refused(f"unreadable signature: {exc}") from None
            return self._signed_only(found, None, plain.decode("utf-8", "replace"))
        raise Refused("neither a DSN, an acknowledgement nor PGP/MIME mail", audit=False)

    # -- authentication ---------------------------------------------------------
    async def _encrypted(self, entity: Entity) -> str:
        try:
            ciphertext = inmail.pgp_ciphertext(entity)
        except MimeError as exc:
            raise Refused(f"malformed PGP/MIME: {exc}") from None
        try:
            plaintext, found, packets = await self._gpg(self._decrypt, ciphertext)
        except GpgError as exc:
            raise Refused(f"cannot decrypt: {exc}") from None
        try:
            # Signed, then encrypted (RFC 3156 6.1) when gpg found no signature
            # over the whole: the signature covers the first part of the
            # multipart/signed, and that is all maild reads.
            payload = read_payload(plaintext, self.limits, signed_whole=found is not None)
        except SignedPartError as exc:
            raise Refused(f"malformed multipart/signed: {exc}") from None
        except MimeError as exc:
            raise Refused(f"malformed payload: {exc}") from None
        if payload.detached is not None:
            found = await self._gpg(self.keyring.detached_signature, *payload.detached)
        if found is None:
            raise Refused("no valid signature over the whole payload")
        if found.fingerprint in self.members:
            return await self._member(found, payload, packets)
        return self._ack(found, _texts(payload.entity))

    def _decrypt(self, ciphertext: bytes) -> tuple[bytes, Signature | None, bytes | None]:
        """Decrypt and verify (in the pool), and find whether the ciphertext
        itself may be kept as an advisory's sealed form."""
        plaintext, found, opened = self.keyring.decrypt_signed_by(ciphertext)
        if opened is None:  # gpg did not say which key: keep nothing, seal
            return plaintext, found, None
        return plaintext, found, self.sealable(ciphertext, opened)

    def _signed_only(self, found: Signature | None, part: Entity | None, text: str = "") -> str:
        """Signed but not encrypted: only an acknowledgement may be."""
        if found is None:
            raise Refused("no valid signature")
        if found.fingerprint in self.members:
            # Seen in clear, so anyone could encrypt it and send it again: it is
            # spent now, as an accepted member's mail would be.
            self.store.remember_signature(
                found.sig_id, found.fingerprint, found.signed_at, self.clock()
            )
            raise Refused("a member's mail must be encrypted", found.fingerprint)
        return self._ack(found, _texts(part) if part is not None else text)

    def _check_age(self, found: Signature) -> None:
        now = self.clock()
        if found.signed_at < now - self.max_signature_age:
            raise Refused(
                "replay: the signature is older than max_signature_age", found.fingerprint
            )
        if found.signed_at > now + FUTURE_SKEW:
            raise Refused("the signature is dated in the future", found.fingerprint)

    # -- members ------------------------------------------------------------------
    async def _member(self, found: Signature, payload: Payload, packets: bytes | None) -> str:
        """`packets`: the member's ciphertext cut down to the identity key's
        session key (see Keyring.only_for), or None."""
        self._check_age(found)
        actor = f"mail:{found.fingerprint}"
        sealed = b""
        try:
            read = payload_content(payload.entity)
        except MimeError as exc:
            read = None
            problem = str(exc)
        if read is not None and inmail.is_advisory(read.body):
            if packets is not None:
                # Already encrypted to the identity key: kept, for that key alone.
                sealed = seal_mail(packets, payload.form)
            else:
                # Seal in the pool now, so the transaction below never waits on gpg.
                plain = bundle(read.body, SOURCE, read.patches)
                sealed = await self._gpg(self.seal, plain)

        def write() -> str | None:
            """The member's action, the signature and the reply: one savepoint
            of a group-committed transaction (see maild.service.groupcommit)."""
            now = self.clock()
            if not self.store.remember_signature(
                found.sig_id, found.fingerprint, found.signed_at, now
            ):
                raise Refused("replay: this signature was seen before", found.fingerprint)
            if read is None:
                advisory_id, text = None, replies.failed("read your message", problem)
            else:
                advisory_id, text = self._act(read, now, actor, sealed)
            self.store.add_messages(
                advisory_id, [self._reply(found.fingerprint, advisory_id, text)]
            )
            failpoints.hit("intake-commit")
            return advisory_id

        advisory_id = await self._commits.run(write)  # answered after the COMMIT
        log.info("member-mail", signer=found.fingerprint, advisory=advisory_id)
        self.wake(advisory_id)
        return ACCEPTED

    def _act(
        self, content: Content, now: datetime, actor: str, sealed: bytes
    ) -> tuple[str | None, Text]:
        """Do what the member asked; the reply says what happened (or the
        exact error). Runs inside the intake transaction. `sealed`: an
        advisory's text and patches, sealed to the identity key."""
        if inmail.is_advisory(content.body):
            return self._submit(content, now, actor, sealed)
        try:
            command = inmail.find_command(content.subject, content.body)
        except CommandError as exc:
            return None, replies.failed("the command", str(exc))
        if command is None:
            return None, replies.failed(
                "your message",
                "it is neither an advisory (+++ front matter) nor a command; send 'help'",
            )
        try:
            return self._command(command, now, actor)
        except BAD_INPUT as exc:
            return command.advisory_id, replies.failed(_describe(command), str(exc))

    def _submit(
        self, content: Content, now: datetime, actor: str, sealed: bytes
    ) -> tuple[str | None, Text]:
        try:
            record, rows = self.desk(now).accept(
                content.body,
                SOURCE,
                content.patches,
                now,
                actor,
                needs_approval=self.approvals > 1,
                sealed=sealed,
            )
        except BAD_INPUT as exc:
            return None, replies.failed("submit the advisory", str(exc))
        log.info("submitted", advisory=record.id, by=actor)
        # The rows just stored, in the order the store reads them back.
        messages = sorted(rows, key=message_order)
        return record.id, replies.submitted(record, messages, self._views)

    def _command(self, command: Command, now: datetime, actor: str) -> tuple[str | None, Text]:
        ident = command.advisory_id
        if command.verb is Verb.HELP:
            return None, replies.helping()
        if command.verb is Verb.LIST or (command.verb is Verb.STATUS and ident is None):
            queue = [(r, self.store.messages(r.id)) for r in self.store.list_advisories()]
            return None, replies.listing(queue, self._views)
        assert ident is not None
        if command.verb is Verb.STATUS:
            record = find(self.store, ident)
            return ident, replies.status(
                record,
                self.store.messages(ident),
                self.store.events(ident),
                self.store.verify_history(),
                self._views,
            )
        desk = self.desk(now)
        if command.verb is Verb.CANCEL:
            record = desk.cancel(ident, now, actor)
        elif command.verb is Verb.RESCHEDULE:
            assert command.disclosure is not None
            record = desk.reschedule(ident, command.disclosure, now, actor)
        elif command.verb is Verb.DISCLOSE_NOW:
            record = desk.disclose_now(ident, command.reason or "", now, actor)
        else:
            record = desk.approve(ident, now, actor)
        log.info("command", verb=command.verb.value, advisory=ident, by=actor)
        return ident, replies.changed(
            command.verb.value, record, self.store.messages(ident), self._views
        )

    def _reply(self, member: str, advisory_id: str | None, text: Text) -> MessageRecord:
        """The reply row; the dispatcher encrypts it to `member` and sends it."""
        address = self.members.get(member)
        reply = fresh_message(
            advisory_id,
            MessageKind.REPLY,
            address or "(none)",
            self.mail_domain,
            fingerprint=member,
            text=f"{text.subject}\n\n{text.body}",
        )
        if address is None:
            reply = replace(
                reply,
                state=MessageState.BLOCKED,
                detail="the member's key has no email address in its user id",
            )
        return reply

    # -- acknowledgements -----------------------------------------------------------
    def _ack(self, found: Signature, text: str) -> str:
        """Record acked_at on each notice whose token the text quotes and
        whose pinned key made the signature."""
        now = self.clock()
        matched: list[MessageRecord] = []
        for token in inmail.ack_tokens(text):
            for m in self.store.find_messages(kinds=[MessageKind.NOTICE], ack_token=token):
                if m.fingerprint == found.fingerprint:
                    matched.append(m)
        if not matched:
            raise Refused("no notice token signed by its pinned key", found.fingerprint)
        fresh = [replace(m, acked_at=now) for m in matched if m.acked_at is None]
        with self.store.atomic():
            self.store.update_messages(fresh)
            for m in fresh:
                self.store.append_event(
                    NewEvent(
                        now,
                        "acknowledged",
                        f"org:{m.org or '-'}",
                        m.advisory_id,
                        {"address": m.address, "message_id": m.message_id},
                    )
                )
        log.info("acknowledged", count=len(fresh), again=len(matched) - len(fresh))
        return ACCEPTED

    # -- delivery status reports --------------------------------------------------
    def _dsn(self, entity: Entity) -> str:
        try:
            report = inmail.parse_dsn(entity)
        except MimeError as exc:
            log.info("dsn-dropped", reason=str(exc))
            return ACCEPTED  # taken and dropped: refusing would make the MTA bounce it
        message = _match(self.store, report)
        if message is None:
            log.info("dsn-unmatched", envid=report.envid)
            return ACCEPTED
        action, status, diagnostic = _verdict(report, message.address)
        dsn = DSN_ACTIONS.get(action)
        if dsn is None or (message.dsn in FINAL_DSN and dsn == "delayed") or message.dsn == dsn:
            return ACCEPTED
        updated = replace(message, dsn=dsn)
        if dsn == "failed":
            updated = replace(updated, detail=f"DSN {status}: {diagnostic or 'no diagnostic'}")
        self.store.update_messages([updated])
        log.info("dsn", message=message.message_id, dsn=dsn, status=status)
        self.wake(message.advisory_id)
        return ACCEPTED

    # -- helpers --------------------------------------------------------------------
    async def _gpg(self, call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, call, *args)

    def _refused(self, refusal: Refused, message: Received) -> None:
        log.warning("refused", reason=refusal.reason, signer=refusal.signer, peer=message.peer)
        if refusal.audit:
            data = {"reason": refusal.reason, "signer": refusal.signer, "size": len(message.data)}
            self.store.append_event(NewEvent(self.clock(), "mail-refused", "mail", None, data))


def _signed(entity: Entity) -> tuple[bytes, bytes, Entity]:
    try:
        return inmail.signed_parts(entity)
    except MimeError as exc:
        raise Refused(f"malformed multipart/signed: {exc}") from None


def _texts(entity: Entity | None) -> str:
    """All text/plain of an entity, for finding acknowledgement tokens."""
    if entity is None:
        return ""
    out = []
    try:
        for _, part in walk(entity):
            if part.content_type == "text/plain":
                out.append(part.text())
    except MimeError:
        pass
    return "\n".join(out)


def _match(store: Store, report: DsnReport) -> MessageRecord | None:
    """The message a DSN is about: by ENVID, else by Message-ID."""
    if report.envid:
        found = store.find_messages(envid=report.envid)
        if found:
            return found[0]
    if report.message_id:
        found = store.find_messages(message_id=report.message_id)
        if found:
            return found[0]
    return None


def _verdict(report: DsnReport, address: str) -> tuple[str, str, str | None]:
    """The report's action for `address` (else its first recipient)."""
    wanted = address.lower()
    chosen = report.recipients[0]
    for r in report.recipients:
        if wanted in ((r.final_recipient or "").lower(), (r.original_recipient or "").lower()):
            chosen = r
            break
    return chosen.action, chosen.status, chosen.diagnostic


def _describe(command: Command) -> str:
    return f"{command.verb.value} {command.advisory_id or ''}".strip()
