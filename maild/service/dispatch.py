"""The dispatcher: keep every open advisory's messages in line with the orgs
list and keys, prepare their bytes ahead of time, release them at their
instant (never before), record each receipt, and alert the WG.

Store calls stay on the event loop's thread; gpg work goes to a small pool.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog

from maild.adapters.gpg import GpgError, KeyHealth
from maild.adapters.smtp_out import Envelope, Outcome, SendResult
from maild.domain import mailtext
from maild.domain.models import (
    EMBARGOED_MAIL,
    AdvisoryRecord,
    AdvisoryState,
    MessageKind,
    MessagePurpose,
    MessageRecord,
    MessageState,
    NewEvent,
    Preannounce,
)
from maild.domain.orgs import OrgList
from maild.service import failpoints
from maild.service.checks import NOT_IN_FOLDER, key_problem_at
from maild.service.compose import Composer, Draft
from maild.service.embargo import fresh_message, notice_rows
from maild.service.groupcommit import Batches
from maild.service.keywatch import KeyWatch, Watched
from maild.service.ports import Store
from maild.service.scheduler import SENDABLE, backoff, due, due_time, next_wake

log = structlog.get_logger("maild.dispatch")
ACTOR = "daemon"
PAYLOAD_BATCH = 64  # prepared messages read from the store at once in a release
# A sent message's outcome and the claim of the next one (with the advisory
# version it was planned from), written together.
Receipt = tuple[MessageRecord | None, tuple[MessageRecord, int] | None]
UNSENT = (MessageState.QUEUED, MessageState.SENDING)
REPLY_VERSION = 0  # replies are made once, from their own text, not from an advisory
REPLY_ATTEMPTS = 12  # about four hours of backoff, then the reply is failed


class Smarthost(Protocol):
    async def send(self, envelope: Envelope) -> SendResult: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Member:
    """A WG member alerts go to: the pinned key and the address in its user id."""

    fingerprint: str
    address: str | None


@dataclass
class Dispatcher:
    store: Store
    composer: Composer
    smarthost: Smarthost
    orgs: OrgList
    key_health: Callable[[str], KeyHealth]  # judged at the current time
    in_keys_folder: Callable[[str], bool]
    members: Sequence[Member]
    announce: Sequence[str]
    blog_dir: Path | None
    envelope_sender: str
    mail_domain: str
    clock: Callable[[], datetime]
    pool: Executor
    connections: int = 4
    stopping: Callable[[], bool] = lambda: False  # SIGTERM: start no new transaction
    keys_version: Callable[[], object] = lambda: None  # changes when the keyring changes
    _receipts: Batches[Receipt, bool] = field(init=False)
    _touched: set[str] = field(init=False, default_factory=set)
    # What the last sync with the orgs list and keys was judged on (None: never synced),
    # and the earliest key expiry it saw ahead (its verdicts hold until then).
    _synced: tuple[object, ...] | None = field(init=False, default=None)
    _sync_until: datetime | None = field(init=False, default=None)
    _keywatch: KeyWatch = field(init=False)

    def __post_init__(self) -> None:
        self._receipts = Batches(self.store, self._write_receipts, flush_in_thread=False)
        self._keywatch = KeyWatch(self.store, self._queue_alert)

    async def aclose(self) -> None:
        """Close the smarthost connections."""
        await self.smarthost.close()

    # -- the loop's one entry point ----------------------------------------------
    def recover(self) -> int:
        """After a crash: messages caught mid-transaction go again, with the
        same Message-ID and ENVID, flagged as possible duplicates."""
        stuck = [
            replace(m, state=MessageState.QUEUED, possible_duplicate=True)
            for m in self.store.find_messages(states=[MessageState.SENDING])
        ]
        if stuck:
            self.store.update_messages(stuck)
            log.warning("recovered-in-flight", count=len(stuck))
        # Alerts are derived from stored states: make any a crash cut short.
        self._touched.update(r.id for r in self.store.list_advisories())
        return len(stuck)

    def touch(self, advisory_id: str | None) -> None:
        """Mail intake changed this advisory (a DSN on a receipt, a command):
        the next tick looks at its alerts. (A change to the advisory itself is
        seen by the store's data_version, which makes the next tick sync.)"""
        if advisory_id is not None:
            self._touched.add(advisory_id)

    async def tick(self) -> datetime | None:
        """One pass: release what is prepared and due (nothing else delays
        it), prepare the rest and release what that made ready, advance the
        advisories, and return the earliest instant after the pass began that
        anything is due (None: nothing waits); one already past (a retry fell
        due while the pass was sending) makes the loop go again at once rather
        than at its regular wake-up. Each advisory is read a few times per
        pass, never the whole queue at once, so memory stays flat however long
        it is; one with nothing left to prepare is not read again to prepare
        it."""
        now = self.clock()
        for advisory_id in sorted(self._touched):
            self._touched.discard(advisory_id)
            if (touched := self.store.get_advisory(advisory_id)) is not None:
                self._alert_problems(touched, self.store.messages(advisory_id), now)
        due_now = []
        unprepared: set[str] = set()
        sync = self._sync_state(now)
        # What is due, or still to prepare, is among the messages that may be sent.
        for record, messages in self._work(now, sync=sync is not None, states=SENDABLE):
            versions = self.store.payload_versions(record.id)
            ready = self._ready(record, messages, versions)
            due_now += due(self.clock(), [(record, m) for m in ready])
            if self._unprepared(record, messages, versions, now):
                unprepared.add(record.id)
        if sync is not None:
            self._synced = sync
        unprepared |= await self._release(due_now)
        # Key health after the release: its first look after a start lists
        # every key with gpg, which must not delay what is due.
        unprepared |= self._keywatch.run(now, self._watched())
        due_now = []
        for record, messages in self._work(now, sync=False, only=unprepared, states=SENDABLE):
            ready = await self._prepare(record, messages, now)
            due_now += due(self.clock(), [(record, m) for m in ready])
        await self._release(due_now)
        for record in self.store.list_advisories():
            if record.state.is_open:
                self._advance(record, self.clock())
        await self._send_replies()
        return self._next_wake(now)

    def _sync_state(self, now: datetime) -> tuple[object, ...] | None:
        """What a sync with the orgs list and keys would be judged on now, or None
        if the last sync's verdicts all still hold and this tick may skip it: a
        sync runs on the first tick (it cancels what was removed while maild was
        down), then whenever an advisory was added or changed (by the CLI, mail
        intake or a state change: the store's data_version), the keyring or the
        orgs or announce list changed, a key the last sync judged has expired
        since, or `resync()` was called. Receipts written in a release never
        undo a sync's verdicts."""
        state = (self.store.data_version(), self.keys_version(), id(self.orgs), id(self.announce))
        if state == self._synced and (self._sync_until is None or now < self._sync_until):
            return None
        self._synced, self._sync_until = None, None
        return state

    def resync(self) -> None:
        """Make the next tick sync (after a change the store cannot see, such as
        a new way of judging keys)."""
        self._synced = None

    def _work(
        self,
        now: datetime,
        *,
        sync: bool,
        only: set[str] | None = None,
        states: Sequence[MessageState] = (),
    ) -> Iterator[tuple[AdvisoryRecord, list[MessageRecord]]]:
        """Open advisories, and closed ones that still owe mail, with their
        messages (brought in line with the lists first when `sync`; else
        only those in `states`, when given); only the advisories in `only`
        when it is given."""
        owing = self.store.advisories_with_messages_in(SENDABLE)
        for record in self.store.list_advisories():
            if only is not None and record.id not in only:
                continue
            if record.state.is_open and sync:
                yield record, self._sync(record, now)
            elif record.state.is_open or record.id in owing:
                yield record, self.store.messages(record.id, states)

    def _next_wake(self, now: datetime) -> datetime | None:
        """The earliest due time still ahead (see scheduler.next_wake). Only
        a message that may still be sent has one: after a release, that
        leaves a few rows of each advisory to read, not all of them."""
        work = self._work(now, sync=False, states=SENDABLE)
        items = ((r, m) for r, messages in work for m in messages)
        retries = [
            m.next_attempt_at
            for m in self._on_their_own()
            if m.next_attempt_at is not None and m.next_attempt_at > now
        ]
        watch = self._keywatch.next_wake(now)
        times = [t for t in (next_wake(now, items), watch, *retries) if t is not None]
        return min(times, default=None)

    def _watched(self) -> Watched:
        return Watched(
            self.orgs,
            self.members,
            self.composer.signing_key,
            self.composer.calendar,
            self.key_health,
            self.in_keys_folder,
        )

    # -- replies to members' mail, and alerts about no advisory ---------------------
    def _on_their_own(self) -> list[MessageRecord]:
        """Sendable messages made from their own stored text, not from an
        advisory: replies, and alerts about no advisory (key expiry)."""
        found = self.store.find_messages(
            kinds=[MessageKind.REPLY, MessageKind.ALERT], states=SENDABLE
        )
        return [m for m in found if m.kind is MessageKind.REPLY or m.advisory_id is None]

    async def _send_replies(self) -> None:
        """Replies and advisory-less alerts that are due: each prepared
        (signed, and encrypted to the member) and sent, one after another, as
        they are few; retried with backoff like any message."""
        for m in self._on_their_own():
            if self.stopping():
                return
            if m.next_attempt_at is not None and m.next_attempt_at > self.clock():
                continue
            await self._send_reply(m)

    async def _send_reply(self, m: MessageRecord) -> None:
        now = self.clock()
        stored = self.store.payload(m.message_id)
        if stored is None:
            problem = self._key_problem(m.fingerprint, now)
            if problem is None:
                loop = asyncio.get_running_loop()
                try:
                    data = await loop.run_in_executor(self.pool, self.composer.reply, m, now)
                except GpgError as exc:
                    problem = f"cannot prepare: {exc}"
            if problem is not None:
                self.store.update_messages([replace(m, state=MessageState.BLOCKED, detail=problem)])
                log.warning(f"{m.kind.value}-blocked", message=m.message_id)
                return
            self.store.put_payload(m.message_id, REPLY_VERSION, data, now)
        else:
            data = stored[1]
        sending = replace(m, state=MessageState.SENDING, attempts=m.attempts + 1)
        self.store.update_messages([sending])
        result = await self.smarthost.send(
            Envelope(self.envelope_sender, m.address, data, envid=m.envid)
        )
        done = self._outcome(sending, result, last_try=sending.attempts >= REPLY_ATTEMPTS)
        self.store.update_messages([done])
        log.info("sent", kind=m.kind.value, message=m.message_id, state=done.state.value)

    # -- rows ---------------------------------------------------------------------
    def _sync(self, record: AdvisoryRecord, now: datetime) -> list[MessageRecord]:
        """Messages match the orgs list, the keys and the announce list;
        returns them as stored afterwards."""
        messages = self.store.messages(record.id)
        changed = False
        if record.state is AdvisoryState.SCHEDULED and record.plan.notify_at is not None:
            changed = self._sync_notices(record, messages, now)
        if changed:
            messages = self.store.messages(record.id)
        changed = self._add_public(record, messages)
        changed = self._alert_problems(record, messages, now) or changed
        return self.store.messages(record.id) if changed else messages

    def _sync_notices(
        self, record: AdvisoryRecord, messages: list[MessageRecord], now: datetime
    ) -> bool:
        wanted = {
            (org.id, a.email, a.key): org
            for org in self.orgs.recipients(record.meta.extra_recipients)
            for a in org.addresses
        }
        have = {
            (m.org, m.address, m.fingerprint)
            for m in messages
            if m.kind is MessageKind.NOTICE and m.state is not MessageState.CANCELLED
        }
        changes = []
        for m in messages:
            if m.kind is not MessageKind.NOTICE or not m.state.is_pending:
                continue
            if (m.org, m.address, m.fingerprint) not in wanted:
                changes.append(
                    replace(
                        m,
                        state=MessageState.CANCELLED,
                        detail="no longer on the list (org removed, or address or key changed)",
                    )
                )
                continue
            problem = self._key_problem(m.fingerprint, now)
            if problem and m.state is not MessageState.BLOCKED:
                changes.append(replace(m, state=MessageState.BLOCKED, detail=problem))
            elif problem is None and m.state is MessageState.BLOCKED:
                changes.append(replace(m, state=MessageState.QUEUED, detail=None))
        if changes:
            self.store.update_messages(changes)
        missing = [org for key, org in wanted.items() if key not in have]
        if not missing:
            return bool(changes)
        rows = notice_rows(
            record,
            list(dict.fromkeys(missing)),
            lambda fpr: self._key_problem(fpr, now),
            self.mail_domain,
        )
        rows = [m for m in rows if (m.org, m.address, m.fingerprint) not in have]
        self.store.add_messages(record.id, rows)
        return True

    def _add_public(self, record: AdvisoryRecord, messages: list[MessageRecord]) -> bool:
        kinds = {m.kind for m in messages}
        rows = []
        if (
            record.plan.preannounce_at is not None
            and record.meta.preannounce is not Preannounce.NONE
            and MessageKind.PREANNOUNCEMENT not in kinds
            and record.state is AdvisoryState.SCHEDULED
        ):
            rows += [self._new(record, MessageKind.PREANNOUNCEMENT, a) for a in self.announce]
        if MessageKind.DISCLOSURE not in kinds:
            rows += [self._new(record, MessageKind.DISCLOSURE, a) for a in self.announce]
        if rows:
            self.store.add_messages(record.id, rows)
        return bool(rows)

    def _alert_problems(
        self, record: AdvisoryRecord, messages: Sequence[MessageRecord], now: datetime
    ) -> bool:
        """Alert the WG once for every blocked or failed message (derived from
        the stored states, so a crash cannot lose an alert)."""
        added = False
        for m in messages:
            bounced = m.dsn == "failed"  # accepted, then a DSN reported failure
            if m.kind in (MessageKind.ALERT, MessageKind.REPLY) or (
                m.state not in (MessageState.BLOCKED, MessageState.FAILED) and not bounced
            ):
                continue
            label = m.kind.value if m.purpose is MessagePurpose.ORIGINAL else m.purpose.value
            outcome = "failed (delivery status report)" if bounced else m.state.value
            about = f"dsn:{m.message_id}" if bounced else f"{m.state.value}:{m.message_id}"
            added = (
                self._alert(
                    record,
                    messages,
                    f"{about}:{m.detail}",
                    f"{label} to {m.org or 'the list'} <{m.address}> {outcome}",
                    [
                        f"Reason: {m.detail}",
                        f"Pinned key: {m.fingerprint or '-'}",
                        "Nothing more will be sent for it until the cause is fixed.",
                    ],
                    now,
                )
                or added
            )
        return added

    def _alert(
        self,
        record: AdvisoryRecord,
        messages: Sequence[MessageRecord],
        about: str,
        what: str,
        details: list[str],
        now: datetime,
    ) -> bool:
        """Queue one alert per member about this advisory, once per `about`."""
        text = mailtext.alert(record.meta, what, details)
        return self._queue_alert(record.id, about, text, what, {m.envid for m in messages}, now)

    def _queue_alert(
        self,
        advisory_id: str | None,
        about: str,
        text: mailtext.Text,
        what: str,
        have: set[str] | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Queue one alert per member, once per `about` (ids are derived from
        it; `have`: the envids already stored, else looked up), with its text;
        True when any was added. Without an advisory it goes on its own path."""
        now = now if now is not None else self.clock()
        envids = {
            m.fingerprint: "alert-"
            + hashlib.sha256(f"{about}|{m.fingerprint}".encode()).hexdigest()[:32]
            for m in self.members
        }
        if have is None:
            have = {e for e in envids.values() if self.store.find_messages(envid=e)}
        rows = []
        for member in self.members:
            envid = envids[member.fingerprint]
            if envid in have:
                continue
            problem = (
                "the member's key has no email address in its user id"
                if member.address is None
                else self._key_problem(member.fingerprint, now)
            )
            rows.append(
                MessageRecord(
                    advisory_id=advisory_id,
                    kind=MessageKind.ALERT,
                    address=member.address or "(none)",
                    message_id=f"<{envid}@{self.mail_domain}>",
                    envid=envid,
                    state=MessageState.QUEUED if problem is None else MessageState.BLOCKED,
                    fingerprint=member.fingerprint,
                    detail=problem or what,
                    text=f"{text.subject}\n\n{text.body}",
                )
            )
            log.warning("alert", advisory=advisory_id, what=what.split(" ")[0])
        if rows:
            self.store.add_messages(advisory_id, rows)
        return bool(rows)

    def _new(self, record: AdvisoryRecord, kind: MessageKind, address: str) -> MessageRecord:
        return fresh_message(record.id, kind, address, self.mail_domain)

    # -- preparing ------------------------------------------------------------------
    def _ready(
        self,
        record: AdvisoryRecord,
        messages: Sequence[MessageRecord],
        versions: dict[str, int] | None = None,
    ) -> list[MessageRecord]:
        """Sendable messages whose bytes are prepared from the current advisory."""
        if versions is None:
            versions = self.store.payload_versions(record.id)
        return [
            m
            for m in messages
            if m.state in SENDABLE
            and m.kind is not MessageKind.REPLY  # sent on their own path: _send_replies
            and versions.get(m.message_id) == record.version
        ]

    def _unprepared(
        self,
        record: AdvisoryRecord,
        messages: Sequence[MessageRecord],
        versions: dict[str, int],
        now: datetime,
    ) -> list[MessageRecord]:
        """Sendable messages whose bytes are not yet built from this version of
        the advisory, and may be built now."""
        return [
            m
            for m in messages
            if m.state in SENDABLE
            and m.kind is not MessageKind.REPLY
            and versions.get(m.message_id) != record.version
            # The disclosure is the advisory in clear: never at rest before its time.
            and (m.kind is not MessageKind.DISCLOSURE or now >= record.plan.disclose_at)
        ]

    async def _prepare(
        self, record: AdvisoryRecord, messages: Sequence[MessageRecord], now: datetime
    ) -> list[MessageRecord]:
        """Build the bytes of every sendable message not yet prepared from this
        version of the advisory (gpg in the pool); returns those ready to send."""
        versions = self.store.payload_versions(record.id)
        todo = self._unprepared(record, messages, versions, now)
        if self._block_unusable(record, todo, now):
            messages = self.store.messages(record.id)  # with the alerts just queued
            todo = self._unprepared(record, messages, versions, now)
        if todo:
            await self._compose_all(record, todo, versions, now)
        return self._ready(record, messages, versions)

    def _block_unusable(
        self, record: AdvisoryRecord, todo: Sequence[MessageRecord], now: datetime
    ) -> bool:
        """Block (and alert the WG about) the notices in `todo` whose key cannot be
        used now. The sync does this for an open advisory's original notices; an
        update or withdrawal to a key that expired since the notice would otherwise
        never be prepared, and wait queued for ever. True if any was blocked."""
        blocked = [
            replace(m, state=MessageState.BLOCKED, detail=problem)
            for m in todo
            if m.kind is MessageKind.NOTICE and (problem := self._key_problem(m.fingerprint, now))
        ]
        if blocked:
            self.store.update_messages(blocked)
            self._alert_problems(record, self.store.messages(record.id), now)
        return bool(blocked)

    async def _compose_all(
        self,
        record: AdvisoryRecord,
        todo: Sequence[MessageRecord],
        versions: dict[str, int],
        now: datetime,
    ) -> None:
        if self.stopping():
            return
        loop = asyncio.get_running_loop()
        draft = None
        if any(
            m.kind is MessageKind.DISCLOSURE
            or (m.kind is MessageKind.NOTICE and m.purpose is MessagePurpose.ORIGINAL)
            for m in todo
        ):
            try:
                draft = await loop.run_in_executor(self.pool, self.composer.open, record)
            except GpgError as exc:
                log.error("unseal-failed", advisory=record.id, error=str(exc))
                return
        jobs = [loop.run_in_executor(self.pool, self._compose, record, m, draft, now) for m in todo]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for m, result in zip(todo, results, strict=True):
            if isinstance(result, bytes):
                self.store.put_payload(m.message_id, record.version, result, self.clock())
                versions[m.message_id] = record.version
            else:
                log.error(
                    "prepare-failed", advisory=record.id, message=m.message_id, error=str(result)
                )

    def _compose(
        self, record: AdvisoryRecord, m: MessageRecord, draft: Draft | None, now: datetime
    ) -> bytes:
        """Runs in a worker thread."""
        calendar = self.composer.calendar
        org = self.orgs.get(m.org or "")
        org_name = org.name if org else m.org or ""
        if m.kind is MessageKind.NOTICE and m.purpose is MessagePurpose.ORIGINAL:
            assert draft is not None
            return self.composer.notice(record, m, draft, org_name, now)
        if m.kind is MessageKind.NOTICE:
            text = (
                mailtext.notice_update(record.meta, record.plan, calendar, org_name=org_name)
                if m.purpose is MessagePurpose.UPDATE
                else mailtext.withdrawal(record.meta, org_name=org_name)
            )
            return self.composer.encrypted(m, text, [], now, now)
        if m.kind is MessageKind.PREANNOUNCEMENT:
            if m.purpose is MessagePurpose.UPDATE:
                text = mailtext.revised_preannouncement(record.meta, record.plan, calendar)
                return self.composer.public(m, text, now)
            text = mailtext.preannouncement(record.meta, record.plan, calendar)
            return self.composer.public(m, text, record.plan.preannounce_at or now)
        if m.kind is MessageKind.DISCLOSURE:
            assert draft is not None
            text = mailtext.disclosure(record.meta, draft.text)
            return self.composer.public(m, text, record.plan.disclose_at)
        if m.text is not None:  # an alert keeps the text it was queued with
            return self.composer.reply(m, now)
        what = m.detail or "maild needs attention"  # queued before alerts kept their text
        text = mailtext.alert(record.meta, what, [])
        return self.composer.encrypted(m, text, [], now, now)

    # -- releasing -----------------------------------------------------------------
    async def _release(self, items: Sequence[tuple[AdvisoryRecord, MessageRecord]]) -> set[str]:
        """Send `items` over up to `connections` transactions at once: one
        sender per connection takes the next item when its last is done. Logs
        one line per advisory (the store keeps each message's receipt), and
        alerts the WG of what was blocked or failed; returns the advisories
        that got new alerts (to be prepared)."""
        if not items:
            return set()
        todo = self._with_payloads(items)
        done: list[MessageRecord] = []
        count = min(self.connections, len(items))
        senders = [asyncio.ensure_future(self._sender(todo, done)) for _ in range(count)]
        try:
            await asyncio.gather(*senders)
        finally:  # one failed (the store could not write): stop the others too
            for sender in senders:
                sender.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
        records = {r.id: r for r, _ in items}
        by_advisory: dict[str, list[MessageRecord]] = {}
        for m in done:
            if m.advisory_id is not None:  # always, for an advisory's own mail
                by_advisory.setdefault(m.advisory_id, []).append(m)
        now = self.clock()
        alerted = set()
        for advisory_id, sent in by_advisory.items():
            counts = _counts(sent, tuple(MessageKind))
            log.info("released", advisory=advisory_id, **counts)
            problems = [m for m in sent if m.state is not MessageState.ACCEPTED]
            for m in problems:
                log.warning(
                    "not-accepted",
                    advisory=advisory_id,
                    kind=m.kind.value,
                    message=m.message_id,
                    state=m.state.value,
                    code=m.smtp_code,
                )
            if any(m.state in (MessageState.BLOCKED, MessageState.FAILED) for m in problems):
                record = records[advisory_id]
                if self._alert_problems(record, self.store.messages(advisory_id), now):
                    alerted.add(advisory_id)
        return alerted

    def _with_payloads(
        self, items: Sequence[tuple[AdvisoryRecord, MessageRecord]]
    ) -> Iterator[tuple[AdvisoryRecord, MessageRecord, tuple[int, bytes] | None]]:
        """`items` with their prepared bytes (None: not prepared), read from
        the store PAYLOAD_BATCH at a time rather than one query per message
        between two sends (and never the whole of a large backlog at once)."""
        for start in range(0, len(items), PAYLOAD_BATCH):
            chunk = items[start : start + PAYLOAD_BATCH]
            found = self.store.payloads([m.message_id for _, m in chunk])
            for record, m in chunk:
                yield record, m, found.get(m.message_id)

    async def _sender(
        self,
        todo: Iterator[tuple[AdvisoryRecord, MessageRecord, tuple[int, bytes] | None]],
        done: list[MessageRecord],
    ) -> None:
        """One connection's share. A message's outcome is committed with the
        claim of the next (or on its own after the last), so this sender
        never has more than one message `sending`. Appends to `done` what it
        committed: outcomes, and messages it found blocked."""
        outcome: MessageRecord | None = None  # sent, its outcome not yet committed
        for record, m, stored in todo:
            if self.stopping():
                break  # left queued; sent when maild starts again
            now = self.clock()  # the wall clock right before the send: never early
            when = due_time(record, m)
            if when is None or when > now:
                continue
            withdrawal = m.purpose is MessagePurpose.WITHDRAWAL
            if m.kind in EMBARGOED_MAIL and now >= record.plan.disclose_at and not withdrawal:
                continue  # too late to matter; marked failed when the advisory is disclosed
            if m.kind is MessageKind.NOTICE and (problem := self._key_problem(m.fingerprint, now)):
                blocked = replace(m, state=MessageState.BLOCKED, detail=problem)
                if await self._receipt(outcome, (blocked, record.version)):
                    done.append(blocked)
                if outcome is not None:
                    done.append(outcome)
                outcome = None
                continue
            if stored is None or stored[0] != record.version:
                continue
            sending = replace(m, state=MessageState.SENDING, attempts=m.attempts + 1)
            claimed = await self._receipt(outcome, (sending, record.version))
            if outcome is not None:
                done.append(outcome)
            outcome = None
            if not claimed:
                continue  # changed meanwhile (a CLI change wins): the next tick decides
            result = await self.smarthost.send(
                Envelope(self.envelope_sender, m.address, stored[1], envid=m.envid)
            )
            failpoints.hit("after-data")
            deadline = record.plan.disclose_at if m.kind in EMBARGOED_MAIL else None
            outcome = self._outcome(sending, result, deadline=deadline)
        if outcome is not None:
            await self._receipt(outcome)
            done.append(outcome)

    async def _receipt(
        self, outcome: MessageRecord | None, claim: tuple[MessageRecord, int] | None = None
    ) -> bool:
        """Write a sent message's outcome and the claim of the next message
        (group-committed); True if the claim took."""
        claimed = await self._receipts.run((outcome, claim))
        if outcome is not None:
            failpoints.hit("release")  # its receipt is on disk
        return claimed

    def _write_receipts(self, receipts: Sequence[Receipt]) -> list[bool]:
        """A batch of receipts in one transaction (see Batches). A connection
        hands in the outcome of the message it just sent together with the
        claim of its next one, so there is at most one message `sending` per
        connection. A claim marks a message `sending` before its SMTP
        transaction, and takes only if the message is still queued or deferred
        and its advisory has not changed since it was read (a CLI change wins);
        an outcome lands only on a message that is still `sending`. Answers,
        per receipt, whether its claim took."""
        outcomes = [outcome for outcome, _ in receipts if outcome is not None]
        claims = [claim for _, claim in receipts if claim is not None]
        taken = self.store.commit_receipts(outcomes, claims)
        return [claim is not None and claim[0].message_id in taken for _, claim in receipts]

    def _outcome(
        self,
        m: MessageRecord,
        r: SendResult,
        *,
        deadline: datetime | None = None,
        last_try: bool = False,
    ) -> MessageRecord:
        """The receipt after one SMTP transaction: accepted, failed (5xx, the
        last try, or a retry that would come after `deadline`), or deferred
        with backoff."""
        now = self.clock()
        state, detail, retry_at = MessageState.ACCEPTED, None, None
        sent_at: datetime | None = now
        if r.outcome is not Outcome.ACCEPTED:
            state, detail, sent_at = MessageState.FAILED, r.response, m.sent_at
            retry = now + backoff(m.attempts)
            if r.outcome is Outcome.DEFERRED and not last_try:
                if deadline is None or retry < deadline:
                    state, retry_at = MessageState.DEFERRED, retry
                else:
                    detail = f"not delivered before disclosure: {r.response}"
        return replace(  # one copy of the record: replace() copies all its fields
            m,
            smtp_code=r.code,
            smtp_response=r.response,
            state=state,
            detail=detail,
            sent_at=sent_at,
            next_attempt_at=retry_at,
        )

    # -- advisory states --------------------------------------------------------------
    def _advance(self, record: AdvisoryRecord, now: datetime) -> bool:
        """Move an advisory to notified or disclosed once its mail went out;
        True when it moved."""
        notify_at = record.plan.notify_at
        if now < record.plan.disclose_at and (notify_at is None or now < notify_at):
            return False  # nothing can have changed yet: no need to read
        current = self.store.get_advisory(record.id)
        if current is None or not current.state.is_open:
            return False
        if now < current.plan.disclose_at and current.state is not AdvisoryState.SCHEDULED:
            return False  # notified: nothing moves before the disclosure time
        messages = self.store.messages(record.id)
        if (
            current.state is AdvisoryState.SCHEDULED
            and current.plan.notify_at is not None
            and now >= current.plan.notify_at
            and now < current.plan.disclose_at
            and not any(m.kind in EMBARGOED_MAIL and m.state in UNSENT for m in messages)
        ):
            blog = self._write_blog(current)
            self._transition(
                current,
                AdvisoryState.NOTIFIED,
                "notified",
                now,
                _counts(messages, EMBARGOED_MAIL) | ({"blog": blog} if blog else {}),
            )
            return True
        disclosures = [m for m in messages if m.kind is MessageKind.DISCLOSURE]
        if (
            now >= current.plan.disclose_at
            and disclosures
            and not any(m.state in (*UNSENT, MessageState.DEFERRED) for m in disclosures)
        ):
            late = [
                replace(m, state=MessageState.FAILED, detail="not delivered before disclosure")
                for m in messages
                if m.kind in EMBARGOED_MAIL and m.state in (*UNSENT, MessageState.DEFERRED)
            ]
            if late:
                self.store.update_messages(late)
                self._alert_problems(current, self.store.messages(record.id), now)
            self._transition(
                current,
                AdvisoryState.DISCLOSED,
                "disclosed",
                now,
                _counts(messages, (MessageKind.DISCLOSURE,)),
            )
            return True
        return False

    def _transition(
        self,
        record: AdvisoryRecord,
        state: AdvisoryState,
        kind: str,
        now: datetime,
        data: dict[str, object],
    ) -> None:
        new = replace(record, state=state, updated_at=now, version=record.version + 1)
        self.store.update_advisory(new, NewEvent(now, kind, ACTOR, record.id, data))
        log.info(kind, advisory=record.id, **{k: v for k, v in data.items() if k != "blog"})

    def _write_blog(self, record: AdvisoryRecord) -> str | None:
        if (
            self.blog_dir is None
            or record.plan.preannounce_at is None
            or record.meta.preannounce is Preannounce.NONE
        ):
            return None
        calendar = self.composer.calendar
        day = calendar.local(record.plan.disclose_at).strftime("%Y-%m-%d")
        tag = hashlib.sha256(record.id.encode()).hexdigest()[:8]
        path = self.blog_dir / f"{day}-security-release-{tag}.md"
        self.blog_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(mailtext.blog_post(record.meta, record.plan, calendar), encoding="utf-8")
        tmp.replace(path)
        return str(path)

    def _key_problem(self, fingerprint: str | None, now: datetime) -> str | None:
        if fingerprint is None:
            return "no pinned key"
        if not self.in_keys_folder(fingerprint):  # never a gpg listing for it
            return NOT_IN_FOLDER
        health = self.key_health(fingerprint)
        problem = key_problem_at(health, now)
        if problem is not None:
            return problem
        if health.expires_at is not None and (
            self._sync_until is None or health.expires_at < self._sync_until
        ):
            self._sync_until = health.expires_at  # judge the keys again from then on
        return None


def _counts(messages: Sequence[MessageRecord], kinds: tuple[MessageKind, ...]) -> dict[str, object]:
    counts: dict[str, object] = {}
    for m in messages:
        if m.kind in kinds:
            counts[m.state.value] = int(str(counts.get(m.state.value, 0))) + 1
    return counts
