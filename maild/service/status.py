"""The one-line status `maild run` reports to systemd (`systemctl status`):
when the next message is due and how much work is queued."""

from __future__ import annotations

from datetime import UTC, datetime

from maild.domain.models import MessageState
from maild.service.ports import Store

WAITING = (MessageState.QUEUED, MessageState.DEFERRED)


def queue_size(store: Store) -> str:
    """Open advisories (scheduled or notified) and messages not yet sent."""
    advisories = sum(1 for record in store.list_advisories() if record.state.is_open)
    messages = store.count_messages(WAITING)  # a count, not every row decoded
    return f"advisories open: {advisories}, messages waiting: {messages}"


def tick_status(store: Store, next_at: datetime | None) -> str:
    """After a pass of the dispatcher: the next due time (UTC) and the queue."""
    if next_at is None:
        return f"nothing due; {queue_size(store)}"
    return f"next due {next_at.astimezone(UTC).isoformat(timespec='seconds')}; {queue_size(store)}"
