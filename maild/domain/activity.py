"""How each organisation answers its notices (pure): the data behind the
policy's rule that an organisation which "did not act on the notifications"
may be removed. Counted per advisory: an organisation with several addresses
has received an advisory's notice when any address accepted it, and has
acknowledged it when any address did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from maild.domain.models import MessageKind, MessagePurpose, MessageRecord, MessageState
from maild.domain.orgs import Org

DEFAULT_LAST = 3


@dataclass(frozen=True)
class Notified:
    advisory_id: str
    sent_at: datetime
    acked_at: datetime | None


@dataclass(frozen=True)
class OrgActivity:
    org: str
    name: str
    received: int  # advisories whose notice this org's smarthost accepted
    acknowledged: int
    last_ack: datetime | None
    recent: tuple[Notified, ...]  # the last N, newest first
    flagged: bool  # received at least N and acknowledged none of the last N


def activity(
    orgs: Sequence[Org], messages: Sequence[MessageRecord], last: int = DEFAULT_LAST
) -> list[OrgActivity]:
    """One row per organisation in `orgs`, from the notices in `messages`."""
    if last < 1:
        raise ValueError("last must be 1 or more")
    per_org: dict[str, dict[str, Notified]] = {}
    for m in messages:
        if (
            m.kind is not MessageKind.NOTICE
            or m.purpose is not MessagePurpose.ORIGINAL
            or m.state is not MessageState.ACCEPTED
            or m.org is None
            or m.advisory_id is None
            or m.sent_at is None
        ):
            continue
        seen = per_org.setdefault(m.org, {})
        before = seen.get(m.advisory_id)
        sent = m.sent_at if before is None else min(before.sent_at, m.sent_at)
        acks = [t for t in (m.acked_at, before.acked_at if before else None) if t is not None]
        seen[m.advisory_id] = Notified(m.advisory_id, sent, max(acks, default=None))
    rows = []
    for org in orgs:
        notified = sorted(
            per_org.get(org.id, {}).values(), key=lambda n: (n.sent_at, n.advisory_id), reverse=True
        )
        recent = tuple(notified[:last])
        acks = [n.acked_at for n in notified if n.acked_at is not None]
        rows.append(
            OrgActivity(
                org=org.id,
                name=org.name,
                received=len(notified),
                acknowledged=len(acks),
                last_ack=max(acks, default=None),
                recent=recent,
                flagged=len(recent) == last and all(n.acked_at is None for n in recent),
            )
        )
    return rows
