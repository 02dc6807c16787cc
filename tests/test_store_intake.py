"""Store features mail intake relies on: one transaction around an action
and its reply, replies that concern no advisory, finding a message by its
DSN envelope id or acknowledgement token, and replay refusal."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from maild.adapters.store import SqliteStore
from maild.domain.models import AdvisoryState, MessageKind, MessageRecord, MessageState
from maild.service import daemon
from maild.service.groupcommit import Batches, GroupCommit
from maild.service.intake import Refused
from maild.service.ports import StoreBroken, StoreError, TransactionLost
from tests.test_store import AnyStore, advisory, event, message

AT = datetime(2026, 12, 1, 16, tzinfo=UTC)


def reply(n: int, advisory_id: str | None = None) -> MessageRecord:
    return MessageRecord(
        advisory_id,
        MessageKind.REPLY,
        "ana@wg.example",
        f"<reply-{n}@maild.example>",
        f"reply-{n}",
        fingerprint="A" * 40,
        text="Re: list\n\nNo advisories.",
    )


def test_atomic_block_commits_everything_or_nothing(store: AnyStore) -> None:
    """An intake action, its event and its reply commit together; when
    anything in the block fails, none of it is stored."""
    with pytest.raises(RuntimeError), store.atomic():
        store.add_advisory(advisory(), [message("RSA-2026-0001", 1)], event())
        store.add_messages(None, [reply(1)])
        assert store.remember_signature("sig1", "A" * 40, AT, AT)
        raise RuntimeError("the reply could not be made")
    assert store.list_advisories() == []
    assert store.find_messages(kinds=[MessageKind.REPLY]) == []
    assert store.events() == []
    assert store.remember_signature("sig1", "A" * 40, AT, AT)
    with store.atomic():
        store.add_advisory(advisory(), [], event())
        store.add_messages("RSA-2026-0001", [reply(2, "RSA-2026-0001")])
    assert [m.message_id for m in store.messages("RSA-2026-0001")] == ["<reply-2@maild.example>"]
    assert len(store.events()) == 1


def test_replies_without_an_advisory_are_kept_with_their_text(store: AnyStore) -> None:
    """A reply to `list` or `help` belongs to no advisory; it reads back
    with its text and is found by kind and state."""
    store.add_messages(None, [reply(1)])
    (found,) = store.find_messages(kinds=[MessageKind.REPLY], states=[MessageState.QUEUED])
    assert found == reply(1)
    sent = replace(found, state=MessageState.ACCEPTED, attempts=1)
    store.update_messages([sent])
    assert store.find_messages(kinds=[MessageKind.REPLY], states=[MessageState.QUEUED]) == []
    assert store.find_messages(envid="reply-1") == [sent]


def test_messages_are_found_by_envid_message_id_and_token(store: AnyStore) -> None:
    """A DSN names the ENVID or Message-ID of what was sent; an
    acknowledgement quotes the notice's token: each finds its message."""
    rows = [replace(message("RSA-2026-0001", i), ack_token=f"{i:032x}") for i in range(1, 4)]
    store.add_advisory(advisory(), rows, event())
    second = store.messages("RSA-2026-0001")[1]
    assert store.find_messages(envid=second.envid) == [second]
    assert store.find_messages(message_id=second.message_id) == [second]
    assert store.find_messages(ack_token=second.ack_token) == [second]
    assert store.find_messages(ack_token="f" * 32) == []


def test_a_signature_is_remembered_once(store: AnyStore) -> None:
    """The same signed mail sent twice is a replay: the second time the
    store says so and writes nothing."""
    assert store.remember_signature("sig", "A" * 40, AT, AT)
    assert not store.remember_signature("sig", "B" * 40, AT, AT + timedelta(days=1))
    with pytest.raises(StoreError):
        store.remember_signature("", "A" * 40, AT, AT)


def test_an_advisory_may_await_approval(store: AnyStore) -> None:
    """With the two-person rule an advisory is stored awaiting approval and
    reads back so."""
    record = replace(advisory(), state=AdvisoryState.AWAITING_APPROVAL)
    store.add_advisory(record, [], event())
    assert store.get_advisory(record.id) == record
    assert not record.state.is_open


def test_an_atomic_block_inside_another_is_undone_alone(store: AnyStore) -> None:
    """Group commit writes several members' mail in one transaction, each in a
    block of its own: a block that fails leaves nothing of itself, and the
    others in the same transaction are committed."""
    with store.atomic():
        store.add_advisory(advisory(), [], event())
        with pytest.raises(RuntimeError), store.atomic():
            store.add_messages(None, [reply(1)])
            assert store.remember_signature("sig1", "A" * 40, AT, AT)
            raise RuntimeError("this member's mail failed")
        with store.atomic():
            store.add_messages("RSA-2026-0001", [reply(2, "RSA-2026-0001")])
    assert [a.id for a in store.list_advisories()] == ["RSA-2026-0001"]
    assert [m.message_id for m in store.find_messages(kinds=[MessageKind.REPLY])] == [
        "<reply-2@maild.example>"
    ]
    assert store.remember_signature("sig1", "A" * 40, AT, AT)  # the failed block's is gone


def test_group_commit_answers_each_caller_after_one_commit(store: AnyStore) -> None:
    """Submissions ready together share one transaction: each caller gets its
    own result or its own error (its writes undone, the others' kept), and only
    once the batch is committed (a second connection then sees the writes)."""
    commits = GroupCommit(store)

    def add(n: int) -> str:
        store.add_messages(None, [reply(n)])
        if n == 2:
            raise Refused("replay")
        return f"done {n}"

    async def caller(n: int) -> str:
        done = await commits.run(lambda: add(n))
        if isinstance(store, SqliteStore):  # committed: another connection sees it
            other = SqliteStore.open(store.path)
            try:
                assert other.find_messages(envid=f"reply-{n}")
            finally:
                other.close()
        return done

    async def main() -> list[str | BaseException]:
        return await asyncio.gather(*(caller(n) for n in (1, 2, 3)), return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert (first, third) == ("done 1", "done 3")
    assert isinstance(second, Refused)
    assert commits.batches == 1
    assert [m.envid for m in store.find_messages(kinds=[MessageKind.REPLY])] == [
        "reply-1",
        "reply-3",
    ]


def test_group_commit_writes_nothing_of_a_batch_whose_transaction_is_lost(
    store: AnyStore,
) -> None:
    """When SQLite ends the transaction itself (e.g. disk full), no caller of
    that batch is told its mail was taken, and nothing of the batch is stored."""
    commits = GroupCommit(store)

    def add(n: int) -> None:
        store.add_messages(None, [reply(n)])
        if n == 2:
            raise TransactionLost("rolled back")

    async def main() -> list[BaseException | None]:
        runs = (commits.run(lambda n=n: add(n)) for n in (1, 2, 3))  # type: ignore[misc]
        return await asyncio.gather(*runs, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, TransactionLost) for o in outcomes)
    assert store.find_messages(kinds=[MessageKind.REPLY]) == []


class _Flushes(SqliteStore):
    """The real SQLite store, noting what was already answered at each flush
    to disk, and failing the flush on demand."""

    answered: list[str]
    flushed_after: list[list[str]]
    fail: bool = False

    def sync(self) -> None:
        self.flushed_after.append(list(self.answered))
        if self.fail:
            raise StoreError(f"{self.path}: cannot flush the state database to disk: EIO")
        super().sync()


def _flushing_store(path: Path) -> _Flushes:
    plain = SqliteStore.open(path)
    store = _Flushes(plain._conn, plain.path)
    store.answered, store.flushed_after = [], []
    return store


@pytest.mark.parametrize("in_thread", [True, False], ids=["flush-in-thread", "flush-on-loop"])
def test_group_commit_answers_only_after_the_batch_is_flushed_to_disk(
    tmp_path: Path, in_thread: bool
) -> None:
    """No caller hears that its write is done (a 250, a claim that lets a
    message go on the wire) before the batch is flushed to disk, whether
    the flush runs in a thread or on the loop; when the flush fails, every
    caller of the batch gets the error instead."""
    store = _flushing_store(tmp_path / "maild.db")
    # The intake's GroupCommit flushes in a thread; the release's receipts on the loop.
    commits: Batches[int, None] | GroupCommit = (
        GroupCommit(store)
        if in_thread
        else Batches(
            store,
            lambda ns: [store.add_messages(None, [reply(n)]) for n in ns],
            flush_in_thread=False,
        )
    )

    async def caller(n: int) -> None:
        if isinstance(commits, GroupCommit):
            await commits.run(lambda: store.add_messages(None, [reply(n)]))
        else:
            await commits.run(n)
        store.answered.append(f"reply-{n}")

    async def main(*ns: int) -> list[BaseException | None]:
        return await asyncio.gather(*(caller(n) for n in ns), return_exceptions=True)

    try:
        assert asyncio.run(main(1, 2)) == [None, None]
        assert store.flushed_after == [[]]  # one batch, flushed before anyone was answered
        store.fail = True
        store.answered.clear()
        outcomes = asyncio.run(main(3, 4))
        assert all(isinstance(o, StoreError) and "flush" in str(o) for o in outcomes)
        assert store.answered == []
    finally:
        store.close()


def test_writes_outside_group_commit_stay_flushed_at_each_commit(tmp_path: Path) -> None:
    """Only a group commit defers its flush (and does it itself): every
    other write, before or after one, is flushed by SQLite at its commit."""
    store = SqliteStore.open(tmp_path / "maild.db")
    try:

        def synchronous() -> int:
            return int(store._conn.execute("PRAGMA synchronous").fetchone()["synchronous"])

        assert synchronous() == 2  # FULL
        with store.unsynced():
            assert synchronous() == 1  # NORMAL: the caller flushes
            store.add_messages(None, [reply(1)])
            with store.atomic():  # a block inside: still the caller's flush
                store.add_messages(None, [reply(2)])
                assert synchronous() == 1
        store.add_messages(None, [reply(3)])
        assert synchronous() == 2  # set before that write began
        with pytest.raises(RuntimeError), store.unsynced():
            raise RuntimeError("the batch failed")
        with store.atomic():
            assert synchronous() == 2
            store.add_messages(None, [reply(4)])
        with store.unsynced():
            with store.unsynced():  # a block inside another ends: the outer one goes on
                pass
            store.add_messages(None, [reply(5)])
            assert synchronous() == 1
        store.sync()  # the WAL the commit wrote can be flushed
    finally:
        store.close()


def test_flushing_a_closed_store_is_a_clear_error(tmp_path: Path) -> None:
    """A flush that cannot reach the database's write-ahead log says so and
    names the database; it never passes silently."""
    store = SqliteStore.open(tmp_path / "maild.db")
    store.add_messages(None, [reply(1)])
    store.close()  # the last connection: SQLite removes the WAL
    with pytest.raises(StoreError, match=r"maild\.db: cannot flush the state database"):
        store.sync()


# SqliteStore's public methods that write nothing (or only flush what was written).
_NOT_WRITES = {
    "advisories_with_messages_in", "close", "count_messages", "data_version", "events",
    "find_messages", "get_advisory", "get_meta", "list_advisories", "messages", "open",
    "payload", "payload_versions", "payloads", "sync", "unsynced", "verify_history",
}  # fmt: skip


def test_every_kind_of_write_after_a_group_commit_is_flushed_by_sqlite(
    tmp_path: Path,
) -> None:
    """A group commit leaves the connection at synchronous=NORMAL (its caller
    flushes); every other write the store makes, whichever method makes it,
    commits at FULL after one, so it is on disk when the call returns. Each
    public method that writes is tried right after a group commit; a new
    method must be added here or to the list of those that do not write."""
    store = SqliteStore.open(tmp_path / "maild.db")
    mode, commits = ["FULL"], list[str]()

    def trace(sql: str) -> None:
        if sql.startswith("PRAGMA synchronous = "):
            mode[0] = sql.rpartition(" ")[2]
        elif sql == "COMMIT":
            commits.append(mode[0])

    try:
        adv = advisory()
        first, second = message(adv.id, 1), message(adv.id, 2)
        now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
        sending = replace(first, state=MessageState.SENDING, attempts=1)

        def in_atomic() -> None:
            with store.atomic():
                store.set_meta("atomic", "1")

        writes: dict[str, Callable[[], object]] = {
            "add_advisory": lambda: store.add_advisory(adv, [first], event()),
            "update_advisory": lambda: store.update_advisory(replace(adv, version=2), event()),
            "append_event": lambda: store.append_event(event("noted")),
            "add_messages": lambda: store.add_messages(adv.id, [second]),
            "update_messages": lambda: store.update_messages([replace(second, detail="x")]),
            "put_payload": lambda: store.put_payload(first.message_id, 2, b"bytes", now),
            "discard_payloads": lambda: store.discard_payloads([first.message_id]),
            "commit_receipts": lambda: store.commit_receipts([], [(sending, 2)]),
            "remember_signature": lambda: store.remember_signature("sig", "A" * 40, now, now),
            "set_meta": lambda: store.set_meta("name", "value"),
            "atomic": in_atomic,
        }
        public = {n for n in dir(SqliteStore) if not n.startswith("_")} - {"path"}
        assert public - _NOT_WRITES == set(writes)
        store._conn.set_trace_callback(trace)
        for n, (name, write) in enumerate(writes.items()):
            with store.unsynced():
                store.add_messages(None, [reply(n)])
            assert mode == ["NORMAL"]
            commits.clear()
            write()
            assert commits == ["FULL"], name
    finally:
        store._conn.set_trace_callback(None)
        store.close()


def test_a_flush_follows_the_wal_file_now_at_its_path(tmp_path: Path) -> None:
    """The flush to disk opens the WAL once and keeps it; if that file is
    removed or replaced, the next flush opens the file now at the path: it
    never flushes a file that is no longer the database's log."""
    from maild.adapters.store import _WalFile

    path = tmp_path / "maild.db-wal"
    path.write_bytes(b"first")
    wal = _WalFile(path)
    try:
        wal.sync()
        first = wal._fd
        assert first is not None
        wal.sync()
        assert wal._fd == first  # kept between flushes
        (tmp_path / "new").write_bytes(b"second")
        (tmp_path / "new").replace(path)
        wal.sync()
        assert wal._fd is not None
        assert os.fstat(wal._fd).st_ino == os.stat(path).st_ino
        path.unlink()
        with pytest.raises(FileNotFoundError):
            wal.sync()
    finally:
        wal.close()


class _FailingWal:
    """The WAL's flush failing as a dying disk's does (EIO)."""

    def sync(self) -> None:
        raise OSError(5, "Input/output error")

    def close(self) -> None:
        pass


def test_a_failed_flush_to_disk_stops_every_later_write(tmp_path: Path) -> None:
    """After a flush to disk failed, the store refuses every later group
    commit, flush and pass of the daemon (StoreBroken, naming the database):
    the operating system reports such an error once, so a later flush could
    say all is well while the earlier commit is lost."""
    store = SqliteStore.open(tmp_path / "maild.db")
    try:
        with store.unsynced():
            store.add_messages(None, [reply(1)])
        store._wal = _FailingWal()  # type: ignore[assignment]
        with pytest.raises(StoreBroken, match=r"maild\.db: cannot flush .*Input/output"):
            store.sync()
        store._wal = SqliteStore.open(tmp_path / "other.db")._wal  # a healthy disk again
        for refused in (store.sync, store.data_version, lambda: store.unsynced().__enter__()):
            with pytest.raises(StoreBroken, match="must restart"):
                refused()
        assert [m.envid for m in store.find_messages(kinds=[MessageKind.REPLY])] == ["reply-1"]
    finally:
        store.close()


def test_the_daemon_stops_when_its_store_is_broken() -> None:
    """A pass that finds the store broken ends the daemon's loop with the
    error (maild exits non-zero and systemd starts it again), instead of
    retrying every few seconds as after a full disk."""

    class Broken:
        store = SimpleNamespace(data_version=lambda: 0)
        clock = staticmethod(lambda: AT)

        def recover(self) -> int:
            return 0

        async def tick(self) -> None:
            raise StoreBroken("maild.db: cannot flush the state database to disk")

    async def main() -> None:
        await asyncio.wait_for(daemon.serve(Broken(), asyncio.Event()), timeout=10)  # type: ignore[arg-type]

    with pytest.raises(StoreBroken):
        asyncio.run(main())


def test_a_group_commit_stopped_mid_flush_leaves_no_caller_waiting(tmp_path: Path) -> None:
    """When the loop closes while a batch is being flushed, its callers are
    answered with an error that says the write may not be kept; none waits
    for ever and none is told its mail was taken."""
    store = SqliteStore.open(tmp_path / "maild.db")
    commits = GroupCommit(store)
    release = threading.Event()
    plain_sync = store.sync
    store.sync = lambda: (release.wait(10), plain_sync())  # type: ignore[method-assign, assignment, func-returns-value]

    async def main() -> list[BaseException | None]:
        callers = [
            asyncio.ensure_future(commits.run(lambda n=n: store.add_messages(None, [reply(n)])))  # type: ignore[misc]
            for n in (1, 2)
        ]
        while commits._writer is None or commits.batches == 0:
            await asyncio.sleep(0)
        commits._writer.cancel()
        release.set()
        return await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 10)

    try:
        outcomes = asyncio.run(main())
        assert all(isinstance(o, StoreError) and "before its flush" in str(o) for o in outcomes)
    finally:
        store.close()


def test_a_symlinked_database_is_flushed_where_sqlite_writes_it(tmp_path: Path) -> None:
    """A state database reached through a symlink (a data volume mounted
    elsewhere) takes group commits: the flush finds the write-ahead log
    beside the real file, where SQLite keeps it."""
    real = tmp_path / "volume" / "maild.db"
    store = SqliteStore.open(real)
    store.close()
    link = tmp_path / "state" / "maild.db"
    link.parent.mkdir()
    link.symlink_to(real)
    store = SqliteStore.open(link)
    commits = GroupCommit(store)
    try:
        asyncio.run(commits.run(lambda: store.add_messages(None, [reply(1)])))
        assert (tmp_path / "volume" / "maild.db-wal").exists()
        assert not (tmp_path / "state" / "maild.db-wal").exists()
    finally:
        store.close()


def test_an_unsynced_block_inside_a_transaction_is_refused(store: AnyStore) -> None:
    """A group commit's block may not run inside another transaction: its
    commit would be the outer block's, flushed (or not) after its callers
    were told it is on disk. Both stores refuse it and write nothing."""
    with pytest.raises(StoreError, match="inside a transaction"), store.atomic():
        store.add_messages(None, [reply(1)])
        with store.unsynced():
            store.add_messages(None, [reply(2)])
    assert store.find_messages(kinds=[MessageKind.REPLY]) == []
    with store.unsynced():
        store.add_messages(None, [reply(3)])
    assert [m.envid for m in store.find_messages(kinds=[MessageKind.REPLY])] == ["reply-3"]
