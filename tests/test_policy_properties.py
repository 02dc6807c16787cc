"""Invariants of the notification policy, over random calendars and times."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maild.domain.businessdays import BusinessCalendar
from maild.domain.policy import (
    Category,
    PolicyError,
    PolicyInput,
    Severity,
    plan,
    required_days,
)

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Asia/Kolkata",
    "Pacific/Apia",  # DST until 2021
    "America/Sao_Paulo",
]

calendars = st.builds(
    BusinessCalendar,
    timezone=st.sampled_from(ZONES),
    weekend=st.frozensets(st.integers(0, 6), max_size=5),
    holidays=st.frozensets(
        st.dates(min_value=date(2010, 1, 1), max_value=date(2030, 12, 31)), max_size=40
    ),
)
instants = st.datetimes(
    min_value=datetime(2012, 1, 1), max_value=datetime(2030, 12, 1), timezones=st.just(UTC)
)
rules = st.builds(
    PolicyInput,
    disclosure=instants,
    severity=st.sampled_from(Severity),
    exploited=st.booleans(),
    toolchain_update=st.booleans(),
    category=st.sampled_from(Category),
)


def _exists(local: datetime) -> bool:
    """Whether a zone-aware wall time really occurs (is not in a DST gap)."""
    tz = local.tzinfo
    assert tz is not None
    back = local.astimezone(UTC).astimezone(tz)
    return back.replace(tzinfo=None) == local.replace(tzinfo=None)


@settings(max_examples=400, deadline=None)
@given(rules, calendars)
def test_notice_is_strictly_before_disclosure_with_exactly_n_business_days(
    r: PolicyInput, cal: BusinessCalendar
) -> None:
    """Whenever there is a notice, it comes strictly before disclosure, on a
    business day, with exactly the tier's N business days in between."""
    result = plan(r, cal)
    n = required_days(r)
    if n is None:
        assert result.notify_at is None and result.preannounce_at is None
        assert result.business_days is None
        return
    assert result.notify_at is not None
    assert result.notify_at < result.disclose_at
    notice_day = cal.local(result.notify_at).date()
    assert cal.is_business_day(notice_day)
    assert cal.business_days_between(notice_day, cal.local(result.disclose_at).date()) == n
    assert result.business_days == n
    assert result.preannounce_at == result.notify_at


@settings(max_examples=400, deadline=None)
@given(rules, calendars)
def test_local_wall_clock_time_is_kept(r: PolicyInput, cal: BusinessCalendar) -> None:
    """The notice keeps the disclosure's local time of day, except where that
    time does not exist on the notice day (a DST gap), where it moves forward
    by the gap."""
    result = plan(r, cal)
    if result.notify_at is None:
        return
    wanted = cal.local(result.disclose_at).time()
    got = cal.local(result.notify_at)
    if got.time() != wanted:
        intended = datetime.combine(got.date(), wanted).replace(tzinfo=ZoneInfo(cal.timezone))
        assert not _exists(intended)
        shift = got.replace(tzinfo=None) - intended.replace(tzinfo=None)
        assert timedelta(0) < shift <= timedelta(hours=2)


@settings(max_examples=300, deadline=None)
@given(rules, calendars)
def test_no_weekend_or_holiday_is_ever_counted(r: PolicyInput, cal: BusinessCalendar) -> None:
    """Every day between notice and disclosure that is a weekend day or a
    holiday adds to the gap instead of counting as notice."""
    result = plan(r, cal)
    if result.notify_at is None:
        return
    day = cal.local(result.notify_at).date()
    end = cal.local(result.disclose_at).date()
    counted = 0
    while day < end:
        if day.weekday() in cal.weekend or day in cal.holidays:
            assert not cal.is_business_day(day)
        else:
            counted += 1
        day += timedelta(days=1)
    assert counted == result.business_days


@settings(max_examples=200, deadline=None)
@given(rules, calendars, st.integers(1, 30))
def test_notify_days_never_sends_later(r: PolicyInput, cal: BusinessCalendar, k: int) -> None:
    """notify_days with approval only ever moves the notice earlier."""
    base = plan(r, cal)
    extra = plan(PolicyInput(**{**r.__dict__, "notify_days": k, "reporter_approval": "yes"}), cal)
    if base.notify_at is None:
        assert extra.notify_at is None
        return
    assert extra.notify_at is not None
    assert extra.notify_at <= base.notify_at
    assert extra.business_days == max(k, required_days(r) or 0)


def test_send_now_when_notice_time_already_past() -> None:
    """An advisory accepted after its notice time is sent now, and the plan
    says how many business days of notice remain."""
    cal = BusinessCalendar()
    r = PolicyInput(disclosure=datetime(2026, 12, 8, 17, tzinfo=UTC), severity=Severity.HIGH)
    now = datetime(2026, 12, 4, 9, 15, tzinfo=UTC)  # Friday
    result = plan(r, cal, now)
    assert result.notify_at == now
    assert result.preannounce_at == now
    assert result.business_days == 2  # Friday and Monday
    assert "send now" in result.reason


def test_future_notice_time_is_untouched_by_now() -> None:
    """Accepting an advisory early leaves the policy's notice time alone."""
    cal = BusinessCalendar()
    r = PolicyInput(disclosure=datetime(2026, 12, 8, 17, tzinfo=UTC), severity=Severity.HIGH)
    assert plan(r, cal, datetime(2026, 11, 24, tzinfo=UTC)) == plan(r, cal)


def test_accepting_after_disclosure_is_refused() -> None:
    """A disclosure already past at acceptance cannot be planned."""
    cal = BusinessCalendar()
    r = PolicyInput(disclosure=datetime(2026, 12, 8, 17, tzinfo=UTC), severity=Severity.HIGH)
    with pytest.raises(PolicyError, match="already past"):
        plan(r, cal, datetime(2026, 12, 9, tzinfo=UTC))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"notify_days": 7}, "reporter_approval"),
        ({"notify_days": 7, "reporter_approval": "  "}, "reporter_approval"),
        ({"notify_days": 0, "reporter_approval": "ok"}, "from 1 to 60"),
        ({"notify_days": 61, "reporter_approval": "ok"}, "from 1 to 60"),
        ({"disclosure": datetime(2026, 12, 8, 17)}, "no time zone"),
    ],
)
def test_policy_inputs_are_validated(kwargs: dict[str, object], message: str) -> None:
    """Inputs the RFC forbids are refused with a message naming the field."""
    base: dict[str, object] = {
        "disclosure": datetime(2026, 12, 8, 17, tzinfo=UTC),
        "severity": Severity.HIGH,
    }
    with pytest.raises(PolicyError, match=message):
        PolicyInput(**{**base, **kwargs})  # type: ignore[arg-type]


def test_calendar_refuses_a_seven_day_weekend() -> None:
    """A calendar with no business day at all is refused, never looped on."""
    with pytest.raises(ValueError, match="seven"):
        BusinessCalendar(weekend=frozenset(range(7)))
