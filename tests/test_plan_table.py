"""`maild plan --json` on a table of hand-computed cases: every tier, weekend
disclosures, holiday runs, DST in two zones, a Friday/Saturday weekend, and
each override. Every expected time below was worked out on a calendar."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI

UTC_CAL = ""
HOLIDAYS = "[calendar]\nholidays = [2026-12-24, 2026-12-25, 2026-12-31, 2027-01-01]\n"
BERLIN = '[calendar]\ntimezone = "Europe/Berlin"\n'
NEW_YORK = '[calendar]\ntimezone = "America/New_York"\n'
BERLIN_FRI_SAT = '[calendar]\ntimezone = "Europe/Berlin"\nweekend = ["fri", "sat"]\n'
UTC_FRI_SAT = '[calendar]\nweekend = ["fri", "sat"]\n'

CE = ["--severity", "critical", "--exploited"]

# (name, calendar, args, notify_at, business_days)
CASES = [
    (
        "high, Tuesday",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z"],
        "2026-12-01T17:00:00+00:00",
        5,
    ),
    (
        "low exploited is still 5 days",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--severity", "low", "--exploited"],
        "2026-12-01T17:00:00+00:00",
        5,
    ),
    (
        "critical not exploited",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--severity", "critical"],
        "2026-12-01T17:00:00+00:00",
        5,
    ),
    (
        "critical exploited: 1 day",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", *CE],
        "2026-12-07T17:00:00+00:00",
        1,
    ),
    (
        "critical exploited on Monday: back to Friday",
        UTC_CAL,
        ["--disclosure", "2026-12-14T09:00:00Z", *CE],
        "2026-12-11T09:00:00+00:00",
        1,
    ),
    (
        "critical exploited, no toolchain update: none",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", *CE, "--no-toolchain-update"],
        None,
        None,
    ),
    (
        "no toolchain update alone changes nothing",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--no-toolchain-update"],
        "2026-12-01T17:00:00+00:00",
        5,
    ),
    (
        "crate: none",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--category", "crate"],
        None,
        None,
    ),
    (
        "infrastructure: none",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--category", "infrastructure"],
        None,
        None,
    ),
    (
        "other, even critical exploited: none",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--category", "other", *CE],
        None,
        None,
    ),
    (
        "Saturday disclosure",
        UTC_CAL,
        ["--disclosure", "2026-12-12T10:00:00Z"],
        "2026-12-07T10:00:00+00:00",
        5,
    ),
    (
        "Sunday disclosure",
        UTC_CAL,
        ["--disclosure", "2026-12-13T10:00:00Z"],
        "2026-12-07T10:00:00+00:00",
        5,
    ),
    (
        "local date in the calendar zone, not the given offset",
        UTC_CAL,
        ["--disclosure", "2026-12-08T00:30:00+01:00"],
        "2026-11-30T23:30:00+00:00",
        5,
    ),
    (
        "holiday run over Christmas and New Year",
        HOLIDAYS,
        ["--disclosure", "2027-01-05T15:00:00Z"],
        "2026-12-23T15:00:00+00:00",
        5,
    ),
    (
        "holiday before a critical exploited disclosure",
        HOLIDAYS,
        ["--disclosure", "2027-01-04T15:00:00Z", *CE],
        "2026-12-30T15:00:00+00:00",
        1,
    ),
    (
        "Berlin, notice in summer time, disclosure in winter time",
        BERLIN,
        ["--disclosure", "2026-10-29T17:00:00+01:00"],
        "2026-10-22T17:00:00+02:00",
        5,
    ),
    (
        "Berlin, notice in winter time, disclosure in summer time",
        BERLIN,
        ["--disclosure", "2026-04-02T17:00:00+02:00"],
        "2026-03-26T17:00:00+01:00",
        5,
    ),
    (
        "New York, spring forward between",
        NEW_YORK,
        ["--disclosure", "2026-03-10T09:00:00-04:00"],
        "2026-03-03T09:00:00-05:00",
        5,
    ),
    (
        "New York, fall back between",
        NEW_YORK,
        ["--disclosure", "2026-11-04T12:00:00-05:00"],
        "2026-10-28T12:00:00-04:00",
        5,
    ),
    (
        "notice wall time in the DST gap reads as summer time",
        BERLIN_FRI_SAT,
        ["--disclosure", "2026-03-30T02:30:00+02:00", *CE],
        "2026-03-29T03:30:00+02:00",
        1,
    ),
    (
        "notice wall time in the DST fold is the first one",
        BERLIN_FRI_SAT,
        ["--disclosure", "2026-10-26T02:30:00+01:00", *CE],
        "2026-10-25T02:30:00+02:00",
        1,
    ),
    (
        "Friday/Saturday weekend",
        UTC_FRI_SAT,
        ["--disclosure", "2026-12-13T10:00:00Z"],
        "2026-12-06T10:00:00+00:00",
        5,
    ),
    (
        "Friday/Saturday weekend, Berlin, Sunday counts",
        BERLIN_FRI_SAT,
        ["--disclosure", "2026-04-02T17:00:00+02:00"],
        "2026-03-26T17:00:00+01:00",
        5,
    ),
    (
        "notify_days 7 with approval sends earlier",
        UTC_CAL,
        [
            "--disclosure",
            "2026-12-08T17:00:00Z",
            "--notify-days",
            "7",
            "--reporter-approval",
            "mail of 2026-11-20",
        ],
        "2026-11-27T17:00:00+00:00",
        7,
    ),
    (
        "notify_days 3 changes nothing",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--notify-days", "3", "--reporter-approval", "ok"],
        "2026-12-01T17:00:00+00:00",
        5,
    ),
    (
        "notify_not_before pushes the notice later",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--notify-not-before", "2026-12-03T09:00:00Z"],
        "2026-12-03T09:00:00+00:00",
        3,
    ),
    (
        "notify_not_before on a Saturday counts from the next business day",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--notify-not-before", "2026-12-05T09:00:00Z"],
        "2026-12-05T09:00:00+00:00",
        1,
    ),
    (
        "notify_not_before earlier than the policy changes nothing",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--notify-not-before", "2026-11-01T00:00:00Z"],
        "2026-12-01T17:00:00+00:00",
        5,
    ),
    (
        "notify_not_before at disclosure: no advance notice",
        UTC_CAL,
        ["--disclosure", "2026-12-08T17:00:00Z", "--notify-not-before", "2026-12-08T17:00:00Z"],
        None,
        None,
    ),
    (
        "plan works for a past disclosure too",
        UTC_CAL,
        ["--disclosure", "2020-01-07T12:00:00Z"],
        "2019-12-31T12:00:00+00:00",
        5,
    ),
]


@pytest.mark.parametrize(
    ("calendar", "args", "notify_at", "days"),
    [pytest.param(c, a, n, d, id=name) for name, c, a, n, d in CASES],
)
def test_plan_json_matches_hand_computed_table(
    cli: CLI,
    write: Callable[[str, str], Path],
    calendar: str,
    args: list[str],
    notify_at: str | None,
    days: int | None,
) -> None:
    """An operator asking `maild plan --json` gets the notice time, the
    pre-announcement at the same instant, and the business days of notice
    that the policy gives, in the calendar's zone."""
    config = ["--config", str(write("maild.toml", calendar))] if calendar else []
    result = cli(*config, "plan", *args, "--json")
    assert result.code == 0, result.err
    doc = result.json()
    assert set(doc) == {"disclose_at", "notify_at", "preannounce_at", "business_days", "reason"}
    assert doc["notify_at"] == notify_at
    assert doc["preannounce_at"] == notify_at
    assert doc["business_days"] == days
    assert doc["reason"]


def test_plan_without_config_uses_utc_and_saturday_sunday(cli: CLI) -> None:
    """`maild plan` works with no config file at all: UTC, sat/sun weekend."""
    result = cli("plan", "--disclosure", "2026-12-08T17:00:00+01:00", "--json")
    assert result.code == 0, result.err
    assert result.json()["disclose_at"] == "2026-12-08T16:00:00+00:00"
    assert result.json()["notify_at"] == "2026-12-01T16:00:00+00:00"


def test_plan_human_output_names_zone_and_days(cli: CLI, write: Callable[[str, str], Path]) -> None:
    """Without --json the plan is a readable block with zone names."""
    cfg = write("maild.toml", BERLIN)
    result = cli("--config", str(cfg), "plan", "--disclosure", "2026-12-08T17:00:00+01:00")
    assert result.code == 0
    assert "Tue 2026-12-01 17:00 CET" in result.out
    assert "5 business days before" in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--disclosure", "2026-12-08T17:00:00"], "has no time zone"),
        (["--disclosure", "next tuesday"], "is not an ISO 8601"),
        (["--disclosure", "2026-12-08T17:00:00Z", "--notify-days", "7"], "reporter_approval"),
        (
            [
                "--disclosure",
                "2026-12-08T17:00:00Z",
                "--notify-days",
                "0",
                "--reporter-approval",
                "ok",
            ],
            "notify_days: must be a whole number of business days from 1 to 60",
        ),
        (
            [
                "--disclosure",
                "2026-12-08T17:00:00Z",
                "--notify-days",
                "1000000",
                "--reporter-approval",
                "ok",
            ],
            "notify_days",
        ),
        (["--disclosure", "0001-01-03T00:00:00Z"], "outside the dates maild can plan"),
        (["--disclosure", "9999-12-31T23:00:00-05:00"], "outside the dates maild can plan"),
        (["--disclosure", "2026-12-08T17:00:00Z", "--severity", "urgent"], "--severity"),
        (["--disclosure", "2026-12-08T17:00:00Z", "--category", "crates"], "--category"),
    ],
)
def test_plan_bad_input_exits_2_with_one_clear_line(
    cli: CLI, args: list[str], message: str
) -> None:
    """Bad plan input gets exit 2 and a message naming the problem, no traceback."""
    result = cli("plan", *args)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err
