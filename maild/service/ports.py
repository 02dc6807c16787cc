"""The ports the service layer works against. Adapters implement them; the
in-memory twins implement them too, for unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from maild.domain.models import AdvisoryRecord, Event, MessageRecord, NewEvent


class StoreError(Exception):
    """A store operation that could not be done; nothing was written."""


class Conflict(StoreError):
    """The id already exists, or the record changed since it was read."""


class Store(Protocol):
    """Durable state: advisories, their messages, and the append-only audit log.

    Every method that writes is one transaction that also appends exactly one
    audit event; when it raises, nothing at all was written.
    """

    def add_advisory(
        self, record: AdvisoryRecord, messages: Sequence[MessageRecord], event: NewEvent
    ) -> Event:
        """Store a new advisory with its messages. Conflict if the id exists."""
        ...

    def update_advisory(
        self, record: AdvisoryRecord, event: NewEvent, *, cancel_pending: str | None = None
    ) -> Event:
        """Replace the stored advisory by `record`, whose `version` must be the
        stored version + 1 (else Conflict: someone changed it meanwhile).
        With `cancel_pending`, every message of the advisory not yet handed to
        the smarthost (queued, deferred, blocked) becomes cancelled with that
        text as its detail."""
        ...

    def append_event(self, event: NewEvent) -> Event:
        """Record an event that changes nothing else (a refusal, a check)."""
        ...

    def get_advisory(self, advisory_id: str) -> AdvisoryRecord | None: ...

    def list_advisories(self) -> list[AdvisoryRecord]:
        """All advisories, soonest disclosure first (then by id)."""
        ...

    def messages(self, advisory_id: str) -> list[MessageRecord]:
        """The advisory's messages, by kind, org, address."""
        ...

    def events(self, advisory_id: str | None = None) -> list[Event]:
        """Audit events in order; all of them when `advisory_id` is None."""
        ...

    def close(self) -> None: ...
