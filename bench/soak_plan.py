"""The soak's script: what happens when in the simulated week, drawn from a seeded
random generator so a run can be repeated (`--seed`).

Times are instants on the soak's clock. The week starts on Monday 2030-03-25 00:00 in
Europe/Berlin, so it holds the switch to summer time (Sunday 31st, 02:00 -> 03:00).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from bench.soak_world import ZONE

START = datetime(2030, 3, 25, tzinfo=ZoneInfo(ZONE))
ADHOC = "x-adhoc"  # an ad hoc organisation some advisories name in extra_recipients
BODY = (
    "# Details\n\nA use-after-free in the frobnicator lets a crafted input write past the "
    "end of a buffer.\n\n{marker}\n\n## Affected versions\n\nAll versions before 1.2.3.\n"
)
LOCAL_TIMES = (time(9), time(14), time(17), time(17), time(2, 30), time(23, 45))


@dataclass(frozen=True)
class AdvisorySpec:
    """One advisory as the soak submits it. `marker` and `title` are secret until
    disclosure: neither may appear in clear in anything but the disclosure."""

    id: str
    text: str
    marker: str
    title: str
    extra: tuple[str, ...]


@dataclass(frozen=True, order=True)
class Event:
    """One thing that happens at `at`. `what` is one of: submit, reschedule, cancel,
    disclose-now (on `advisory`); restart; remove-org, rekey-org, add-org (then a
    restart); crash (arm a crash after `arg` messages of the next release); back
    (after the next tick that sends anything, step the clock back by `arg`); forward
    (step the clock forward by `arg`)."""

    at: datetime
    order: int
    what: str = field(compare=False)
    advisory: str | None = field(default=None, compare=False)
    arg: object = field(default=None, compare=False)


@dataclass
class Script:
    events: list[Event]
    advisories: dict[str, AdvisorySpec]
    expiring_org: int  # index of the org whose key expires mid-week
    expires: str  # that key's expiry (a date gpg understands)


def make_script(
    rng: random.Random, advisories: int, orgs: int, days: int, restarts: int, crashes: int
) -> Script:
    events: list[Event] = []
    specs: dict[str, AdvisorySpec] = {}
    week = timedelta(days=days)

    def at(fraction: float) -> datetime:
        return START + week * fraction

    def add(when: datetime, what: str, advisory: str | None = None, arg: object = None) -> None:
        when = when.replace(second=0, microsecond=0)
        events.append(Event(when, len(events), what, advisory, arg))

    forward_at = at(0.55).replace(second=0, microsecond=0)
    for n in range(1, advisories + 1):
        submit_at = at(rng.uniform(0.0, 0.85))
        window = None
        if n == advisories:  # notice and disclosure both in the day the clock skips
            submit_at = forward_at - timedelta(hours=20)
            window = (forward_at + timedelta(hours=2), forward_at + timedelta(hours=6))
        spec, disclosure = _advisory(rng, n, submit_at, window)
        specs[spec.id] = spec
        add(submit_at, "submit", spec.id, spec)
        _changes(rng, add, spec.id, submit_at, disclosure)

    # The orgs list: removals, key changes, a new member (each followed by a restart),
    # and one org whose key expires mid-week.
    chosen = rng.sample(range(orgs), k=min(orgs, 5))
    expiring, chosen = chosen[0], chosen[1:]
    changes = [("remove-org", 0.23), ("rekey-org", 0.34), ("remove-org", 0.52)]
    changes += [("rekey-org", 0.61)]
    for (what, fraction), index in zip(changes, chosen, strict=False):
        add(at(fraction + rng.uniform(-0.03, 0.03)), what, arg=index)
    add(at(0.47 + rng.uniform(-0.03, 0.03)), "add-org")
    for _ in range(restarts):
        add(at(rng.uniform(0.02, 0.98)), "restart")
    for i in range(crashes):  # spread over the week; each hits the next release
        fraction = (i + 0.5) / crashes * 0.9 + rng.uniform(-0.05, 0.05)
        add(at(fraction), "crash", arg=rng.randint(1, 40))
    # Clock steps: back an hour (twice, each right after a release), forward a day.
    add(at(0.2), "back", arg=timedelta(hours=1))
    add(forward_at, "forward", arg=timedelta(days=1))
    add(at(0.75), "back", arg=timedelta(hours=1))
    events.sort()
    expires = (START + week * 0.4).date().isoformat()  # gpg: noon UTC that day
    return Script(events, specs, expiring, expires)


def _advisory(
    rng: random.Random,
    n: int,
    submit_at: datetime,
    window: tuple[datetime, datetime] | None = None,
) -> tuple[AdvisorySpec, datetime]:
    """A varied advisory: tier, severity, overrides, pre-announcement kind. With
    `window`, its notice is held back to the first instant and it is disclosed at
    the second."""
    token = f"{rng.getrandbits(48):012x}"
    marker, title = f"SOAK-SECRET-{token}", f"Frobnicator overflow SOAK-TITLE-{token}"
    roll = rng.random()
    rules: list[str] = []
    severity = rng.choice(["low", "medium", "high"])
    if roll < 0.5:  # the normal tier: 5 business days
        days = rng.uniform(1.5, 11)
    elif roll < 0.65:  # critical and exploited: 1 business day
        severity, days = "critical", rng.uniform(0.3, 4)
        rules.append("exploited = true")
    elif roll < 0.73:  # no advance notice at all
        days = rng.uniform(0.2, 5)
        if rng.random() < 0.5:
            rules.append(f'category = "{rng.choice(["crate", "infrastructure"])}"')
        else:
            severity = "critical"
            rules += ["exploited = true", "toolchain_update = false"]
    elif roll < 0.88:  # the reporter's embargo terms hold the notice back
        days = rng.uniform(3, 9)
        not_before = submit_at + timedelta(days=rng.uniform(0.5, 3))
        rules.append(f"notify_not_before = {not_before.replace(microsecond=0).isoformat()}")
    else:  # earlier notice, with the reporter's approval
        days = rng.uniform(5, 13)
        rules += ["notify_days = 7", 'reporter_approval = "the reporter agreed by mail"']
    day = (submit_at + timedelta(days=days)).date()
    disclosure = datetime.combine(day, rng.choice(LOCAL_TIMES), tzinfo=submit_at.tzinfo)
    if disclosure <= submit_at + timedelta(hours=2):
        disclosure = submit_at + timedelta(hours=rng.uniform(3, 30))
    if window is not None:
        severity, disclosure = "high", window[1]
        rules = [f"notify_not_before = {window[0].isoformat()}"]
    disclosure = disclosure.replace(second=0, microsecond=0)
    extra = (ADHOC,) if rng.random() < 0.1 else ()
    preannounce = rng.choices(["full", "minimal", "none"], weights=[8, 1, 1])[0]
    advisory_id = f"SOAK-{n:03d}"
    front = [
        f'id = "{advisory_id}"',
        f'title = "{title}"',
        f"disclosure = {disclosure.isoformat()}",
        f'severity = "{severity}"',
        'component = "standard library"',
        f'cve = ["CVE-2030-{1000 + n}"]',
        f'preannounce = "{preannounce}"',
        "extra_recipients = [" + ", ".join(f'"{e}"' for e in extra) + "]",
        *rules,
    ]
    text = "+++\n" + "\n".join(front) + "\n+++\n" + BODY.format(marker=marker)
    return AdvisorySpec(advisory_id, text, marker, title, extra), disclosure


def _changes(
    rng: random.Random,
    add: Callable[..., None],
    advisory_id: str,
    submit_at: datetime,
    disclosure: datetime,
) -> None:
    """Some advisories are rescheduled, cancelled or disclosed early, at a time between
    their submission and their disclosure (before or after their notices went out)."""
    roll = rng.random()
    span = disclosure - submit_at
    when = submit_at + span * rng.uniform(0.05, 0.95)
    if roll < 0.12:
        moved = disclosure + timedelta(days=rng.choice([-1, 1, 2, 3]))
        if moved <= when + timedelta(hours=2):
            moved = when + timedelta(days=rng.uniform(1, 3))
        add(when, "reschedule", advisory_id, moved.replace(second=0, microsecond=0))
    elif roll < 0.18:
        add(when, "cancel", advisory_id)
    elif roll < 0.23:
        add(when, "disclose-now", advisory_id)
