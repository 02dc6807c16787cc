"""Records maild keeps: advisories, per-recipient messages, audit events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from maild.domain.policy import Plan, PolicyInput


class Preannounce(StrEnum):
    FULL = "full"
    MINIMAL = "minimal"
    NONE = "none"


class AdvisoryState(StrEnum):
    AWAITING_APPROVAL = "awaiting-approval"  # submitted; a second member must approve
    SCHEDULED = "scheduled"  # accepted; notices not yet released
    NOTIFIED = "notified"  # notices released; disclosure pending
    DISCLOSED = "disclosed"
    CANCELLED = "cancelled"

    @property
    def is_open(self) -> bool:
        return self in (AdvisoryState.SCHEDULED, AdvisoryState.NOTIFIED)


class MessageKind(StrEnum):
    NOTICE = "notice"
    PREANNOUNCEMENT = "preannouncement"
    DISCLOSURE = "disclosure"
    REPLY = "reply"
    ALERT = "alert"


class MessagePurpose(StrEnum):
    """Why a notice or pre-announcement is sent."""

    ORIGINAL = "original"
    UPDATE = "update"  # the disclosure moved after the notices went out
    WITHDRAWAL = "withdrawal"  # the advisory was cancelled after the notices went out


# What an embargo change may cancel: the advisory's own mail, never alerts or
# replies to the WG.
ADVISORY_MAIL = (MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT, MessageKind.DISCLOSURE)
EMBARGOED_MAIL = (MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT)


class MessageState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    ACCEPTED = "accepted"
    DEFERRED = "deferred"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"

    @property
    def is_pending(self) -> bool:
        """Not yet handed to the smarthost: may still be cancelled."""
        return self in (MessageState.QUEUED, MessageState.DEFERRED, MessageState.BLOCKED)


@dataclass(frozen=True)
class AdvisoryMeta:
    """The advisory's front matter: everything but the draft text itself."""

    id: str
    title: str
    component: str
    rules: PolicyInput
    cves: tuple[str, ...] = ()
    extra_recipients: tuple[str, ...] = ()
    preannounce: Preannounce = Preannounce.FULL


@dataclass(frozen=True)
class Advisory:
    """A parsed advisory file: front matter, Markdown draft, the file as given."""

    meta: AdvisoryMeta
    body: str
    id_assigned: bool = False  # True when the file had no `id` and one was made


@dataclass(frozen=True)
class AdvisoryRecord:
    """An accepted advisory as stored. `sealed` holds the advisory file and
    its patches encrypted to the identity key (a bundle, or a member's mail as
    sent: maild.service.membermail); nothing here is the draft text."""

    meta: AdvisoryMeta
    plan: Plan
    state: AdvisoryState
    sealed: bytes
    patch_names: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    version: int = 1

    @property
    def id(self) -> str:
        return self.meta.id

    def next_action(self) -> tuple[str, datetime | None]:
        """What happens next to this advisory, and when (None: nothing)."""
        if self.state is AdvisoryState.AWAITING_APPROVAL:
            return ("approval by a second member", None)
        if not self.state.is_open:
            return (f"none ({self.state.value})", None)
        if self.state is AdvisoryState.SCHEDULED and self.plan.notify_at is not None:
            return ("send notices", self.plan.notify_at)
        return ("disclose", self.plan.disclose_at)


@dataclass(frozen=True)
class MessageRecord:
    """One message sent or held for an advisory: the receipt of DESIGN.md 6."""

    advisory_id: str | None  # None: a reply to a member's mail about no advisory
    kind: MessageKind
    address: str
    message_id: str
    envid: str
    state: MessageState = MessageState.QUEUED
    org: str | None = None
    fingerprint: str | None = None
    detail: str | None = None
    attempts: int = 0
    smtp_code: int | None = None
    smtp_response: str | None = None
    sent_at: datetime | None = None
    dsn: str | None = None
    acked_at: datetime | None = None
    ack_token: str | None = None
    next_attempt_at: datetime | None = None  # after a deferral: not before this
    possible_duplicate: bool = False  # resent after a crash mid-transaction
    purpose: MessagePurpose = MessagePurpose.ORIGINAL
    text: str | None = None  # a reply's or alert's subject, a blank line, its body (no draft)


@dataclass(frozen=True)
class NewEvent:
    """An audit event about to be appended (the store numbers and chains it)."""

    at: datetime
    kind: str
    actor: str
    advisory_id: str | None = None
    data: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """An audit event as stored: numbered, and chained to the one before."""

    seq: int
    at: datetime
    kind: str
    actor: str
    advisory_id: str | None
    data: Mapping[str, object]
    prev_hash: str
    hash: str


_KIND_ORDER = {kind: i for i, kind in enumerate(MessageKind)}


def message_order(message: MessageRecord) -> tuple[int, bool, str, str, str]:
    """How messages are listed: by kind (in MessageKind's order: notices
    first), org (none first), address."""
    org = message.org
    return (_KIND_ORDER[message.kind], org is not None, org or "", message.address, message.envid)
