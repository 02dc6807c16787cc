"""Business-day arithmetic in a calendar time zone (pure; no clock)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class BusinessCalendar:
    """Which local dates count as business days, and in which time zone.

    `weekend` holds weekday numbers (Monday is 0). At least one weekday must
    stay a business day; the config loader enforces that with a clear error,
    and the constructor refuses it too so no caller can loop forever.
    """

    timezone: str = "UTC"
    weekend: frozenset[int] = frozenset({5, 6})
    holidays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if len(self.weekend) >= 7:
            raise ValueError("the weekend cannot cover all seven days")
        ZoneInfo(self.timezone)  # raises for an unknown zone

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_business_day(self, day: date) -> bool:
        return day.weekday() not in self.weekend and day not in self.holidays

    def local(self, instant: datetime) -> datetime:
        """The instant as wall-clock time in the calendar's zone."""
        # Through UTC: astimezone() to the same tzinfo object returns the
        # datetime unchanged, which would leave a DST-gap wall time as it is.
        return instant.astimezone(UTC).astimezone(self.zone)

    def count_back(self, day: date, n: int) -> date:
        """The n-th business day before `day` (`day` itself never counts)."""
        counted = 0
        while counted < n:
            day -= timedelta(days=1)
            if self.is_business_day(day):
                counted += 1
        return day

    def business_days_between(self, start: date, end: date) -> int:
        """Business days in [start, end): start counts, end does not."""
        return sum(1 for d in _days(start, end) if self.is_business_day(d))

    def at_local(self, day: date, wall: time) -> datetime:
        """`wall` on `day` in the calendar zone, normalised to a real instant.

        A wall time in a DST gap is read with the offset in force before the
        gap (02:30 becomes 03:30 summer time); a wall time that happens twice
        means its first occurrence. Both are what `fold=0` gives.
        """
        naive = datetime.combine(day, wall.replace(tzinfo=None, fold=0))
        return self.local(naive.replace(tzinfo=self.zone))


def _days(start: date, end: date) -> Iterable[date]:
    day = start
    while day < end:
        yield day
        day += timedelta(days=1)
