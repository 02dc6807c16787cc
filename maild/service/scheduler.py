"""When each message may go out, and what is due now (pure: time passed in).

The dispatcher asks `due(now, ...)` and sleeps until `next_wake(...)`; it
checks the wall clock again right before each send, so a clock stepped back
delays a send and never advances one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from maild.domain.models import (
    ADVISORY_MAIL,
    AdvisoryRecord,
    MessageKind,
    MessagePurpose,
    MessageRecord,
    MessageState,
)

SENDABLE = (MessageState.QUEUED, MessageState.DEFERRED)
IMMEDIATELY = datetime(1970, 1, 1, tzinfo=UTC)
MAX_BACKOFF = timedelta(minutes=30)

Item = tuple[AdvisoryRecord, MessageRecord]


def release_time(record: AdvisoryRecord, message: MessageRecord) -> datetime | None:
    """The instant the policy allows this message out (None: never)."""
    if message.purpose is not MessagePurpose.ORIGINAL:
        return IMMEDIATELY  # updates and withdrawals follow a change made now
    plan = record.plan
    if message.kind is MessageKind.NOTICE:
        return plan.notify_at
    if message.kind is MessageKind.PREANNOUNCEMENT:
        return plan.preannounce_at
    if message.kind is MessageKind.DISCLOSURE:
        return plan.disclose_at
    return IMMEDIATELY  # alerts and replies go as soon as they exist


def due_time(record: AdvisoryRecord, message: MessageRecord) -> datetime | None:
    """When this message should next be tried, or None if it should not be."""
    if message.state not in SENDABLE:
        return None
    withdrawal = message.purpose is MessagePurpose.WITHDRAWAL
    if message.kind in ADVISORY_MAIL and not record.state.is_open and not withdrawal:
        return None
    base = release_time(record, message)
    if base is None:
        return None
    if message.next_attempt_at is not None and message.next_attempt_at > base:
        return message.next_attempt_at
    return base


def due(now: datetime, items: Iterable[Item]) -> list[Item]:
    """The messages that may be sent at `now`, notices first."""
    ready = [(r, m) for r, m in items if (t := due_time(r, m)) is not None and t <= now]
    order = {MessageKind.NOTICE: 0, MessageKind.PREANNOUNCEMENT: 1}
    return sorted(ready, key=lambda item: order.get(item[1].kind, 2))


def next_wake(now: datetime, items: Iterable[Item]) -> datetime | None:
    """The earliest due time still ahead of `now` (None: nothing waits).
    What is already due but was not sent is left to the regular wake-up, so
    a message that cannot go yet never makes the loop spin."""
    times = [t for r, m in items if (t := due_time(r, m)) is not None and t > now]
    return min(times, default=None)


def backoff(attempts: int) -> timedelta:
    """1, 2, 4, ... minutes after the n-th failed attempt, at most 30."""
    return min(timedelta(minutes=2 ** max(attempts - 1, 0)), MAX_BACKOFF)
