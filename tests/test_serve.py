"""The daemon's loop (`serve`): how long it may sleep, whatever the wall
clock does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from maild.service import daemon
from maild.service.clock import ManualClock


class Passes:
    """Stands in for the dispatcher: counts passes and stops after `until`."""

    def __init__(self, clock: ManualClock, stop: asyncio.Event, until: int) -> None:
        self.clock, self.stop, self.until = clock, stop, until
        self.store = SimpleNamespace(data_version=lambda: 0)
        self.passes = 0

    def recover(self) -> int:
        return 0

    async def tick(self) -> datetime | None:
        self.passes += 1
        if self.passes >= self.until:
            self.stop.set()
        return None  # nothing due: sleep as long as the loop allows


def test_a_clock_stepped_back_does_not_stretch_the_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop wakes at least every MAX_SLEEP even when the wall clock is
    stepped back an hour while it sleeps (it would otherwise sleep an hour,
    and a CLI-less change such as a key expiring would wait that long)."""
    monkeypatch.setattr(daemon, "MAX_SLEEP", timedelta(milliseconds=50))
    clock = ManualClock(datetime(2026, 12, 1, 12, tzinfo=UTC))

    async def main() -> int:
        stop = asyncio.Event()
        passes = Passes(clock, stop, until=2)

        def step_back() -> None:
            clock.now -= timedelta(hours=1)

        asyncio.get_running_loop().call_later(0.01, step_back)
        await asyncio.wait_for(daemon.serve(passes, stop), timeout=10)  # type: ignore[arg-type]
        return passes.passes

    assert asyncio.run(main()) == 2
