"""The ports the service layer works against. Adapters implement them; the
in-memory twins implement them too, for unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from maild.domain.audit import ChainCheck
from maild.domain.models import (
    ADVISORY_MAIL,
    AdvisoryRecord,
    Event,
    MessageKind,
    MessageRecord,
    MessageState,
    NewEvent,
)


class StoreError(Exception):
    """A store operation that could not be done; nothing was written."""


class TransactionLost(StoreError):
    """SQLite ended the enclosing transaction itself (e.g. the disk is full):
    nothing of it was written, and nothing inside it can go on."""


class StoreBroken(StoreError):
    """A flush to disk failed after a commit was made visible: what is on disk
    may now lack it (and the operating system reports such an error only
    once), so this process must not write again. maild exits, and SQLite
    recovers from what is really on disk at the next start."""


class Conflict(StoreError):
    """The id already exists, or the record changed since it was read."""


class Store(Protocol):
    """Durable state: advisories, their messages, and the append-only audit log.

    Every method that writes is one transaction; those that change an
    advisory also append exactly one audit event (message receipts are their
    own record). When a method raises, nothing at all was written.
    """

    def add_advisory(
        self, record: AdvisoryRecord, messages: Sequence[MessageRecord], event: NewEvent
    ) -> Event:
        """Store a new advisory with its messages. Conflict if the id exists."""
        ...

    def update_advisory(
        self,
        record: AdvisoryRecord,
        event: NewEvent,
        *,
        cancel_pending: str | None = None,
        cancel_kinds: Sequence[MessageKind] = ADVISORY_MAIL,
        add_messages: Sequence[MessageRecord] = (),
    ) -> Event:
        """Replace the stored advisory by `record`, whose `version` must be the
        stored version + 1 (else Conflict: someone changed it meanwhile).
        With `cancel_pending`, every message of the advisory of `cancel_kinds`
        not yet handed to the smarthost (queued, deferred, blocked) becomes
        cancelled with that text as its detail; then `add_messages` are added."""
        ...

    def append_event(self, event: NewEvent) -> Event:
        """Record an event that changes nothing else (a refusal, a check)."""
        ...

    def add_messages(self, advisory_id: str | None, messages: Sequence[MessageRecord]) -> None:
        """Add messages (pre-announcements, disclosures, alerts, replies) to an
        advisory, or (None) replies that concern no advisory."""
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """A block whose writes all commit together when it ends, or none do
        (when it raises). Writes inside it join it instead of committing; an
        atomic block inside another is undone alone when it raises (a
        savepoint), and commits with the outer one."""
        ...

    def unsynced(self) -> AbstractContextManager[None]:
        """A block whose commits are written but not yet flushed to disk: they
        are visible at once, and durable only after `sync()`. For group
        commit, where the flush runs in a thread while the event loop goes on;
        nobody may be told of (or act on) such a commit before `sync()`.
        Refused (StoreError) inside an atomic block, whose commit is not the
        caller's to flush."""
        ...

    def sync(self) -> None:
        """Flush every commit made so far to disk. Safe to call from any
        thread: it touches no connection. StoreBroken if it cannot, and from
        then on for every unsynced block, sync and data_version."""
        ...

    def find_messages(
        self,
        *,
        kinds: Sequence[MessageKind] = (),
        states: Sequence[MessageState] = (),
        envid: str | None = None,
        message_id: str | None = None,
        ack_token: str | None = None,
    ) -> list[MessageRecord]:
        """Messages of any advisory (or none) matching every filter given."""
        ...

    def remember_signature(
        self, sig_id: str, signer: str, signed_at: datetime, seen_at: datetime
    ) -> bool:
        """Record a signature seen on a member's mail; False (and nothing
        written) when it was seen before: the mail is a replay."""
        ...

    def get_meta(self, name: str) -> str | None:
        """A small fact kept between runs (the last daily key check), or None."""
        ...

    def set_meta(self, name: str, value: str) -> None:
        """Keep (or replace) the fact `name`."""
        ...

    def update_messages(self, messages: Sequence[MessageRecord]) -> None:
        """Record new receipt fields (state, attempts, SMTP reply...) for
        messages found by message_id, all in one transaction."""
        ...

    def put_payload(
        self, message_id: str, advisory_version: int, data: bytes, at: datetime
    ) -> None:
        """Store (or replace) a message's prepared bytes, made from that
        version of its advisory."""
        ...

    def discard_payloads(self, message_ids: Sequence[str]) -> int:
        """Forget the prepared bytes of those of these messages that still
        wait to be sent (queued, deferred or blocked), so they are built
        again; returns how many were forgotten."""
        ...

    def commit_receipts(
        self, outcomes: Sequence[MessageRecord], claims: Sequence[tuple[MessageRecord, int]]
    ) -> set[str]:
        """One transaction for a release's receipts. Each outcome is written
        only if its message is still `sending`; each claim (a message about to
        go on the wire, with the advisory version it was planned from) only if
        the message is still queued or deferred and the advisory unchanged.
        Returns the ids of the claims that took: only those may be sent."""
        ...

    def advisories_with_messages_in(self, states: Sequence[MessageState]) -> set[str]:
        """Ids of advisories that have a message in one of `states`."""
        ...

    def count_messages(self, states: Sequence[MessageState]) -> int:
        """How many messages (of any advisory, or none) are in one of `states`."""
        ...

    def payload(self, message_id: str) -> tuple[int, bytes] | None:
        """(advisory version, prepared bytes), or None if not prepared."""
        ...

    def payloads(self, message_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """message_id -> (advisory version, prepared bytes) of those of these
        messages that are prepared, read at once."""
        ...

    def payload_versions(self, advisory_id: str) -> dict[str, int]:
        """message_id -> advisory version its payload was prepared from."""
        ...

    def data_version(self) -> int:
        """A number that changes when another process commits a change, or
        when an advisory is added or changed through this store."""
        ...

    def get_advisory(self, advisory_id: str) -> AdvisoryRecord | None: ...

    def list_advisories(self) -> list[AdvisoryRecord]:
        """All advisories, soonest disclosure first (then by id)."""
        ...

    def messages(
        self, advisory_id: str, states: Sequence[MessageState] = ()
    ) -> list[MessageRecord]:
        """The advisory's messages (only those in `states`, when given), by
        kind, org, address."""
        ...

    def events(self, advisory_id: str | None = None) -> list[Event]:
        """Audit events in order; all of them when `advisory_id` is None."""
        ...

    def verify_history(self) -> ChainCheck:
        """Check the hash chain over the whole audit log."""
        ...

    def close(self) -> None: ...
