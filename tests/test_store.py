"""The Store contract, run against both SqliteStore and MemoryStore, plus what
only the SQLite file can show (permissions, durability, schema, tampering)."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from maild.adapters.memstore import MemoryStore
from maild.adapters.store import MIGRATIONS, SqliteStore
from maild.domain.models import (
    AdvisoryMeta,
    AdvisoryRecord,
    AdvisoryState,
    Event,
    MessageKind,
    MessageRecord,
    MessageState,
    NewEvent,
    Preannounce,
)
from maild.domain.policy import Category, Plan, PolicyInput, Severity
from maild.service.ports import Conflict, Store, StoreError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
KOLKATA_FIXED = timezone(timedelta(hours=5, minutes=30))
CREATED = datetime(2026, 11, 20, 9, 15, 42, 123456, tzinfo=UTC)

AnyStore = SqliteStore | MemoryStore


def advisory(
    advisory_id: str = "RSA-2026-0001",
    *,
    disclosure: datetime = datetime(2026, 12, 8, 17, 0, tzinfo=BERLIN),
    full: bool = False,
    version: int = 1,
    state: AdvisoryState = AdvisoryState.SCHEDULED,
) -> AdvisoryRecord:
    """A record with every optional field None/empty, or (`full`) all set."""
    if full:
        rules = PolicyInput(
            disclosure=disclosure,
            severity=Severity.CRITICAL,
            exploited=True,
            toolchain_update=False,
            category=Category.INFRASTRUCTURE,
            notify_days=7,
            reporter_approval="reporter agreed by mail, 2026-11-19",
            notify_not_before=datetime(2026, 11, 25, 8, 0, tzinfo=NEW_YORK),
        )
        plan = Plan(
            disclose_at=disclosure.astimezone(BERLIN),
            notify_at=datetime(2026, 11, 27, 17, 0, tzinfo=BERLIN),
            preannounce_at=datetime(2026, 11, 28, 1, 0, tzinfo=TOKYO),
            business_days=7,
            reason="critical and actively exploited; notify_days = 7",
        )
        meta = AdvisoryMeta(
            advisory_id,
            "Heap overflow in the ünïcode path",
            "rustc",
            rules,
            cves=("CVE-2026-1111", "CVE-2026-2222"),
            extra_recipients=("security@example.org",),
            preannounce=Preannounce.MINIMAL,
        )
        return AdvisoryRecord(
            meta,
            plan,
            state,
            sealed=b"\x00\xffsealed\x00bytes",
            patch_names=("0001-fix.patch", "0002-test.patch"),
            created_at=CREATED,
            updated_at=datetime(2026, 11, 21, 10, 0, tzinfo=KOLKATA_FIXED),
            version=version,
        )
    rules = PolicyInput(disclosure=disclosure, severity=Severity.HIGH)
    plan = Plan(disclosure, None, None, None, "no advance notice")
    meta = AdvisoryMeta(advisory_id, "Title", "cargo", rules)
    return AdvisoryRecord(meta, plan, state, b"", (), CREATED, CREATED, version)


def message(
    advisory_id: str,
    n: int,
    *,
    state: MessageState = MessageState.QUEUED,
    kind: MessageKind = MessageKind.NOTICE,
    org: str | None = None,
    full: bool = False,
) -> MessageRecord:
    """Message number `n` of an advisory: optional fields None, or (`full`) all set."""
    record = MessageRecord(
        advisory_id,
        kind,
        f"user{n}@example.net",
        f"<{advisory_id}.{n}@maild.test>",
        f"{advisory_id}-{n}",
        state=state,
        org=org,
    )
    if not full:
        return record
    return replace(
        record,
        fingerprint="0123456789ABCDEF0123456789ABCDEF01234567",
        detail="250 2.0.0 queued as 4XYZ",
        attempts=3,
        smtp_code=250,
        smtp_response="2.0.0 Ok: queued",
        sent_at=datetime(2026, 11, 27, 17, 0, 1, tzinfo=BERLIN),
        dsn="delivered",
        acked_at=datetime(2026, 11, 27, 9, 30, tzinfo=NEW_YORK),
        ack_token="tok-" + str(n),
    )


def event(
    kind: str = "accepted", advisory_id: str | None = "RSA-2026-0001", **data: object
) -> NewEvent:
    return NewEvent(datetime(2026, 11, 20, 10, 0, tzinfo=BERLIN), kind, "alice", advisory_id, data)


def as_store(s: AnyStore) -> Store:
    """Both implementations satisfy the Store protocol (checked by mypy)."""
    return s


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "maild" / "state.db"


def snapshot(s: AnyStore) -> tuple[object, ...]:
    """Everything a caller can read back from the store."""
    advisories = s.list_advisories()
    return (advisories, [s.messages(a.id) for a in advisories], s.events())


# --- the contract, for both implementations ---------------------------------


def test_minimal_advisory_round_trips(store: AnyStore) -> None:
    """An advisory with its optional fields unset reads back equal, None stays None."""
    record = advisory()
    msgs = [message(record.id, 1), message(record.id, 2)]
    store.add_advisory(record, msgs, event())
    got = store.get_advisory(record.id)
    assert got == record
    assert got is not None
    assert got.meta.rules.notify_not_before is None and got.plan.notify_at is None
    assert got.meta.cves == () and isinstance(got.patch_names, tuple)
    assert store.messages(record.id) == msgs


def test_full_advisory_round_trips_with_types_and_zones(store: AnyStore) -> None:
    """Every field set, in several time zones, reads back equal: enums as the same
    members, tuples as tuples, bytes as bytes, datetimes in the zone they had."""
    record = advisory(disclosure=datetime(2026, 12, 8, 11, 0, tzinfo=NEW_YORK), full=True)
    msgs = [
        message(record.id, 1, full=True, org="Acme", state=MessageState.ACCEPTED),
        message(record.id, 2, full=True, kind=MessageKind.REPLY, state=MessageState.FAILED),
    ]
    store.add_advisory(record, msgs, event())
    got = store.get_advisory(record.id)
    assert got == record
    assert got is not None
    assert got.meta.rules.severity is Severity.CRITICAL
    assert got.meta.rules.category is Category.INFRASTRUCTURE
    assert got.meta.preannounce is Preannounce.MINIMAL
    assert got.state is AdvisoryState.SCHEDULED
    assert got.meta.cves == ("CVE-2026-1111", "CVE-2026-2222")
    assert got.sealed == b"\x00\xffsealed\x00bytes"
    assert got.meta.rules.disclosure.tzinfo == NEW_YORK
    assert got.plan.preannounce_at is not None and got.plan.preannounce_at.tzinfo == TOKYO
    assert got.updated_at.utcoffset() == timedelta(hours=5, minutes=30)
    assert got.created_at.microsecond == 123456
    assert store.messages(record.id) == msgs
    assert [m.state for m in store.messages(record.id)] == [
        MessageState.ACCEPTED,
        MessageState.FAILED,
    ]


def test_ambiguous_dst_times_read_back_equal(store: AnyStore) -> None:
    """A wall time that happens twice (DST ends) reads back as the same instant
    and compares equal, for both occurrences."""
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=0)
    second = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1)
    record = replace(advisory(), created_at=first, updated_at=second)
    store.add_advisory(record, [], event())
    got = store.get_advisory(record.id)
    assert got == record
    assert got is not None
    assert got.created_at.isoformat() == "2026-10-25T02:30:00+02:00"
    assert got.updated_at.isoformat() == "2026-10-25T02:30:00+01:00"


def test_every_message_state_and_kind_is_storable(store: AnyStore) -> None:
    """All MessageState and MessageKind values can be stored and read back."""
    record = advisory()
    msgs = [
        message(record.id, i, state=state, kind=kind)
        for i, (state, kind) in enumerate((s, k) for s in MessageState for k in MessageKind)
    ]
    store.add_advisory(record, msgs, event())
    got = store.messages(record.id)
    assert sorted(got, key=lambda m: m.envid) == sorted(msgs, key=lambda m: m.envid)


def test_unknown_advisory_reads_as_none_and_empty(store: AnyStore) -> None:
    """Reading an advisory that was never stored gives None and no messages."""
    assert store.get_advisory("nope") is None
    assert store.messages("nope") == []
    assert store.list_advisories() == []


def test_list_is_soonest_disclosure_first_then_id(store: AnyStore) -> None:
    """Advisories list by disclosure instant (not by wall-clock text), ties by id."""
    berlin_5pm = datetime(2026, 12, 8, 17, 0, tzinfo=BERLIN)  # 16:00 UTC
    ny_1130 = datetime(2026, 12, 8, 11, 30, tzinfo=NEW_YORK)  # 16:30 UTC
    tokyo_same = berlin_5pm.astimezone(TOKYO)  # 16:00 UTC, shown as 01:00 next day
    early = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    for advisory_id, when in [("D", ny_1130), ("C", berlin_5pm), ("B", tokyo_same), ("Z", early)]:
        store.add_advisory(
            advisory(advisory_id, disclosure=when), [], event(advisory_id=advisory_id)
        )
    assert [a.id for a in store.list_advisories()] == ["Z", "B", "C", "D"]


def test_messages_list_by_kind_org_address(store: AnyStore) -> None:
    """An advisory's messages list by kind (notices first, as MessageKind orders
    them), then org (none first), then address; other advisories' are not shown."""
    a, b = advisory("A"), advisory("B")
    alert = replace(message("A", 1, kind=MessageKind.ALERT), address="a@x")
    notice_zeta = replace(message("A", 2, org="Zeta"), address="a@x")
    notice_acme_b = replace(message("A", 3, org="Acme"), address="b@x")
    notice_acme_a = replace(message("A", 4, org="Acme"), address="a@x")
    notice_no_org = replace(message("A", 5), address="z@x")
    disclosure = replace(message("A", 6, kind=MessageKind.DISCLOSURE), address="a@x")
    shuffled = [alert, notice_zeta, disclosure, notice_acme_b, notice_no_org, notice_acme_a]
    store.add_advisory(a, shuffled, event(advisory_id="A"))
    store.add_advisory(b, [message("B", 1)], event(advisory_id="B"))
    assert store.messages("A") == [
        notice_no_org,
        notice_acme_a,
        notice_acme_b,
        notice_zeta,
        disclosure,
        alert,
    ]
    assert store.messages("B") == [message("B", 1)]


def test_an_advisory_for_thousands_of_addresses_is_stored_whole(store: AnyStore) -> None:
    """A list of 1,201 addresses (more than one INSERT statement's worth of
    rows) stores every notice with every field, and reads back complete."""
    notices = [message("A", n, full=True, org=f"org{n:05d}") for n in range(1201)]
    store.add_advisory(advisory("A"), notices, event(advisory_id="A"))
    assert store.messages("A") == notices


def test_events_filter_by_advisory_in_order(store: AnyStore) -> None:
    """events() gives the whole log in order; events(id) only that advisory's."""
    store.add_advisory(advisory("A"), [], event("accepted", "A"))
    store.append_event(event("refused", None, reason="bad signature"))
    store.add_advisory(advisory("B"), [], event("accepted", "B"))
    store.append_event(event("checked", "A"))
    assert [(e.seq, e.kind, e.advisory_id) for e in store.events()] == [
        (1, "accepted", "A"),
        (2, "refused", None),
        (3, "accepted", "B"),
        (4, "checked", "A"),
    ]
    assert [e.seq for e in store.events("A")] == [1, 4]
    assert store.events("nope") == []


def test_duplicate_id_is_a_conflict_and_writes_nothing(store: AnyStore) -> None:
    """Adding an advisory whose id exists raises Conflict; the stored advisory,
    its messages and the audit log are unchanged (no event for the attempt)."""
    original = advisory()
    store.add_advisory(original, [message(original.id, 1)], event())
    before = snapshot(store)
    again = replace(advisory(full=True), created_at=datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(Conflict, match="already exists"):
        store.add_advisory(again, [message(original.id, 2), message(original.id, 3)], event())
    assert snapshot(store) == before
    assert len(store.events()) == 1
    assert store.messages(original.id) == [message(original.id, 1)]


def test_stale_version_is_a_conflict_and_changes_nothing(store: AnyStore) -> None:
    """update_advisory needs version = stored + 1; a same or skipped version
    raises Conflict and changes nothing (not even pending messages)."""
    record = advisory()
    store.add_advisory(record, [message(record.id, 1)], event())
    before = snapshot(store)
    for version in (1, 3):
        changed = replace(record, state=AdvisoryState.CANCELLED, version=version)
        with pytest.raises(Conflict, match="changed since it was read"):
            store.update_advisory(changed, event("cancelled"), cancel_pending="withdrawn")
        assert snapshot(store) == before
    updated = replace(record, state=AdvisoryState.NOTIFIED, version=2)
    store.update_advisory(updated, event("notified"))
    assert store.get_advisory(record.id) == updated
    with pytest.raises(Conflict):
        store.update_advisory(updated, event("notified"))


def test_update_of_unknown_advisory_is_a_store_error(store: AnyStore) -> None:
    """Updating an advisory that was never stored raises StoreError (not
    Conflict) and writes nothing."""
    with pytest.raises(StoreError, match="not stored") as raised:
        store.update_advisory(advisory(version=2), event())
    assert not isinstance(raised.value, Conflict)
    assert store.events() == []


def test_update_replaces_the_advisory_and_keeps_messages(store: AnyStore) -> None:
    """A valid update stores the new record as given; without cancel_pending the
    messages are left as they were."""
    record = advisory()
    msgs = [message(record.id, 1), message(record.id, 2, state=MessageState.DEFERRED)]
    store.add_advisory(record, msgs, event())
    new = replace(advisory(full=True), version=2)
    store.update_advisory(new, event("rescheduled"))
    assert store.get_advisory(record.id) == new
    assert store.messages(record.id) == msgs


def test_cancel_pending_cancels_only_unsent_messages(store: AnyStore) -> None:
    """cancel_pending turns queued, deferred and blocked messages into cancelled
    ones with the text as detail; sending, accepted, failed and already cancelled
    ones, and other advisories' messages, stay as they were."""
    a, b = advisory("A"), advisory("B")
    msgs = {state: message("A", i, state=state) for i, state in enumerate(MessageState)}
    store.add_advisory(a, list(msgs.values()), event(advisory_id="A"))
    store.add_advisory(b, [message("B", 1)], event(advisory_id="B"))
    store.update_advisory(
        replace(a, state=AdvisoryState.CANCELLED, version=2),
        event("cancelled", "A"),
        cancel_pending="advisory withdrawn by alice",
    )
    got = {m.envid: m for m in store.messages("A")}
    for state, before in msgs.items():
        after = got[before.envid]
        if state in (MessageState.QUEUED, MessageState.DEFERRED, MessageState.BLOCKED):
            assert after == replace(
                before, state=MessageState.CANCELLED, detail="advisory withdrawn by alice"
            )
        else:
            assert after == before
    assert store.messages("B") == [message("B", 1)]


def test_every_write_appends_exactly_one_chained_event(store: AnyStore) -> None:
    """add_advisory, update_advisory and append_event each append one event,
    return it as stored, and the hash chain verifies after each."""
    record = advisory()
    writes: list[Callable[[], Event]] = [
        lambda: store.add_advisory(record, [message(record.id, 1)], event("accepted")),
        lambda: store.append_event(event("refused", None, why="no key")),
        lambda: store.update_advisory(
            replace(record, version=2), event("cancelled"), cancel_pending="x"
        ),
    ]
    assert store.verify_history().intact
    for n, write in enumerate(writes, start=1):
        returned = write()
        log = store.events()
        assert len(log) == n
        assert log[-1] == returned
        assert returned.seq == n
        if n > 1:
            assert returned.prev_hash == log[-2].hash
        check = store.verify_history()
        assert check.intact and check.events == n, check.describe()


def test_event_data_round_trips_as_json(store: AnyStore) -> None:
    """Event data reads back as the JSON it was stored as (tuples become lists),
    the returned event equals the stored one, and the chain still verifies."""
    data = {"z": 1, "a": {"nested": [1, 2.5, None, True]}, "t": ("x", "y"), "s": "ü"}
    returned = store.append_event(
        NewEvent(datetime(2026, 3, 29, 1, 59, tzinfo=BERLIN), "k", "bob", None, data)
    )
    stored = store.events()[0]
    assert stored == returned
    assert dict(stored.data) == {
        "a": {"nested": [1, 2.5, None, True]},
        "s": "ü",
        "t": ["x", "y"],
        "z": 1,
    }
    assert stored.at == datetime(2026, 3, 29, 1, 59, tzinfo=BERLIN)
    assert store.verify_history().intact


def test_reads_are_copies(store: AnyStore) -> None:
    """Changing what a read returned does not change what is stored."""
    store.append_event(event("k", None, items=[1]))
    got = store.events()[0]
    assert isinstance(got.data, dict)
    got.data["items"].append(2)
    got.data["new"] = True
    assert dict(store.events()[0].data) == {"items": [1]}
    assert store.verify_history().intact


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda r: replace(r, created_at=datetime(2026, 1, 1)), id="naive-datetime"),
        pytest.param(lambda r: replace(r, state="unknown"), id="bad-enum"),
    ],
)
def test_unstorable_advisory_is_refused_and_nothing_written(
    store: AnyStore, bad: Callable[[AdvisoryRecord], AdvisoryRecord]
) -> None:
    """An advisory with a datetime lacking a UTC offset, or a value outside its
    enum, is refused with StoreError and nothing is written."""
    with pytest.raises(StoreError, match="cannot be stored"):
        store.add_advisory(bad(advisory()), [], event())
    assert snapshot(store) == ([], [], [])


def test_unstorable_event_or_foreign_message_is_refused(store: AnyStore) -> None:
    """Event data that is not JSON, and a message belonging to another advisory,
    are refused with StoreError and nothing is written."""
    with pytest.raises(StoreError, match="cannot be stored"):
        store.append_event(event("k", None, blob=b"bytes"))
    with pytest.raises(StoreError, match="belongs to advisory 'other'"):
        store.add_advisory(advisory(), [message("other", 1)], event())
    assert snapshot(store) == ([], [], [])


@pytest.mark.parametrize("column", ["message_id", "envid"])
def test_duplicate_message_key_leaves_nothing_written(store: AnyStore, column: str) -> None:
    """A message whose message_id or envid is already used (by an earlier message
    of the same batch, or of another advisory) fails the whole add_advisory:
    no advisory, no messages, no event."""
    first = advisory("A")
    store.add_advisory(first, [message("A", 1)], event(advisory_id="A"))
    before = snapshot(store)
    second = advisory("B")
    clash_in_batch = replace(message("B", 2), **{column: getattr(message("B", 1), column)})
    clash_with_a = replace(message("B", 3), **{column: getattr(message("A", 1), column)})
    for batch in ([message("B", 1), clash_in_batch], [message("B", 4), clash_with_a]):
        with pytest.raises(StoreError, match=f"{column} .* is already used"):
            store.add_advisory(second, batch, event(advisory_id="B"))
        assert snapshot(store) == before
        assert store.get_advisory("B") is None and store.messages("B") == []


def test_closed_store_raises_store_error(store: AnyStore) -> None:
    """Using a store after close() raises StoreError, not a driver error."""
    store.close()
    with pytest.raises(StoreError):
        store.events()
    with pytest.raises(StoreError):
        store.append_event(event())


def test_both_implementations_are_stores(tmp_path: Path) -> None:
    """SqliteStore and MemoryStore both satisfy the Store protocol."""
    sqlite_store = SqliteStore.open(tmp_path / "s.db")
    stores: Sequence[Store] = [as_store(sqlite_store), as_store(MemoryStore())]
    assert all(s.list_advisories() == [] for s in stores)
    sqlite_store.close()


# --- SQLite only ---------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_folders_are_0700_and_files_0600(db_path: Path) -> None:
    """The state folder (and parents it creates) get mode 0700; the database
    and its WAL/SHM files are readable by the owner only (0600)."""
    db_path.parents[2].mkdir(parents=True)
    db_path.parents[2].chmod(0o755)
    store = SqliteStore.open(db_path)
    store.add_advisory(advisory(), [message("RSA-2026-0001", 1)], event())
    assert mode(db_path.parent) == 0o700
    assert mode(db_path.parents[1]) == 0o700
    assert mode(db_path.parents[2]) == 0o755  # existing folders are left alone
    assert mode(db_path) == 0o600
    sidecars = [db_path.with_name(db_path.name + s) for s in ("-wal", "-shm")]
    assert all(p.exists() for p in sidecars)
    assert all(mode(p) == 0o600 for p in sidecars)
    store.close()


def test_connection_uses_wal_and_full_sync(db_path: Path) -> None:
    """The store's connection runs in WAL mode with synchronous=FULL, foreign
    keys on and a 5 s busy timeout."""
    store = SqliteStore.open(db_path)
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone() == {"journal_mode": "wal"}
    assert conn.execute("PRAGMA synchronous").fetchone() == {"synchronous": 2}
    assert conn.execute("PRAGMA foreign_keys").fetchone() == {"foreign_keys": 1}
    assert conn.execute("PRAGMA busy_timeout").fetchone() == {"timeout": 5000}
    store.close()


def test_data_survives_close_and_reopen(db_path: Path) -> None:
    """Everything written is there after closing and reopening the file, and
    the audit chain continues where it left off."""
    store = SqliteStore.open(db_path)
    record = advisory(full=True)
    store.add_advisory(record, [message(record.id, 1, full=True)], event())
    store.append_event(event("checked"))
    before = snapshot(store)
    store.close()
    reopened = SqliteStore.open(db_path)
    assert snapshot(reopened) == before
    assert reopened.append_event(event("again")).seq == 3
    assert reopened.verify_history().intact
    reopened.close()


def test_two_stores_on_one_file_share_one_chain(db_path: Path) -> None:
    """Two store objects on the same file see each other's writes and append to
    one unbroken chain."""
    one, two = SqliteStore.open(db_path), SqliteStore.open(db_path)
    one.append_event(event("a"))
    two.append_event(event("b"))
    one.append_event(event("c"))
    assert [e.kind for e in two.events()] == ["a", "b", "c"]
    assert one.verify_history().intact
    one.close()
    two.close()


def test_schema_version_is_current(db_path: Path) -> None:
    """A new database is migrated to user_version = len(MIGRATIONS), with the
    advisories, messages and events tables."""
    SqliteStore.open(db_path).close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"advisories", "messages", "events"} <= tables


def test_newer_schema_is_refused(db_path: Path) -> None:
    """A database from a newer maild is refused with a message saying so."""
    SqliteStore.open(db_path).close()
    newer = len(MIGRATIONS) + 1
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    expected = (
        f"schema version {newer} is newer than this maild understands "
        f"\\({len(MIGRATIONS)}\\); upgrade maild"
    )
    with pytest.raises(StoreError, match=expected):
        SqliteStore.open(db_path)


def test_garbage_file_is_refused_naming_it(db_path: Path) -> None:
    """A file that is not a SQLite database is refused with a StoreError naming
    the file, and the file is left as it was."""
    db_path.parent.mkdir(parents=True)
    garbage = b"this is not a database, it is a grocery list\n" * 100
    db_path.write_bytes(garbage)
    with pytest.raises(StoreError) as raised:
        SqliteStore.open(db_path)
    assert str(db_path) in str(raised.value)
    assert db_path.read_bytes() == garbage


def test_events_table_is_append_only(db_path: Path) -> None:
    """Even raw SQL cannot update or delete audit events."""
    store = SqliteStore.open(db_path)
    store.append_event(event())
    store.close()
    conn = sqlite3.connect(db_path)
    with pytest.raises(sqlite3.DatabaseError, match="events are append-only"):
        conn.execute("UPDATE events SET actor = 'mallory'")
    with pytest.raises(sqlite3.DatabaseError, match="events are append-only"):
        conn.execute("DELETE FROM events")
    conn.close()


def test_tampered_event_is_reported(db_path: Path) -> None:
    """An event edited behind maild's back (triggers dropped, data changed) makes
    verify_history() report the chain BROKEN, naming that event."""
    store = SqliteStore.open(db_path)
    for kind in ("a", "b", "c"):
        store.append_event(event(kind, None, amount=1))
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("""UPDATE events SET data = '{"amount":1000}' WHERE seq = 2""")
    conn.close()
    check = store.verify_history()
    assert not check.intact
    assert check.describe() == "BROKEN: event 2 was altered"
    store.close()


def test_database_failure_mid_write_rolls_back(db_path: Path) -> None:
    """When SQLite itself fails partway through a write (here: after the
    advisory row and a message were inserted), the write raises StoreError and
    leaves nothing written."""
    store = SqliteStore.open(db_path)
    store.append_event(event("before", None))
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER fail_second BEFORE INSERT ON messages WHEN NEW.envid LIKE '%-2' "
        "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    conn.close()
    before = snapshot(store)
    record = advisory()
    with pytest.raises(StoreError, match="disk on fire"):
        store.add_advisory(record, [message(record.id, 1), message(record.id, 2)], event())
    assert snapshot(store) == before
    assert store.get_advisory(record.id) is None and store.messages(record.id) == []
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    raw.close()
    store.close()


def test_existing_empty_file_is_initialised(db_path: Path) -> None:
    """An empty file at the path (e.g. pre-created by an installer) is taken as a
    new database, and its mode is not changed."""
    db_path.parent.mkdir(parents=True)
    db_path.touch(mode=0o600)
    store = SqliteStore.open(db_path)
    assert store.events() == []
    assert mode(db_path) == 0o600
    store.close()


def test_open_in_unwritable_place_is_a_store_error(tmp_path: Path) -> None:
    """A path whose folder cannot be created gives StoreError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the state database"):
        SqliteStore.open(blocker / "state.db")


def test_foreign_key_is_enforced(db_path: Path) -> None:
    """Messages cannot point at an advisory that does not exist (raw SQL too)."""
    store = SqliteStore.open(db_path)
    with pytest.raises(sqlite3.IntegrityError):
        store._conn.execute(
            "INSERT INTO messages (advisory_id, kind, address, message_id, envid, state, "
            "attempts) VALUES ('ghost', 'notice', 'a@x', '<m>', 'e', 'queued', 0)"
        )
    store.close()


def test_datetimes_are_stored_as_iso_text(db_path: Path) -> None:
    """Datetimes are stored as ISO 8601 text with their UTC offset (and zone)."""
    store = SqliteStore.open(db_path)
    store.add_advisory(advisory(), [], event())
    store.close()
    conn = sqlite3.connect(db_path)
    (text,) = conn.execute("SELECT disclosure FROM advisories").fetchone()
    conn.close()
    assert text == "2026-12-08T17:00:00+01:00[Europe/Berlin]"


def test_a_damaged_stored_message_is_a_clear_error_naming_it(db_path: Path) -> None:
    """A receipt whose stored time was damaged behind maild's back is not
    read as something else: reading it fails with an error naming the
    message and what is wrong."""
    store = SqliteStore.open(db_path)
    store.add_advisory(advisory(), [message("RSA-2026-0001", 1)], event())
    store._conn.execute("UPDATE messages SET sent_at = 'yesterday'")
    with pytest.raises(StoreError, match=r"stored message '<RSA-2026-0001\.1@maild\.test>' is"):
        store.messages("RSA-2026-0001")
    store.close()
