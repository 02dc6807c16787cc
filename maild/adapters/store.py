"""The durable Store: advisories, their messages and the audit log in one SQLite
file. Every write is one `BEGIN IMMEDIATE` transaction that also appends its
audit event; WAL journal, `synchronous=FULL`, files readable by the owner only.

The row <-> record mapping lives here as small functions; MemoryStore keeps the
same rows, so both stores read back exactly the same records.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from maild.adapters.files import make_private_dirs
from maild.domain import audit
from maild.domain.models import (
    ADVISORY_MAIL,
    AdvisoryMeta,
    AdvisoryRecord,
    AdvisoryState,
    Event,
    MessageKind,
    MessagePurpose,
    MessageRecord,
    MessageState,
    NewEvent,
    Preannounce,
    message_order,
)
from maild.domain.policy import Category, Plan, PolicyInput, Severity
from maild.service.ports import Conflict, StoreBroken, StoreError, TransactionLost

Row = dict[str, Any]

# Index i upgrades schema version i to i + 1. Never edit a released entry (an
# existing database keeps the old schema): append a new one instead. Enum values
# are spelled out, so adding one to an enum needs a migration for its CHECK.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE advisories (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        component TEXT NOT NULL,
        cves TEXT NOT NULL,
        extra_recipients TEXT NOT NULL,
        preannounce TEXT NOT NULL CHECK (preannounce IN ('full', 'minimal', 'none')),
        disclosure TEXT NOT NULL,
        severity TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
        exploited INTEGER NOT NULL CHECK (exploited IN (0, 1)),
        toolchain_update INTEGER NOT NULL CHECK (toolchain_update IN (0, 1)),
        category TEXT NOT NULL
            CHECK (category IN ('toolchain', 'infrastructure', 'crate', 'other')),
        notify_days INTEGER,
        reporter_approval TEXT,
        notify_not_before TEXT,
        disclose_at TEXT NOT NULL,
        notify_at TEXT,
        preannounce_at TEXT,
        business_days INTEGER,
        reason TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('scheduled', 'notified', 'disclosed', 'cancelled')),
        sealed BLOB NOT NULL,
        patch_names TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1)
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        advisory_id TEXT NOT NULL,
        kind TEXT NOT NULL
            CHECK (kind IN ('notice', 'preannouncement', 'disclosure', 'reply', 'alert')),
        address TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        envid TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN
            ('queued', 'sending', 'accepted', 'deferred', 'failed', 'blocked', 'cancelled')),
        org TEXT,
        fingerprint TEXT,
        detail TEXT,
        attempts INTEGER NOT NULL,
        smtp_code INTEGER,
        smtp_response TEXT,
        sent_at TEXT,
        dsn TEXT,
        acked_at TEXT,
        ack_token TEXT,
        FOREIGN KEY (advisory_id) REFERENCES advisories (id)
    );
    CREATE INDEX messages_advisory ON messages (advisory_id);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        advisory_id TEXT,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX events_advisory ON events (advisory_id);
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN
        SELECT RAISE(ABORT, 'events are append-only');
    END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN
        SELECT RAISE(ABORT, 'events are append-only');
    END;
    """,
    """
    ALTER TABLE messages ADD COLUMN next_attempt_at TEXT;
    ALTER TABLE messages ADD COLUMN possible_duplicate INTEGER NOT NULL DEFAULT 0
        CHECK (possible_duplicate IN (0, 1));
    CREATE TABLE payloads (
        message_id TEXT PRIMARY KEY REFERENCES messages (message_id),
        advisory_version INTEGER NOT NULL,
        data BLOB NOT NULL,
        prepared_at TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE messages ADD COLUMN purpose TEXT NOT NULL DEFAULT 'original'
        CHECK (purpose IN ('original', 'update', 'withdrawal'));
    """,
    # v4, mail intake: advisories may await a second member's approval; a reply
    # may concern no advisory and carries its text until it is prepared; the
    # signatures seen on members' mail (replay refusal). Tables are rebuilt as
    # SQLite's "other kinds of table schema changes" recipe says (foreign keys
    # off, checked before commit: see _migrate).
    """
    CREATE TABLE advisories_v4 (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        component TEXT NOT NULL,
        cves TEXT NOT NULL,
        extra_recipients TEXT NOT NULL,
        preannounce TEXT NOT NULL CHECK (preannounce IN ('full', 'minimal', 'none')),
        disclosure TEXT NOT NULL,
        severity TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
        exploited INTEGER NOT NULL CHECK (exploited IN (0, 1)),
        toolchain_update INTEGER NOT NULL CHECK (toolchain_update IN (0, 1)),
        category TEXT NOT NULL
            CHECK (category IN ('toolchain', 'infrastructure', 'crate', 'other')),
        notify_days INTEGER,
        reporter_approval TEXT,
        notify_not_before TEXT,
        disclose_at TEXT NOT NULL,
        notify_at TEXT,
        preannounce_at TEXT,
        business_days INTEGER,
        reason TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('awaiting-approval', 'scheduled', 'notified', 'disclosed', 'cancelled')),
        sealed BLOB NOT NULL,
        patch_names TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1)
    );
    INSERT INTO advisories_v4 SELECT * FROM advisories;
    DROP TABLE advisories;
    ALTER TABLE advisories_v4 RENAME TO advisories;
    CREATE TABLE messages_v4 (
        id INTEGER PRIMARY KEY,
        advisory_id TEXT,
        kind TEXT NOT NULL
            CHECK (kind IN ('notice', 'preannouncement', 'disclosure', 'reply', 'alert')),
        address TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        envid TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN
            ('queued', 'sending', 'accepted', 'deferred', 'failed', 'blocked', 'cancelled')),
        org TEXT,
        fingerprint TEXT,
        detail TEXT,
        attempts INTEGER NOT NULL,
        smtp_code INTEGER,
        smtp_response TEXT,
        sent_at TEXT,
        dsn TEXT,
        acked_at TEXT,
        ack_token TEXT,
        next_attempt_at TEXT,
        possible_duplicate INTEGER NOT NULL DEFAULT 0 CHECK (possible_duplicate IN (0, 1)),
        purpose TEXT NOT NULL DEFAULT 'original'
            CHECK (purpose IN ('original', 'update', 'withdrawal')),
        text TEXT,
        FOREIGN KEY (advisory_id) REFERENCES advisories (id)
    );
    INSERT INTO messages_v4 (
        id, advisory_id, kind, address, message_id, envid, state, org, fingerprint, detail,
        attempts, smtp_code, smtp_response, sent_at, dsn, acked_at, ack_token,
        next_attempt_at, possible_duplicate, purpose
    ) SELECT
        id, advisory_id, kind, address, message_id, envid, state, org, fingerprint, detail,
        attempts, smtp_code, smtp_response, sent_at, dsn, acked_at, ack_token,
        next_attempt_at, possible_duplicate, purpose
    FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v4 RENAME TO messages;
    CREATE INDEX messages_advisory ON messages (advisory_id);
    CREATE INDEX messages_token ON messages (ack_token);
    CREATE INDEX messages_kind_state ON messages (kind, state);
    CREATE TABLE signatures (
        sig_id TEXT PRIMARY KEY,
        signer TEXT NOT NULL,
        signed_at TEXT NOT NULL,
        seen_at TEXT NOT NULL
    );
    """,
    # v5, key health: small facts the daemon keeps between runs (the date of
    # the last daily key check), by name.
    """
    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
]

ADVISORY_COLUMNS = (
    "id", "title", "component", "cves", "extra_recipients", "preannounce",
    "disclosure", "severity", "exploited", "toolchain_update", "category", "notify_days",
    "reporter_approval", "notify_not_before", "disclose_at", "notify_at", "preannounce_at",
    "business_days", "reason", "state", "sealed", "patch_names", "created_at", "updated_at",
    "version",
)  # fmt: skip
MESSAGE_COLUMNS = tuple(f.name for f in fields(MessageRecord))
EVENT_COLUMNS = tuple(f.name for f in fields(Event))
UNIQUE_MESSAGE_COLUMNS = ("message_id", "envid")
DATETIME_MESSAGE_COLUMNS = ("sent_at", "acked_at", "next_attempt_at")
# Receipt fields a message update may change (the rest identify the message).
MUTABLE_MESSAGE_COLUMNS = (
    "state", "detail", "attempts", "smtp_code", "smtp_response", "sent_at", "dsn",
    "acked_at", "next_attempt_at", "possible_duplicate",
)  # fmt: skip
PENDING_STATES = tuple(s.value for s in MessageState if s.is_pending)


# --- datetimes and JSON ------------------------------------------------------


def dt_to_text(name: str, value: datetime) -> str:
    """ISO 8601 with the UTC offset, plus `[Zone/Name]` when the datetime is in
    an IANA zone, so it reads back in that zone (and equal, even in a DST fold)."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name}: {value!r} is not a date and time with a UTC offset")
    key = value.tzinfo.key if isinstance(value.tzinfo, ZoneInfo) else None
    return f"{value.isoformat()}[{key}]" if key else value.isoformat()


def dt_from_text(text: str) -> datetime:
    iso, _, key = text.removesuffix("]").partition("[")
    value = datetime.fromisoformat(iso)
    if not key:
        return value
    try:
        return value.astimezone(ZoneInfo(key))
    except ZoneInfoNotFoundError:  # no tz database here: the offset still holds
        return value


def _opt_dt_to_text(name: str, value: datetime | None) -> str | None:
    return None if value is None else dt_to_text(name, value)


def _opt_dt_from_text(text: str | None) -> datetime | None:
    return None if text is None else dt_from_text(text)


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@contextmanager
def _refusing(what: str) -> Iterator[None]:
    """Turn a value that cannot be stored (or a row that cannot be read) into a
    StoreError that names it."""
    try:
        yield
    except (TypeError, ValueError, KeyError) as exc:
        raise StoreError(f"{what}: {exc}") from exc


# --- rows <-> records (shared with MemoryStore) ------------------------------


def advisory_to_row(record: AdvisoryRecord) -> Row:
    meta, rules, plan = record.meta, record.meta.rules, record.plan
    with _refusing(f"advisory {meta.id!r} cannot be stored"):
        return {
            "id": meta.id,
            "title": meta.title,
            "component": meta.component,
            "cves": _dump(list(meta.cves)),
            "extra_recipients": _dump(list(meta.extra_recipients)),
            "preannounce": Preannounce(meta.preannounce).value,
            "disclosure": dt_to_text("disclosure", rules.disclosure),
            "severity": Severity(rules.severity).value,
            "exploited": int(bool(rules.exploited)),
            "toolchain_update": int(bool(rules.toolchain_update)),
            "category": Category(rules.category).value,
            "notify_days": rules.notify_days,
            "reporter_approval": rules.reporter_approval,
            "notify_not_before": _opt_dt_to_text("notify_not_before", rules.notify_not_before),
            "disclose_at": dt_to_text("disclose_at", plan.disclose_at),
            "notify_at": _opt_dt_to_text("notify_at", plan.notify_at),
            "preannounce_at": _opt_dt_to_text("preannounce_at", plan.preannounce_at),
            "business_days": plan.business_days,
            "reason": plan.reason,
            "state": AdvisoryState(record.state).value,
            "sealed": bytes(record.sealed),
            "patch_names": _dump(list(record.patch_names)),
            "created_at": dt_to_text("created_at", record.created_at),
            "updated_at": dt_to_text("updated_at", record.updated_at),
            "version": record.version,
        }


def advisory_from_row(row: Mapping[str, Any]) -> AdvisoryRecord:
    with _refusing(f"stored advisory {row.get('id')!r} is unreadable"):
        rules = PolicyInput(
            disclosure=dt_from_text(row["disclosure"]),
            severity=Severity(row["severity"]),
            exploited=bool(row["exploited"]),
            toolchain_update=bool(row["toolchain_update"]),
            category=Category(row["category"]),
            notify_days=row["notify_days"],
            reporter_approval=row["reporter_approval"],
            notify_not_before=_opt_dt_from_text(row["notify_not_before"]),
        )
        meta = AdvisoryMeta(
            id=row["id"],
            title=row["title"],
            component=row["component"],
            rules=rules,
            cves=tuple(json.loads(row["cves"])),
            extra_recipients=tuple(json.loads(row["extra_recipients"])),
            preannounce=Preannounce(row["preannounce"]),
        )
        plan = Plan(
            disclose_at=dt_from_text(row["disclose_at"]),
            notify_at=_opt_dt_from_text(row["notify_at"]),
            preannounce_at=_opt_dt_from_text(row["preannounce_at"]),
            business_days=row["business_days"],
            reason=row["reason"],
        )
        return AdvisoryRecord(
            meta=meta,
            plan=plan,
            state=AdvisoryState(row["state"]),
            sealed=bytes(row["sealed"]),
            patch_names=tuple(json.loads(row["patch_names"])),
            created_at=dt_from_text(row["created_at"]),
            updated_at=dt_from_text(row["updated_at"]),
            version=row["version"],
        )


def messages_to_rows(advisory_id: str | None, messages: Sequence[MessageRecord]) -> list[Row]:
    """The rows of a new advisory's messages; each must belong to that advisory."""
    values = messages_to_values(advisory_id, messages)
    return [dict(zip(MESSAGE_COLUMNS, v, strict=True)) for v in values]


def messages_to_values(
    advisory_id: str | None, messages: Sequence[MessageRecord]
) -> list[tuple[object, ...]]:
    """As messages_to_rows, each row as its values in MESSAGE_COLUMNS order."""
    for m in messages:
        if m.advisory_id != advisory_id:
            raise StoreError(
                f"message {m.message_id!r} belongs to advisory {m.advisory_id!r}, "
                f"not {advisory_id!r}; nothing was written"
            )
    return [message_values(m) for m in messages]


def message_to_row(m: MessageRecord) -> Row:
    return dict(zip(MESSAGE_COLUMNS, message_values(m), strict=True))


# Stored values of the enums, looked up by member or by value (StrEnum: equal).
_KIND_VALUES = {k.value: k.value for k in MessageKind}
_STATE_VALUES = {s.value: s.value for s in MessageState}
_PURPOSE_VALUES = {p.value: p.value for p in MessagePurpose}
_KIND, _STATE, _PURPOSE, _DUPLICATE, _MESSAGE_ID = (
    MESSAGE_COLUMNS.index(name)
    for name in ("kind", "state", "purpose", "possible_duplicate", "message_id")
)
_DATETIMES = tuple((MESSAGE_COLUMNS.index(name), name) for name in DATETIME_MESSAGE_COLUMNS)
_ENUM_VALUES = {"kind": _KIND_VALUES, "state": _STATE_VALUES, "purpose": _PURPOSE_VALUES}


def _as_stored(columns: Sequence[str]) -> Callable[[MessageRecord], tuple[object, ...]]:
    """A function giving a message's values for `columns` (in that order), as
    stored. (Stores write many at a time: table lookups, not Enum calls.)"""
    fields = operator.attrgetter(*columns)
    enums = [
        (columns.index(name), table) for name, table in _ENUM_VALUES.items() if name in columns
    ]
    flags = [columns.index(name) for name in ("possible_duplicate",) if name in columns]
    datetimes = [(n, name) for n, name in enumerate(columns) if name in DATETIME_MESSAGE_COLUMNS]

    def values_of(m: MessageRecord) -> tuple[object, ...]:
        with _refusing(f"message {m.message_id!r} cannot be stored"):
            values = list(fields(m))
            for index, table in enums:
                values[index] = table[values[index]]
            for index in flags:
                values[index] = int(bool(values[index]))
            for index, name in datetimes:
                if values[index] is not None:
                    values[index] = dt_to_text(name, values[index])
        return tuple(values)

    return values_of


# A message as stored: its values in MESSAGE_COLUMNS order.
message_values = _as_stored(MESSAGE_COLUMNS)
# A message's receipt fields (MUTABLE_MESSAGE_COLUMNS, in order), then its
# message_id: the parameters of _OUTCOME_SQL (two per message sent: only what
# changes is read).
_receipt_values = _as_stored((*MUTABLE_MESSAGE_COLUMNS, "message_id"))


_SET_RECEIPT = ", ".join(f"{c} = ?" for c in MUTABLE_MESSAGE_COLUMNS)
# An outcome lands only on a message still `sending`; a claim only on one
# still queued or deferred whose advisory is still at the version planned from.
_OUTCOME_SQL = f"UPDATE messages SET {_SET_RECEIPT} WHERE message_id = ? AND state = 'sending'"
_CLAIM_SQL = (
    f"UPDATE messages SET {_SET_RECEIPT} WHERE message_id = ? "
    "AND state IN ('queued', 'deferred') "
    "AND (SELECT version FROM advisories WHERE id = messages.advisory_id) = ?"
)


def message_from_row(row: Mapping[str, Any]) -> MessageRecord:
    return message_from_values([row[name] for name in MESSAGE_COLUMNS])


_KINDS = {k.value: k for k in MessageKind}
_STATES = {s.value: s for s in MessageState}
_PURPOSES = {p.value: p for p in MessagePurpose}


def message_from_values(stored: Sequence[Any]) -> MessageRecord:
    """A message from its stored values, in MESSAGE_COLUMNS order. (The
    queue is read often, a whole advisory at a time: table lookups here,
    not Enum calls, and no dict per row.)"""
    values = list(stored)
    try:
        values[_KIND] = _KINDS[values[_KIND]]
        values[_STATE] = _STATES[values[_STATE]]
        values[_PURPOSE] = _PURPOSES[values[_PURPOSE]]
        values[_DUPLICATE] = bool(values[_DUPLICATE])
        for index, _ in _DATETIMES:
            if values[index] is not None:
                values[index] = dt_from_text(values[index])
        return MessageRecord(*values)
    except (KeyError, TypeError, ValueError) as exc:
        message_id = values[_MESSAGE_ID]
        problem = (
            f"{exc.args[0]!r} is not a known kind, state or purpose"
            if isinstance(exc, KeyError)
            else str(exc)
        )
        raise StoreError(f"stored message {message_id!r} is unreadable: {problem}") from exc


def prepare_event(event: NewEvent) -> NewEvent:
    """`event` with its data as it will read back (JSON), checked storable."""
    with _refusing(f"event {event.kind!r} cannot be stored"):
        dt_to_text("at", event.at)
        return replace(event, data=json.loads(_dump(dict(event.data))))


def event_to_row(event: Event) -> Row:
    row = {name: getattr(event, name) for name in EVENT_COLUMNS}
    row["at"] = dt_to_text("at", event.at)
    row["data"] = _dump(dict(event.data))
    return row


def event_from_row(row: Mapping[str, Any]) -> Event:
    with _refusing(f"stored event {row.get('seq')!r} is unreadable"):
        values = {name: row[name] for name in EVENT_COLUMNS}
        values["at"] = dt_from_text(row["at"])
        values["data"] = json.loads(row["data"])
        return Event(**values)


def advisory_order(record: AdvisoryRecord) -> tuple[datetime, str]:
    """Soonest disclosure first (compared as instants), then by id."""
    return (record.plan.disclose_at.astimezone(UTC), record.id)


def already_stored(advisory_id: str) -> Conflict:
    return Conflict(f"advisory {advisory_id!r} already exists; nothing was written")


def not_stored(advisory_id: str) -> StoreError:
    return StoreError(f"advisory {advisory_id!r} is not stored; nothing was written")


def stale_version(advisory_id: str, given: int, stored: int) -> Conflict:
    return Conflict(
        f"advisory {advisory_id!r} changed since it was read (stored version {stored}, "
        f"update is version {given}, expected {stored + 1}); nothing was written"
    )


def unknown_message(message_id: object) -> StoreError:
    return StoreError(f"no message {message_id!r} is stored; nothing was written")


def payload_row(message_id: str, advisory_version: int, data: bytes, at: datetime) -> Row:
    with _refusing(f"payload of {message_id!r} cannot be stored"):
        return {
            "message_id": message_id,
            "advisory_version": int(advisory_version),
            "data": bytes(data),
            "prepared_at": dt_to_text("prepared_at", at),
        }


def signature_row(sig_id: str, signer: str, signed_at: datetime, seen_at: datetime) -> Row:
    if not sig_id:
        raise StoreError("a signature id is needed; nothing was written")
    return {
        "sig_id": sig_id,
        "signer": signer,
        "signed_at": dt_to_text("signed_at", signed_at),
        "seen_at": dt_to_text("seen_at", seen_at),
    }


def meta_row(name: str, value: str) -> Row:
    if not isinstance(name, str) or not name or not isinstance(value, str):
        raise StoreError(f"meta {name!r}: needs a non-empty name and a text value")
    return {"name": name, "value": value}


def message_filter(
    kinds: Sequence[MessageKind],
    states: Sequence[MessageState],
    envid: str | None,
    message_id: str | None,
    ack_token: str | None,
) -> tuple[str, list[object]]:
    """SQL WHERE clause (and parameters) for Store.find_messages."""
    clauses, params = ["1"], list[object]()
    for column, values in (
        ("kind", [MessageKind(k).value for k in kinds]),
        ("state", [MessageState(s).value for s in states]),
    ):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += values
    for column, value in (("envid", envid), ("message_id", message_id), ("ack_token", ack_token)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(clauses), params


def message_matches(
    row: Row,
    kinds: Sequence[MessageKind],
    states: Sequence[MessageState],
    envid: str | None,
    message_id: str | None,
    ack_token: str | None,
) -> bool:
    """The in-memory twin of message_filter."""
    return (
        (not kinds or row["kind"] in {MessageKind(k).value for k in kinds})
        and (not states or row["state"] in {MessageState(s).value for s in states})
        and (envid is None or row["envid"] == envid)
        and (message_id is None or row["message_id"] == message_id)
        and (ack_token is None or row["ack_token"] == ack_token)
    )


def duplicate_message(column: str, value: object) -> StoreError:
    return StoreError(f"{column} {value!r} is already used by a message; nothing was written")


# --- the SQLite store --------------------------------------------------------


class SqliteStore:
    """The Store in one SQLite file. Use it on the thread that opened it."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._advisory_writes = 0  # add_advisory and update_advisory on this connection
        conn.row_factory = _dict_row
        self._wal = _WalFile(_wal_path(conn, path))
        self._broken: str | None = None  # set when a flush to disk failed
        # PRAGMA synchronous as last set (FULL by _configure), and whether an
        # unsynced() block is open: see _write.
        self._synchronous = "FULL"
        self._in_unsynced = False

    @classmethod
    def open(cls, path: Path) -> SqliteStore:
        """Open (creating if needed) the state database at `path`, migrated to
        the current schema. New folders get mode 0700, a new file 0600."""
        path = Path(path)
        try:
            make_private_dirs(path.parent)
            _create_private(path)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the state database: {exc}") from exc
        try:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the state database: {exc}") from exc
        try:
            _configure(conn, path)
            _migrate(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{path}: not a usable maild state database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def add_advisory(
        self, record: AdvisoryRecord, messages: Sequence[MessageRecord], event: NewEvent
    ) -> Event:
        row, message_rows = advisory_to_row(record), messages_to_values(record.id, messages)
        new = prepare_event(event)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM advisories WHERE id = ?", (record.id,)).fetchone():
                raise already_stored(record.id)
            conn.execute(_insert("advisories", ADVISORY_COLUMNS), row)
            self._insert_messages(conn, message_rows)
            self._advisory_writes += 1
            return _append(conn, new)

    def update_advisory(
        self,
        record: AdvisoryRecord,
        event: NewEvent,
        *,
        cancel_pending: str | None = None,
        cancel_kinds: Sequence[MessageKind] = ADVISORY_MAIL,
        add_messages: Sequence[MessageRecord] = (),
    ) -> Event:
        row, new = advisory_to_row(record), prepare_event(event)
        kinds = tuple(MessageKind(k).value for k in cancel_kinds)
        message_rows = messages_to_values(record.id, add_messages)
        with self._write() as conn:
            sql = "SELECT version FROM advisories WHERE id = ?"
            stored = conn.execute(sql, (record.id,)).fetchone()
            if stored is None:
                raise not_stored(record.id)
            if record.version != stored["version"] + 1:
                raise stale_version(record.id, record.version, stored["version"])
            assignments = ", ".join(f"{c} = :{c}" for c in ADVISORY_COLUMNS)
            conn.execute(f"UPDATE advisories SET {assignments} WHERE id = :id", row)
            if cancel_pending is not None:
                marks = ", ".join("?" for _ in PENDING_STATES)
                kind_marks = ", ".join("?" for _ in kinds)
                conn.execute(
                    f"UPDATE messages SET state = ?, detail = ? WHERE advisory_id = ? "
                    f"AND state IN ({marks}) AND kind IN ({kind_marks})",
                    (
                        MessageState.CANCELLED.value,
                        cancel_pending,
                        record.id,
                        *PENDING_STATES,
                        *kinds,
                    ),
                )
            self._insert_messages(conn, message_rows)
            self._advisory_writes += 1
            return _append(conn, new)

    def append_event(self, event: NewEvent) -> Event:
        new = prepare_event(event)
        with self._write() as conn:
            return _append(conn, new)

    def add_messages(self, advisory_id: str | None, messages: Sequence[MessageRecord]) -> None:
        message_rows = messages_to_values(advisory_id, messages)
        with self._write() as conn:
            sql = "SELECT 1 FROM advisories WHERE id = ?"
            if advisory_id is not None and not conn.execute(sql, (advisory_id,)).fetchone():
                raise not_stored(advisory_id)
            self._insert_messages(conn, message_rows)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Every write inside the block commits together, or none does; inside
        another atomic block, a savepoint (see the Store port)."""
        if self._in_transaction():
            with _savepoint(self._conn, self.path):
                yield
        else:
            with self._write():
                yield

    def _in_transaction(self) -> bool:
        try:
            return self._conn.in_transaction
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}; nothing was written") from exc

    @contextmanager
    def unsynced(self) -> Iterator[None]:
        """Commits inside are written to the WAL without its fsync
        (`synchronous=NORMAL` in WAL mode); `sync()` makes them durable. A
        commit there is then as durable as with `synchronous=FULL`, which is
        exactly that fsync after each commit. Inside a transaction this
        changes nothing: the outer block's commit decides.

        The connection is left at NORMAL after the block: the next write
        outside such a block sets FULL again before it begins (`_write`), so
        back-to-back group commits (a release's receipts) do not pay two
        PRAGMAs each."""
        if self._broken is not None:
            raise StoreBroken(self._broken)
        if self._conn.in_transaction:
            # Its commit is the outer block's, which the caller cannot flush.
            raise StoreError(f"{self.path}: an unsynced block inside a transaction")
        self._set_synchronous("NORMAL")
        outer, self._in_unsynced = self._in_unsynced, True
        try:
            yield
        finally:
            self._in_unsynced = outer  # a block inside another leaves it open

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (`_transaction`), committed with SQLite's own
        fsync (FULL) unless it is inside an unsynced() block, whose caller
        flushes. Joined to the open transaction, if any (whose start decided)."""
        if not self._in_unsynced and not self._in_transaction():
            self._set_synchronous("FULL")
        with _transaction(self._conn, self.path) as conn:
            yield conn

    def _set_synchronous(self, mode: str) -> None:
        if self._synchronous != mode:
            self._pragma(f"PRAGMA synchronous = {mode}")
            self._synchronous = mode

    def sync(self) -> None:
        if self._broken is not None:
            raise StoreBroken(self._broken)
        try:
            self._wal.sync()
        except OSError as exc:
            # The commit is visible already, and the error is reported once: a
            # later flush could say all is well with this one lost. Stop here.
            self._broken = (
                f"{self.path}: cannot flush the state database to disk ({exc}); "
                "maild must restart so SQLite recovers what is on disk"
            )
            raise StoreBroken(self._broken) from exc

    def _pragma(self, sql: str) -> None:
        try:
            self._conn.execute(sql)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}; nothing was written") from exc

    def find_messages(
        self,
        *,
        kinds: Sequence[MessageKind] = (),
        states: Sequence[MessageState] = (),
        envid: str | None = None,
        message_id: str | None = None,
        ack_token: str | None = None,
    ) -> list[MessageRecord]:
        where, params = message_filter(kinds, states, envid, message_id, ack_token)
        return self._messages(where, params)

    def remember_signature(
        self, sig_id: str, signer: str, signed_at: datetime, seen_at: datetime
    ) -> bool:
        row = signature_row(sig_id, signer, signed_at, seen_at)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM signatures WHERE sig_id = ?", (sig_id,)).fetchone():
                return False
            conn.execute(_insert("signatures", tuple(row)), row)
            return True

    def get_meta(self, name: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, name: str, value: str) -> None:
        row = meta_row(name, value)
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (:name, :value)", row)

    def update_messages(self, messages: Sequence[MessageRecord]) -> None:
        rows = [message_to_row(m) for m in messages]
        assignments = ", ".join(f"{c} = :{c}" for c in MUTABLE_MESSAGE_COLUMNS)
        with self._write() as conn:
            for row in rows:
                sql = f"UPDATE messages SET {assignments} WHERE message_id = :message_id"
                if conn.execute(sql, row).rowcount != 1:
                    raise unknown_message(row["message_id"])

    def put_payload(
        self, message_id: str, advisory_version: int, data: bytes, at: datetime
    ) -> None:
        row = payload_row(message_id, advisory_version, data, at)
        with self._write() as conn:
            sql = "SELECT 1 FROM messages WHERE message_id = ?"
            if not conn.execute(sql, (message_id,)).fetchone():
                raise unknown_message(message_id)
            conn.execute(
                "INSERT OR REPLACE INTO payloads (message_id, advisory_version, data, prepared_at)"
                " VALUES (:message_id, :advisory_version, :data, :prepared_at)",
                row,
            )

    def discard_payloads(self, message_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(message_ids))
        dropped = 0
        with self._write() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                dropped += conn.execute(
                    f"DELETE FROM payloads WHERE message_id IN ({marks}) AND message_id IN "
                    "(SELECT message_id FROM messages WHERE state IN ('queued', 'deferred', "
                    "'blocked'))",
                    chunk,
                ).rowcount
        return dropped

    def commit_receipts(
        self, outcomes: Sequence[MessageRecord], claims: Sequence[tuple[MessageRecord, int]]
    ) -> set[str]:
        outcome_rows = [_receipt_values(m) for m in outcomes]
        claim_rows = [(*_receipt_values(m), version) for m, version in claims]
        claimed: set[str] = set()
        with self._write() as conn:
            conn.executemany(_OUTCOME_SQL, outcome_rows)
            for row in claim_rows:
                if conn.execute(_CLAIM_SQL, row).rowcount == 1:
                    claimed.add(str(row[-2]))
        return claimed

    def advisories_with_messages_in(self, states: Sequence[MessageState]) -> set[str]:
        values = [MessageState(x).value for x in states]
        marks = ", ".join("?" for _ in values)
        sql = f"SELECT DISTINCT advisory_id FROM messages WHERE state IN ({marks})"
        return {r["advisory_id"] for r in self._query(sql, values)}

    def count_messages(self, states: Sequence[MessageState]) -> int:
        values = [MessageState(x).value for x in states]
        marks = ", ".join("?" for _ in values)
        sql = f"SELECT COUNT(*) AS n FROM messages WHERE state IN ({marks})"
        return int(self._query(sql, values)[0]["n"])

    def payload(self, message_id: str) -> tuple[int, bytes] | None:
        sql = "SELECT advisory_version, data FROM payloads WHERE message_id = ?"
        rows = self._query(sql, (message_id,))
        return (rows[0]["advisory_version"], bytes(rows[0]["data"])) if rows else None

    def payloads(self, message_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        ids = list(dict.fromkeys(message_ids))
        found = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            sql = (
                "SELECT message_id, advisory_version, data FROM payloads "
                f"WHERE message_id IN ({marks})"
            )
            for r in self._query(sql, chunk):
                found[r["message_id"]] = (r["advisory_version"], bytes(r["data"]))
        return found

    def payload_versions(self, advisory_id: str) -> dict[str, int]:
        rows = self._query(
            "SELECT p.message_id, p.advisory_version FROM payloads p "
            "JOIN messages m ON m.message_id = p.message_id WHERE m.advisory_id = ?",
            (advisory_id,),
        )
        return {r["message_id"]: r["advisory_version"] for r in rows}

    def data_version(self) -> int:
        """Changes whenever another connection commits (the CLI), and whenever
        this one adds or changes an advisory (mail intake). StoreBroken once
        a flush to disk failed (the daemon asks every pass, so it stops)."""
        if self._broken is not None:
            raise StoreBroken(self._broken)
        (version,) = self._conn.execute("PRAGMA data_version").fetchone().values()
        return int(version) + self._advisory_writes

    @staticmethod
    def _insert_messages(
        conn: sqlite3.Connection, message_rows: Sequence[tuple[object, ...]]
    ) -> None:
        """Insert new messages (values in MESSAGE_COLUMNS order), refusing
        (before writing any) an id already stored or given twice."""
        for column in UNIQUE_MESSAGE_COLUMNS:
            index = MESSAGE_COLUMNS.index(column)
            values = [m[index] for m in message_rows]
            seen: set[object] = set()
            for value in values:
                if value in seen:
                    raise duplicate_message(column, value)
                seen.add(value)
            for start in range(0, len(values), 500):
                chunk = values[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                sql = f"SELECT {column} FROM messages WHERE {column} IN ({marks}) LIMIT 1"
                taken = conn.execute(sql, chunk).fetchone()
                if taken:
                    raise duplicate_message(column, taken[column])
        # A few multi-row INSERTs, not one statement per row: each statement lets
        # go of the GIL while SQLite runs it, and under intake load taking it
        # back can wait on the threads that run gpg.
        row_marks = "(" + ", ".join("?" for _ in MESSAGE_COLUMNS) + ")"
        names = ", ".join(MESSAGE_COLUMNS)
        # As many rows as this SQLite allows parameters (999 before 3.32).
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(MESSAGE_COLUMNS)
        per_insert = max(1, min(_ROWS_PER_INSERT, limit))
        for start in range(0, len(message_rows), per_insert):
            rows = message_rows[start : start + per_insert]
            conn.execute(
                f"INSERT INTO messages ({names}) VALUES {', '.join([row_marks] * len(rows))}",
                [value for row in rows for value in row],
            )

    def get_advisory(self, advisory_id: str) -> AdvisoryRecord | None:
        rows = self._query("SELECT * FROM advisories WHERE id = ?", (advisory_id,))
        return advisory_from_row(rows[0]) if rows else None

    def list_advisories(self) -> list[AdvisoryRecord]:
        records = [advisory_from_row(r) for r in self._query("SELECT * FROM advisories")]
        return sorted(records, key=advisory_order)

    def messages(
        self, advisory_id: str, states: Sequence[MessageState] = ()
    ) -> list[MessageRecord]:
        where, params = message_filter((), states, None, None, None)
        return self._messages(f"advisory_id = ? AND {where}", [advisory_id, *params])

    def _messages(self, where: str, params: Sequence[object]) -> list[MessageRecord]:
        sql = f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE {where}"
        try:
            cursor = self._conn.cursor()
            cursor.row_factory = None  # plain tuples, in MESSAGE_COLUMNS order
            rows = cursor.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the state database: {exc}") from exc
        return sorted(map(message_from_values, rows), key=message_order)

    def events(self, advisory_id: str | None = None) -> list[Event]:
        if advisory_id is None:
            rows = self._query("SELECT * FROM events ORDER BY seq")
        else:
            sql = "SELECT * FROM events WHERE advisory_id = ? ORDER BY seq"
            rows = self._query(sql, (advisory_id,))
        return [event_from_row(r) for r in rows]

    def verify_history(self) -> audit.ChainCheck:
        """Check the hash chain over the whole audit log."""
        return audit.verify(self.events())

    def close(self) -> None:
        self._conn.close()
        self._wal.close()

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the state database: {exc}") from exc


def _dict_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, values, strict=True)}


# Rows per INSERT statement at most (fewer where SQLite allows fewer parameters).
_ROWS_PER_INSERT = 500


def _insert(table: str, columns: Sequence[str]) -> str:
    names, marks = ", ".join(columns), ", ".join(f":{c}" for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({marks})"


def _append(conn: sqlite3.Connection, new: NewEvent) -> Event:
    """Chain `new` after the last stored event and insert it (in the caller's
    transaction); returns the event exactly as it will read back."""
    last = conn.execute("SELECT * FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    row = event_to_row(audit.chain(None if last is None else event_from_row(last), new))
    conn.execute(_insert("events", EVENT_COLUMNS), row)
    return event_from_row(row)


@contextmanager
def _transaction(conn: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; SQLite errors
    become StoreError (and nothing was written)."""
    try:
        joined = conn.in_transaction  # inside Store.atomic(): the outer block commits
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}; nothing was written") from exc
    if joined:
        yield conn
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}; nothing was written") from exc


@contextmanager
def _savepoint(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """A nested atomic block: undone alone when it raises. If SQLite ended the
    whole transaction meanwhile, TransactionLost (the outer block must not go on)."""

    def lost() -> TransactionLost:
        return TransactionLost(f"{path}: the transaction was rolled back; nothing was written")

    try:
        conn.execute("SAVEPOINT atomic")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}; nothing was written") from exc
    try:
        yield
    except BaseException:
        if not conn.in_transaction:
            raise lost() from None
        try:
            conn.execute("ROLLBACK TO atomic")
            conn.execute("RELEASE atomic")
        except sqlite3.Error as exc:
            raise lost() from exc
        raise
    if not conn.in_transaction:
        raise lost()
    try:
        conn.execute("RELEASE atomic")
    except sqlite3.Error as exc:
        raise lost() from exc


def _wal_path(conn: sqlite3.Connection, path: Path) -> Path:
    """The WAL file of the database SQLite really opened (a symlinked database
    has its WAL beside the file the link points to, not beside the link)."""
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row["name"] == "main" and row["file"]:
            return Path(str(row["file"]) + "-wal")
    return path.with_name(path.name + "-wal")


class _WalFile:
    """A descriptor of the database's WAL file, for `SqliteStore.sync()` from
    any thread. SQLite holds no lock on the WAL file (its WAL locks live in
    the -shm file, the others on the database file), so opening and closing
    this descriptor cannot drop any (see `_create_private`). SQLite removes
    the WAL only when its last connection closes, never while this store is
    open; still, a descriptor whose file was removed or replaced (no longer
    linked) is opened again, on the file now at the path, with its folder
    flushed, so a sync never flushes the wrong file. One fstat per flush, not
    a lookup of the path: a release flushes every few messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def sync(self) -> None:
        with self._lock:
            fd = self._fd
            if fd is None or os.fstat(fd).st_nlink == 0:
                if fd is not None:
                    os.close(fd)
                self._fd = None
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                self._fd = fd
                _sync_folder(self.path.parent)
            os.fdatasync(fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_private(path: Path) -> None:
    """Create the database file 0600 (its WAL and SHM files inherit that).

    Only when it does not exist: closing any descriptor of an open SQLite file
    drops every POSIX lock this process holds on it, so an existing database
    must never be opened and closed behind SQLite's back (another connection
    in this process would lose its locks)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA busy_timeout = 5000")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise StoreError(f"{path}: cannot use WAL journal mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


def _user_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to len(MIGRATIONS), one transaction per step; a step
    another process already applied meanwhile is skipped."""
    current, known = _user_version(conn), len(MIGRATIONS)
    if current > known:
        raise StoreError(
            f"{path}: schema version {current} is newer than this maild understands "
            f"({known}); upgrade maild"
        )
    if current == known:
        return
    # Rebuilding a table drops and renames it: foreign keys are off meanwhile
    # (a pragma that only takes effect outside a transaction) and every step is
    # checked before its commit.
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for version in range(current, known):
            with _transaction(conn, path):
                if _user_version(conn) != version:
                    continue
                for statement in _statements(MIGRATIONS[version]):
                    conn.execute(statement)
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise sqlite3.IntegrityError(
                        f"migration to schema {version + 1} broke {len(broken)} references"
                    )
                conn.execute(f"PRAGMA user_version = {version + 1}")
    finally:
        conn.execute("PRAGMA foreign_keys = ON")


def _statements(script: str) -> Iterator[str]:
    """Split an SQL script into complete statements (triggers included)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {pending.strip()!r}")
