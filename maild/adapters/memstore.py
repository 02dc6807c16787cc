"""MemoryStore: the in-memory twin of SqliteStore, for tests and dry runs.

It keeps the very rows SqliteStore would write (built by the same mapping
functions), so it refuses the same inputs with the same errors and every read
returns fresh records, equal to what was written, that callers cannot use to
change what is stored. A write checks everything before it changes anything.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from maild.adapters.store import (
    MUTABLE_MESSAGE_COLUMNS,
    PENDING_STATES,
    UNIQUE_MESSAGE_COLUMNS,
    Row,
    advisory_from_row,
    advisory_order,
    advisory_to_row,
    already_stored,
    duplicate_message,
    event_from_row,
    event_to_row,
    message_from_row,
    message_matches,
    message_to_row,
    messages_to_rows,
    meta_row,
    not_stored,
    payload_row,
    prepare_event,
    signature_row,
    stale_version,
    unknown_message,
)
from maild.domain import audit
from maild.domain.models import (
    ADVISORY_MAIL,
    AdvisoryRecord,
    Event,
    MessageKind,
    MessageRecord,
    MessageState,
    NewEvent,
    message_order,
)
from maild.service.ports import StoreError


class MemoryStore:
    """The Store, in memory: same behaviour and errors as SqliteStore."""

    def __init__(self) -> None:
        self._advisories: dict[str, Row] = {}
        self._messages: list[Row] = []
        self._events: list[Row] = []
        self._payloads: dict[str, Row] = {}
        self._signatures: dict[str, Row] = {}
        self._meta: dict[str, Row] = {}
        self._advisory_writes = 0
        self._closed = False
        self._depth = 0  # atomic blocks open

    def add_advisory(
        self, record: AdvisoryRecord, messages: Sequence[MessageRecord], event: NewEvent
    ) -> Event:
        self._check_open()
        row, message_rows = advisory_to_row(record), messages_to_rows(record.id, messages)
        new = prepare_event(event)
        if record.id in self._advisories:
            raise already_stored(record.id)
        self._check_unique(message_rows)
        event_row = self._chain(new)
        self._advisories[record.id] = row
        self._messages.extend(message_rows)
        self._events.append(event_row)
        self._advisory_writes += 1
        return event_from_row(event_row)

    def update_advisory(
        self,
        record: AdvisoryRecord,
        event: NewEvent,
        *,
        cancel_pending: str | None = None,
        cancel_kinds: Sequence[MessageKind] = ADVISORY_MAIL,
        add_messages: Sequence[MessageRecord] = (),
    ) -> Event:
        self._check_open()
        kinds = {MessageKind(k).value for k in cancel_kinds}
        row, new = advisory_to_row(record), prepare_event(event)
        message_rows = messages_to_rows(record.id, add_messages)
        stored = self._advisories.get(record.id)
        if stored is None:
            raise not_stored(record.id)
        if record.version != stored["version"] + 1:
            raise stale_version(record.id, record.version, stored["version"])
        self._check_unique(message_rows)
        event_row = self._chain(new)
        self._advisories[record.id] = row
        if cancel_pending is not None:
            self._messages = [
                {**m, "state": MessageState.CANCELLED.value, "detail": cancel_pending}
                if m["advisory_id"] == record.id
                and m["state"] in PENDING_STATES
                and m["kind"] in kinds
                else m
                for m in self._messages
            ]
        self._messages.extend(message_rows)
        self._events.append(event_row)
        self._advisory_writes += 1
        return event_from_row(event_row)

    def append_event(self, event: NewEvent) -> Event:
        self._check_open()
        event_row = self._chain(prepare_event(event))
        self._events.append(event_row)
        return event_from_row(event_row)

    def add_messages(self, advisory_id: str | None, messages: Sequence[MessageRecord]) -> None:
        self._check_open()
        message_rows = messages_to_rows(advisory_id, messages)
        if advisory_id is not None and advisory_id not in self._advisories:
            raise not_stored(advisory_id)
        self._check_unique(message_rows)
        self._messages.extend(message_rows)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Every write inside the block is kept together, or none is."""
        self._check_open()
        self._depth += 1
        saved = copy.copy(self.__dict__)
        saved = {k: copy.copy(v) for k, v in saved.items()}
        try:
            yield
        except BaseException:
            self.__dict__.update(saved)
            raise
        finally:
            self._depth -= 1

    @contextmanager
    def unsynced(self) -> Iterator[None]:
        """Nothing to flush in memory; refused inside an atomic block, as on SQLite."""
        self._check_open()
        if self._depth:
            raise StoreError("an unsynced block inside a transaction")
        yield

    def sync(self) -> None:
        """Nothing to flush in memory."""

    def find_messages(
        self,
        *,
        kinds: Sequence[MessageKind] = (),
        states: Sequence[MessageState] = (),
        envid: str | None = None,
        message_id: str | None = None,
        ack_token: str | None = None,
    ) -> list[MessageRecord]:
        self._check_open()
        rows = [
            m
            for m in self._messages
            if message_matches(m, kinds, states, envid, message_id, ack_token)
        ]
        return sorted((message_from_row(r) for r in rows), key=message_order)

    def remember_signature(
        self, sig_id: str, signer: str, signed_at: datetime, seen_at: datetime
    ) -> bool:
        self._check_open()
        row = signature_row(sig_id, signer, signed_at, seen_at)
        if sig_id in self._signatures:
            return False
        self._signatures[sig_id] = row
        return True

    def get_meta(self, name: str) -> str | None:
        self._check_open()
        row = self._meta.get(name)
        return None if row is None else str(row["value"])

    def set_meta(self, name: str, value: str) -> None:
        self._check_open()
        self._meta[name] = meta_row(name, value)

    def update_messages(self, messages: Sequence[MessageRecord]) -> None:
        self._check_open()
        rows = [message_to_row(m) for m in messages]
        index = {m["message_id"]: i for i, m in enumerate(self._messages)}
        for row in rows:
            if row["message_id"] not in index:
                raise unknown_message(row["message_id"])
        for row in rows:
            i = index[row["message_id"]]
            self._messages[i] = {
                **self._messages[i],
                **{c: row[c] for c in MUTABLE_MESSAGE_COLUMNS},
            }

    def put_payload(
        self, message_id: str, advisory_version: int, data: bytes, at: datetime
    ) -> None:
        self._check_open()
        row = payload_row(message_id, advisory_version, data, at)
        if not any(m["message_id"] == message_id for m in self._messages):
            raise unknown_message(message_id)
        self._payloads[message_id] = row

    def discard_payloads(self, message_ids: Sequence[str]) -> int:
        self._check_open()
        waiting = {
            m["message_id"]
            for m in self._messages
            if m["state"] in ("queued", "deferred", "blocked")
        }
        dropped = [i for i in dict.fromkeys(message_ids) if i in waiting and i in self._payloads]
        for message_id in dropped:
            del self._payloads[message_id]
        return len(dropped)

    def commit_receipts(
        self, outcomes: Sequence[MessageRecord], claims: Sequence[tuple[MessageRecord, int]]
    ) -> set[str]:
        self._check_open()
        index = {m["message_id"]: i for i, m in enumerate(self._messages)}
        updates: list[tuple[Row, int | None]] = [(message_to_row(m), None) for m in outcomes]
        updates += [(message_to_row(m), version) for m, version in claims]
        claimed: set[str] = set()
        for row, version in updates:
            i = index.get(row["message_id"])
            if i is None:
                continue
            current = self._messages[i]
            if version is None:
                ok = current["state"] == MessageState.SENDING.value
            else:
                advisory = self._advisories.get(current["advisory_id"])
                ok = (
                    current["state"] in (MessageState.QUEUED.value, MessageState.DEFERRED.value)
                    and advisory is not None
                    and advisory["version"] == version
                )
                if ok:
                    claimed.add(row["message_id"])
            if ok:
                self._messages[i] = {**current, **{c: row[c] for c in MUTABLE_MESSAGE_COLUMNS}}
        return claimed

    def advisories_with_messages_in(self, states: Sequence[MessageState]) -> set[str]:
        self._check_open()
        values = {MessageState(x).value for x in states}
        return {m["advisory_id"] for m in self._messages if m["state"] in values}

    def count_messages(self, states: Sequence[MessageState]) -> int:
        self._check_open()
        values = {MessageState(x).value for x in states}
        return sum(1 for m in self._messages if m["state"] in values)

    def payload(self, message_id: str) -> tuple[int, bytes] | None:
        self._check_open()
        row = self._payloads.get(message_id)
        return None if row is None else (row["advisory_version"], row["data"])

    def payloads(self, message_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        self._check_open()
        rows = {i: self._payloads[i] for i in message_ids if i in self._payloads}
        return {i: (r["advisory_version"], r["data"]) for i, r in rows.items()}

    def payload_versions(self, advisory_id: str) -> dict[str, int]:
        self._check_open()
        ids = {m["message_id"] for m in self._messages if m["advisory_id"] == advisory_id}
        return {k: v["advisory_version"] for k, v in self._payloads.items() if k in ids}

    def data_version(self) -> int:
        return self._advisory_writes  # no other process can change it

    def get_advisory(self, advisory_id: str) -> AdvisoryRecord | None:
        self._check_open()
        row = self._advisories.get(advisory_id)
        return None if row is None else advisory_from_row(row)

    def list_advisories(self) -> list[AdvisoryRecord]:
        self._check_open()
        records = [advisory_from_row(r) for r in self._advisories.values()]
        return sorted(records, key=advisory_order)

    def messages(
        self, advisory_id: str, states: Sequence[MessageState] = ()
    ) -> list[MessageRecord]:
        self._check_open()
        rows = [
            m
            for m in self._messages
            if m["advisory_id"] == advisory_id and message_matches(m, (), states, None, None, None)
        ]
        return sorted((message_from_row(r) for r in rows), key=message_order)

    def events(self, advisory_id: str | None = None) -> list[Event]:
        self._check_open()
        rows = [e for e in self._events if advisory_id is None or e["advisory_id"] == advisory_id]
        return [event_from_row(r) for r in rows]

    def verify_history(self) -> audit.ChainCheck:
        """Check the hash chain over the whole audit log."""
        return audit.verify(self.events())

    def close(self) -> None:
        self._closed = True

    def _chain(self, new: NewEvent) -> Row:
        last = event_from_row(self._events[-1]) if self._events else None
        return event_to_row(audit.chain(last, new))

    def _check_unique(self, message_rows: Sequence[Row]) -> None:
        taken = {c: {m[c] for m in self._messages} for c in UNIQUE_MESSAGE_COLUMNS}
        for message in message_rows:
            for column in UNIQUE_MESSAGE_COLUMNS:
                if message[column] in taken[column]:
                    raise duplicate_message(column, message[column])
                taken[column].add(message[column])

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")
