"""Store features the dispatcher relies on: message receipts, prepared
payloads tied to an advisory version, and the upgrade from schema 1."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from maild.adapters.store import (
    ADVISORY_COLUMNS,
    MIGRATIONS,
    SqliteStore,
    _insert,
    advisory_to_row,
    message_to_row,
)
from maild.domain.models import MessageKind, MessageState
from maild.service.ports import StoreError
from tests.test_store import AnyStore, advisory, event, message

AT = datetime(2026, 12, 1, 16, tzinfo=UTC)
V1_MESSAGE_COLUMNS = (
    "advisory_id", "kind", "address", "message_id", "envid", "state", "org", "fingerprint",
    "detail", "attempts", "smtp_code", "smtp_response", "sent_at", "dsn", "acked_at",
    "ack_token",
)  # fmt: skip


def test_receipt_fields_update_in_one_transaction(store: AnyStore) -> None:
    """A send's outcome (state, attempts, SMTP reply, retry time, duplicate
    flag) is recorded and reads back; identity fields never change."""
    store.add_advisory(
        advisory(), [message("RSA-2026-0001", 1), message("RSA-2026-0001", 2)], event()
    )
    first, second = store.messages("RSA-2026-0001")
    sent = replace(
        first,
        state=MessageState.ACCEPTED,
        attempts=1,
        smtp_code=250,
        smtp_response="2.0.0 Ok: queued as ABC",
        sent_at=AT,
        possible_duplicate=True,
    )
    later = replace(second, state=MessageState.DEFERRED, attempts=1, next_attempt_at=AT)
    store.update_messages([sent, later])
    assert store.messages("RSA-2026-0001") == [sent, later]


def test_a_release_receipt_keeps_every_field_as_written(store: AnyStore) -> None:
    """The receipts a release writes (claim, then outcome) read back exactly:
    the SMTP reply, the retry time in its own zone, the DSN, the duplicate
    flag; and a receipt that cannot be stored is refused with its message id."""
    record = advisory()
    store.add_advisory(record, [message("RSA-2026-0001", 1), message("RSA-2026-0001", 2)], event())
    first, second = store.messages("RSA-2026-0001")
    claim = replace(first, state=MessageState.SENDING, attempts=2, possible_duplicate=True)
    assert store.commit_receipts([], [(claim, record.version)]) == {first.message_id}
    assert store.messages("RSA-2026-0001")[0] == claim
    paris = AT.astimezone(ZoneInfo("Europe/Paris"))
    outcome = replace(
        claim,
        state=MessageState.DEFERRED,
        detail="451 4.3.0 later",
        smtp_code=451,
        smtp_response="4.3.0 later",
        sent_at=AT,
        dsn="delayed",
        acked_at=AT,
        next_attempt_at=paris,
    )
    store.commit_receipts([outcome], [])
    (read, _) = store.messages("RSA-2026-0001")
    assert read == outcome and read.next_attempt_at.tzinfo == paris.tzinfo
    naive = replace(second, state=MessageState.SENDING, sent_at=AT.replace(tzinfo=None))
    with pytest.raises(StoreError, match=second.message_id):
        store.commit_receipts([], [(naive, record.version)])
    assert store.messages("RSA-2026-0001")[1] == second


def test_an_advisorys_messages_can_be_read_by_state(store: AnyStore) -> None:
    """The dispatcher reads only the messages that may still be sent when
    that is all it needs (its next wake-up), in the usual order."""
    record = advisory()
    store.add_advisory(record, [message("RSA-2026-0001", n) for n in (1, 2, 3)], event())
    first, second, third = store.messages("RSA-2026-0001")
    store.update_messages([replace(second, state=MessageState.ACCEPTED)])
    queued = store.messages("RSA-2026-0001", [MessageState.QUEUED, MessageState.DEFERRED])
    assert queued == [first, third]
    assert store.messages("RSA-2026-0001", [MessageState.FAILED]) == []
    assert len(store.messages("RSA-2026-0001")) == 3


def test_updating_an_unknown_message_writes_nothing(store: AnyStore) -> None:
    """An update naming a message that does not exist is refused whole."""
    store.add_advisory(advisory(), [message("RSA-2026-0001", 1)], event())
    (known,) = store.messages("RSA-2026-0001")
    ghost = replace(message("RSA-2026-0001", 9), state=MessageState.ACCEPTED)
    with pytest.raises(StoreError, match="no message"):
        store.update_messages([replace(known, state=MessageState.ACCEPTED), ghost])
    assert store.messages("RSA-2026-0001") == [known]


def test_added_messages_join_their_advisory(store: AnyStore) -> None:
    """Public messages added later belong to the advisory; duplicates and
    unknown advisories are refused."""
    store.add_advisory(advisory(), [message("RSA-2026-0001", 1)], event())
    extra = message("RSA-2026-0001", 2, kind=MessageKind.PREANNOUNCEMENT)
    store.add_messages("RSA-2026-0001", [extra])
    assert extra in store.messages("RSA-2026-0001")
    with pytest.raises(StoreError):
        store.add_messages("RSA-2026-0001", [extra])
    with pytest.raises(StoreError):
        store.add_messages("nope", [message("nope", 3)])


def test_payloads_are_tied_to_the_advisory_version(store: AnyStore) -> None:
    """Prepared bytes are stored with the advisory version they were made
    from, replaced when prepared again, and refused for unknown messages."""
    store.add_advisory(advisory(), [message("RSA-2026-0001", 1)], event())
    (m,) = store.messages("RSA-2026-0001")
    assert store.payload(m.message_id) is None
    store.put_payload(m.message_id, 1, b"-----BEGIN PGP MESSAGE-----", AT)
    store.put_payload(m.message_id, 2, b"v2", AT)
    assert store.payload(m.message_id) == (2, b"v2")
    assert store.payload_versions("RSA-2026-0001") == {m.message_id: 2}
    with pytest.raises(StoreError):
        store.put_payload("<ghost@x>", 1, b"x", AT)


def test_schema_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database written by the first release (schema 1, made here from the
    first migration alone) keeps its rows and its audit chain after the
    upgrade, and its messages read with the new fields at their defaults."""
    path = tmp_path / "maild.db"
    record, sent = advisory(), message("RSA-2026-0001", 1)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    conn.execute(_insert("advisories", ADVISORY_COLUMNS), advisory_to_row(record))
    v1_row = {k: v for k, v in message_to_row(sent).items() if k in V1_MESSAGE_COLUMNS}
    conn.execute(_insert("messages", tuple(v1_row)), v1_row)
    conn.close()
    upgraded = SqliteStore.open(path)
    upgraded.append_event(event())
    assert upgraded.messages("RSA-2026-0001") == [sent]
    assert upgraded.get_advisory("RSA-2026-0001") == record
    assert upgraded.verify_history().intact
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    upgraded.close()


def test_schema_3_database_upgrades_with_its_payloads_and_references(tmp_path: Path) -> None:
    """Schema 4 rebuilds the advisories and messages tables: prepared
    payloads (which reference messages) survive, and foreign keys hold."""
    path = tmp_path / "maild.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("".join(MIGRATIONS[:3]) + "PRAGMA user_version = 3;")
    record, sent = advisory(), message("RSA-2026-0001", 1)
    conn.execute(_insert("advisories", ADVISORY_COLUMNS), advisory_to_row(record))
    row = {k: v for k, v in message_to_row(sent).items() if k != "text"}
    conn.execute(_insert("messages", tuple(row)), row)
    conn.execute(
        "INSERT INTO payloads VALUES (?, 1, ?, ?)", (sent.message_id, b"bytes", AT.isoformat())
    )
    conn.close()
    upgraded = SqliteStore.open(path)
    assert upgraded.messages("RSA-2026-0001") == [sent]
    assert upgraded.payload(sent.message_id) == (1, b"bytes")
    with pytest.raises(StoreError):
        upgraded.add_messages("nope", [message("nope", 3)])
    upgraded.close()


def test_cancelling_by_kind_spares_the_disclosure_and_alerts(store: AnyStore) -> None:
    """Ending an embargo early cancels unsent notices and pre-announcements
    only: the disclosure still goes out and WG alerts are never cancelled."""
    kinds = [
        MessageKind.NOTICE,
        MessageKind.PREANNOUNCEMENT,
        MessageKind.DISCLOSURE,
        MessageKind.ALERT,
    ]
    rows = [message("RSA-2026-0001", i, kind=k) for i, k in enumerate(kinds)]
    record = advisory()
    store.add_advisory(record, rows, event())
    store.update_advisory(
        replace(record, version=2),
        event("disclose-now"),
        cancel_pending="ended early",
        cancel_kinds=(MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT),
    )
    states = {m.kind: m.state for m in store.messages("RSA-2026-0001")}
    assert states == {
        MessageKind.NOTICE: MessageState.CANCELLED,
        MessageKind.PREANNOUNCEMENT: MessageState.CANCELLED,
        MessageKind.DISCLOSURE: MessageState.QUEUED,
        MessageKind.ALERT: MessageState.QUEUED,
    }
    store.update_advisory(replace(record, version=3), event("cancelled"), cancel_pending="x")
    states = {m.kind: m.state for m in store.messages("RSA-2026-0001")}
    assert states[MessageKind.DISCLOSURE] is MessageState.CANCELLED
    assert states[MessageKind.ALERT] is MessageState.QUEUED


def test_advisories_with_messages_in_a_state(store: AnyStore) -> None:
    """The dispatcher finds closed advisories that still owe mail without
    reading every message of every advisory."""
    store.add_advisory(advisory(), [message("RSA-2026-0001", 1)], event())
    assert store.advisories_with_messages_in([MessageState.QUEUED]) == {"RSA-2026-0001"}
    assert store.advisories_with_messages_in([MessageState.ACCEPTED]) == set()


def test_claims_lose_to_a_change_and_outcomes_only_land_on_sending(store: AnyStore) -> None:
    """A message is claimed for sending only if it is still queued and its
    advisory unchanged; an outcome only lands on a message still sending, so
    a CLI change made meanwhile is never overwritten."""
    record = advisory()
    store.add_advisory(record, [message("RSA-2026-0001", 1), message("RSA-2026-0001", 2)], event())
    first, second = store.messages("RSA-2026-0001")
    sending = replace(first, state=MessageState.SENDING, attempts=1)
    assert store.commit_receipts([], [(sending, record.version)]) == {first.message_id}
    store.update_advisory(replace(record, version=2), event("cancelled"), cancel_pending="x")
    late = replace(second, state=MessageState.SENDING, attempts=1)
    assert store.commit_receipts([], [(late, record.version)]) == set()
    done = replace(sending, state=MessageState.ACCEPTED, smtp_code=250)
    stale = replace(second, state=MessageState.ACCEPTED)
    store.commit_receipts([done, stale], [])
    states = {m.message_id: m.state for m in store.messages("RSA-2026-0001")}
    assert states == {
        first.message_id: MessageState.ACCEPTED,
        second.message_id: MessageState.CANCELLED,
    }


def test_a_claim_planned_from_an_older_version_of_its_advisory_never_takes(
    store: AnyStore,
) -> None:
    """A message still queued is not claimed from a plan that a change (a
    reschedule) has replaced since it was read, and the claim with the new
    version takes; another advisory's version plays no part."""
    record, other = advisory(), advisory("RSA-2026-0002")
    store.add_advisory(record, [message("RSA-2026-0001", 1)], event())
    store.add_advisory(other, [], event(advisory_id="RSA-2026-0002"))
    store.update_advisory(replace(other, version=2), event("rescheduled", "RSA-2026-0002"))
    (queued,) = store.messages("RSA-2026-0001")
    sending = replace(queued, state=MessageState.SENDING, attempts=1)
    store.update_advisory(replace(record, version=2), event("rescheduled"))
    assert store.commit_receipts([], [(sending, 1)]) == set()
    assert store.messages("RSA-2026-0001") == [queued]
    assert store.commit_receipts([], [(sending, 2)]) == {queued.message_id}
    assert store.messages("RSA-2026-0001") == [sending]


def test_discarding_payloads_only_touches_messages_still_waiting(store: AnyStore) -> None:
    """A reload makes waiting messages be prepared again by forgetting their
    bytes; the bytes of a message already sent (or being sent) are kept."""
    store.add_advisory(advisory(), [message("RSA-2026-0001", n) for n in (1, 2, 3)], event())
    waiting, sent, blocked = store.messages("RSA-2026-0001")
    store.update_messages(
        [
            replace(sent, state=MessageState.ACCEPTED, attempts=1, sent_at=AT),
            replace(blocked, state=MessageState.BLOCKED, detail="key is revoked"),
        ]
    )
    for m in (waiting, sent, blocked):
        store.put_payload(m.message_id, 1, b"bytes", AT)
    ids = [waiting.message_id, sent.message_id, blocked.message_id, "<nobody@x>"]
    assert store.discard_payloads(ids) == 2
    assert store.payload(waiting.message_id) is None
    assert store.payload(blocked.message_id) is None
    assert store.payload(sent.message_id) == (1, b"bytes")
    assert store.discard_payloads([]) == 0


def test_messages_are_counted_by_state(store: AnyStore) -> None:
    """The status line systemd shows counts waiting messages: queued and
    deferred ones count, sent ones do not."""
    store.add_advisory(advisory(), [message("RSA-2026-0001", n) for n in (1, 2, 3)], event())
    first, second, _ = store.messages("RSA-2026-0001")
    store.update_messages(
        [
            replace(first, state=MessageState.ACCEPTED, attempts=1, sent_at=AT),
            replace(second, state=MessageState.DEFERRED, attempts=1, next_attempt_at=AT),
        ]
    )
    assert store.count_messages([MessageState.QUEUED, MessageState.DEFERRED]) == 2
    assert store.count_messages([MessageState.ACCEPTED]) == 1
    assert store.count_messages([MessageState.FAILED]) == 0
