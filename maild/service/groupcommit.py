"""Group commit: writes that become ready together share one transaction.

An fsync'd COMMIT is the largest single cost of a member's submission (the
intake) and of each message of a release (its receipt). Callers hand `run()`
the work of one transaction; everything handed in while the previous batch
is being written is written in the next outer transaction, each caller's
work in its own savepoint (an atomic block inside the outer one), so one
that raises is undone alone and gets its own exception.

The COMMIT itself is written without its fsync (`Store.unsynced`), and the
fsync (`Store.sync`) runs in a thread, so the event loop goes on serving
other connections meanwhile. Every caller is answered only after that
fsync: nobody is told of, or acts on, a commit that is not on disk. If the
COMMIT, the fsync or SQLite itself fails, every caller of that batch gets
the error (and after a failed COMMIT nothing of the batch was written).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from maild.service.ports import Store, TransactionLost

T = TypeVar("T")


class GroupCommit:
    """Runs transaction bodies in batches on the event loop's thread."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed or attempted (for tests and benchmarks)

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` inside a transaction; returns (or raises) what it did, once
        its transaction is committed and on disk (or raised, and nothing of it
        written)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, future))
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        return await future

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0)  # let the work that is ready now join this batch
            while self._pending:
                batch, self._pending = self._pending, []
                batch = [(work, future) for work, future in batch if not future.done()]
                if not batch:
                    continue
                self.batches += 1
                try:
                    outcomes = self._commit(batch)
                    await loop.run_in_executor(None, self._store.sync)
                except Exception as exc:  # the batch is not (or not surely) on disk
                    _answer([(future, exc, None) for _, future in batch])
                    continue
                _answer(outcomes)
        finally:
            self._writer = None

    def _commit(
        self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]
    ) -> list[tuple[asyncio.Future[Any], BaseException | None, Any]]:
        """One transaction for the batch, each caller's work in a savepoint."""
        outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []
        with self._store.unsynced(), self._store.atomic():
            for work, future in batch:
                try:
                    with self._store.atomic():
                        outcomes.append((future, None, work()))
                except TransactionLost:
                    raise
                except Exception as exc:  # this caller's own failure; the rest go on
                    outcomes.append((future, exc, None))
        return outcomes


def _answer(outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]]) -> None:
    for future, error, value in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
