"""Key health over time (pure: time passed in): which keys maild relies on,
which of them expire soon, and which notice recipients would be blocked at
their notice time. The daemon's daily check and `maild orgs check` share it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from maild.domain.orgs import OrgList, OrgStatus

EXPIRY_WARNING_DAYS = 30
NOTICE_LEAD = timedelta(hours=24)  # the WG hears of blocked recipients this long before


class Holder(StrEnum):
    ORG = "org"
    MEMBER = "member"
    IDENTITY = "identity"


@dataclass(frozen=True)
class KeyUse:
    """One use of a key: pinned for an org's address, a WG member's, or maild's own."""

    holder: Holder
    fingerprint: str
    org: str | None = None
    address: str | None = None

    def label(self) -> str:
        if self.holder is Holder.ORG:
            return f"org {self.org} <{self.address}>"
        if self.holder is Holder.MEMBER:
            return f"WG member <{self.address}>" if self.address else "WG member"
        return "maild's identity key"


@dataclass(frozen=True)
class KeyState:
    """A key as judged at some instant: why it cannot be used then (None: it
    can), and when it stops being usable (None: never, or unknown)."""

    problem: str | None
    expires_at: datetime | None


def key_uses(
    orgs: OrgList, members: Iterable[tuple[str, str | None]], identity: str
) -> list[KeyUse]:
    """Every key maild relies on: each pinned key of each org not removed
    (ad hoc ones too), each member's key (fingerprint, address), and the
    identity key."""
    uses = [
        KeyUse(Holder.ORG, a.key, org.id, a.email)
        for org in orgs.orgs
        if org.status is not OrgStatus.REMOVED
        for a in org.addresses
    ]
    uses += [KeyUse(Holder.MEMBER, fpr, address=address) for fpr, address in members]
    return [*uses, KeyUse(Holder.IDENTITY, identity)]


def by_key(uses: Iterable[KeyUse]) -> dict[str, list[KeyUse]]:
    """Uses grouped by fingerprint, in first-seen order."""
    grouped: dict[str, list[KeyUse]] = {}
    for use in uses:
        grouped.setdefault(use.fingerprint, []).append(use)
    return grouped


def expiring_soon(state: KeyState, now: datetime, days: int = EXPIRY_WARNING_DAYS) -> bool:
    """Usable now, and stops being usable within `days` days."""
    return (
        state.problem is None
        and state.expires_at is not None
        and now < state.expires_at <= now + timedelta(days=days)
    )


def blocked_at(state: KeyState, at: datetime) -> str | None:
    """Why a notice to this key could not go out at `at` (None: it could)."""
    if state.problem is not None:
        return state.problem
    if state.expires_at is not None and state.expires_at <= at:
        return f"key expires on {utc(state.expires_at)}, before the notice time"
    return None


def notices_to_watch(notify_at: datetime | None, now: datetime) -> tuple[bool, datetime | None]:
    """For an advisory whose notices are not yet sent: (is it time to look at
    who would be blocked, when it becomes time if later). Looking starts
    NOTICE_LEAD before the notice time and ends at it."""
    if notify_at is None or now >= notify_at:
        return False, None
    start = notify_at - NOTICE_LEAD
    return (True, None) if now >= start else (False, start)


@dataclass(frozen=True)
class AtRisk:
    """A notice recipient that would be blocked at the notice time, and why."""

    use: KeyUse
    reason: str


def at_risk(
    recipients: Iterable[KeyUse], judge: Callable[[KeyUse], KeyState], notify_at: datetime
) -> list[AtRisk]:
    """The recipients (their keys judged now by `judge`) that would be
    blocked at `notify_at`, in the order given."""
    found = []
    for use in recipients:
        reason = blocked_at(judge(use), notify_at)
        if reason is not None:
            found.append(AtRisk(use, reason))
    return found


def recipients(orgs: OrgList, extra: Sequence[str]) -> Iterator[KeyUse]:
    """Every address that gets a notice for an advisory naming `extra`."""
    for org in orgs.recipients(tuple(extra)):
        for a in org.addresses:
            yield KeyUse(Holder.ORG, a.key, org.id, a.email)


def expiry_about(fingerprint: str, expires_at: datetime) -> str:
    """What an expiry alert is about: once per key and expiry date."""
    return f"key-expiry:{fingerprint}:{expires_at.astimezone(UTC).isoformat()}"


def at_risk_about(advisory_id: str, notify_at: datetime) -> str:
    """What a blocked-at-notice alert is about: once per advisory and notice time."""
    return f"notice-at-risk:{advisory_id}:{notify_at.astimezone(UTC).isoformat()}"


def utc(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
