"""Group commit: writes that become ready together share one transaction.

An fsync'd COMMIT is the largest single cost of a member's submission (the
intake) and of each message of a release (its receipt). Callers hand in
their write; everything handed in while the previous batch is being written
goes in the next batch, one transaction for the whole batch.

The COMMIT itself is written without its fsync (`Store.unsynced`), and the
fsync (`Store.sync`) follows it: in a thread (the default), so the event
loop goes on serving other connections meanwhile, or on the loop itself
(`flush_in_thread=False`). Every caller is answered only after that fsync:
nobody is told of, or acts on, a commit that is not on disk. If the COMMIT,
the fsync or SQLite itself fails, every caller of that batch gets the error
(and after a failed COMMIT nothing of the batch was written).

Why both: a hand-off to a thread and back costs two wake-ups, each of an
idle CPU on a virtual machine, and the GIL to be taken back. The release's
receipts flush on the loop: each sender waits for the claim of its next
message before sending it, so while a batch flushes the release itself has
nothing else to do, and it ran about 8% faster that way (bench/README.md).
The price is that everything else on the loop (intake connections, the
watchdog ping) waits for that fsync too: a fraction of a millisecond on a
healthy disk, up to two when an intake flush holds the WAL's descriptor in
its thread; a disk that stalls for longer than the watchdog allows gets
maild restarted, which loses nothing (a claim is on disk before its send,
and `recover()` resends what was `sending`). A submission's fsync stays in a
thread: twenty clients' SMTP dialogues go on meanwhile.

Two kinds: `GroupCommit` runs each caller's work in its own savepoint, so
one that raises is undone alone and gets its own exception (the intake);
`Batches` hands the whole batch to one function that writes it (receipts).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from maild.service.ports import Store, StoreError, TransactionLost

T = TypeVar("T")
In = TypeVar("In")
Out = TypeVar("Out")


class Batches(Generic[In, Out]):
    """Items handed to `run()` while a batch is being written are written
    together by `write` (in one transaction, inside it), which returns one
    answer per item, in order: the item's result, or an exception for that
    caller alone."""

    def __init__(
        self,
        store: Store,
        write: Callable[[Sequence[In]], Sequence[Out | BaseException]],
        *,
        flush_in_thread: bool = True,
    ) -> None:
        self._store = store
        self._write_batch = write
        self._flush_in_thread = flush_in_thread
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed or attempted (for tests and benchmarks)

    async def run(self, item: In) -> Out:
        """Write `item`; returns (or raises) what was written for it, once its
        transaction is committed and on disk (or raised, and nothing of it
        written)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._pending.append((item, future))
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        return await future

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Out]] = []
        try:
            await asyncio.sleep(0)  # let the writes that are ready now join this batch
            while self._pending:
                batch, self._pending = self._pending, []
                batch = [(item, future) for item, future in batch if not future.done()]
                if not batch:
                    continue
                self.batches += 1
                futures = [future for _, future in batch]
                try:
                    answers = self._commit([item for item, _ in batch])
                    if self._flush_in_thread:
                        await loop.run_in_executor(None, self._store.sync)
                    else:
                        self._store.sync()
                except Exception as exc:  # the batch is not (or not surely) on disk
                    answers = [exc] * len(batch)
                for future, answer in zip(futures, answers, strict=True):
                    if future.done():
                        continue
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._writer = None
            # Cancelled (the loop is closing) or failed unexpectedly: nobody
            # waits for ever, and nobody is told that a write was kept.
            stranded = [f for f in futures if not f.done()]
            stranded += [f for _, f in self._pending if not f.done()]
            self._pending = []
            for future in stranded:
                future.set_exception(
                    StoreError("the group commit stopped before its flush to disk")
                )

    def _commit(self, items: Sequence[In]) -> Sequence[Out | BaseException]:
        """One transaction for the batch, committed without its fsync."""
        with self._store.unsynced(), self._store.atomic():
            return self._write_batch(items)


class GroupCommit(Batches[Callable[[], Any], Any]):
    """Runs transaction bodies in batches on the event loop's thread, each in
    its own savepoint (an atomic block inside the batch's transaction)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, self._each)

    async def run(self, item: Callable[[], T]) -> T:
        """`item()` inside a transaction; returns (or raises) what it did, once
        its transaction is committed and on disk (or raised, and nothing of it
        written)."""
        result: T = await super().run(item)
        return result

    def _each(self, works: Sequence[Callable[[], Any]]) -> list[Any]:
        answers: list[Any] = []
        for work in works:
            try:
                with self._store.atomic():
                    answers.append(work())
            except TransactionLost:
                raise
            except Exception as exc:  # this caller's own failure; the rest go on
                answers.append(exc)
        return answers
