"""Group commit: writes that become ready together share one transaction.

The intake's transaction ends with an fsync'd COMMIT (`synchronous=FULL`),
the largest single cost of a submission. Callers hand `run()` the work of
one transaction; everything handed in while the event loop runs one
iteration is written in one outer transaction, each caller's work in its own
savepoint (an atomic block inside the outer one), so one that raises is
undone alone and gets its own exception. Every caller is answered only after
the COMMIT; if the COMMIT (or SQLite itself) fails, every caller of that
batch gets the error and nothing of it was written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from maild.service.ports import TransactionLost

T = TypeVar("T")


class GroupCommit:
    """Runs transaction bodies in batches on the event loop's thread."""

    def __init__(self, atomic: Callable[[], AbstractContextManager[None]]) -> None:
        self._atomic = atomic  # the store's atomic(): a transaction, or nested a savepoint
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self.batches = 0  # transactions committed or attempted (for tests and benchmarks)

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` inside a transaction; returns (or raises) what it did, once
        its transaction is committed (or raised, and nothing of it written)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((work, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        batch = [(work, future) for work, future in batch if not future.cancelled()]
        if not batch:
            return
        self.batches += 1
        outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []
        try:
            with self._atomic():
                for work, future in batch:
                    try:
                        with self._atomic():
                            outcomes.append((future, None, work()))
                    except TransactionLost:
                        raise
                    except Exception as exc:  # this caller's own failure; the rest go on
                        outcomes.append((future, exc, None))
        except Exception as exc:  # nothing of the batch was written
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, error, value in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
