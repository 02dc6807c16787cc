"""Where maild gets the time. `maild run` only ever uses `system_clock`; the
hand-moved `ManualClock` drives the demo, the tests and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class ManualClock:
    """A clock that says what it is told (never used by `maild run`)."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now
