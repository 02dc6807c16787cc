"""Key health in the daemon: once a day, every key maild relies on is judged
and the WG alerted of each that expires within 30 days (once per key and
expiry date); from 24 hours before each notice time, the WG is told in one
alert which recipients would be blocked then (once per advisory and notice
time). The dispatcher calls `run` in every tick, after the first release; it reads the
store only when something may be due. Logs name events and fingerprints,
never key material."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import structlog

from maild.adapters.gpg import KeyHealth
from maild.domain import mailtext
from maild.domain.businessdays import BusinessCalendar
from maild.domain.expiry import (
    Holder,
    KeyState,
    KeyUse,
    at_risk,
    at_risk_about,
    by_key,
    expiring_soon,
    expiry_about,
    key_uses,
    notices_to_watch,
    recipients,
    utc,
)
from maild.domain.models import AdvisoryRecord, AdvisoryState
from maild.domain.orgs import OrgList
from maild.service.checks import NOT_IN_FOLDER, key_problem_at
from maild.service.ports import Store

log = structlog.get_logger("maild.keywatch")
CHECKED = "key-check"  # meta: the local date of the last daily check

# Queue one alert to every WG member unless already queued for `about`:
# (advisory id or None, about, text, one-line summary) -> True if any was added.
QueueAlert = Callable[[str | None, str, mailtext.Text, str], bool]


class MemberKey(Protocol):
    @property
    def fingerprint(self) -> str: ...

    @property
    def address(self) -> str | None: ...


@dataclass(frozen=True)
class Watched:
    """What the keys are judged against, as the dispatcher holds it now."""

    orgs: OrgList
    members: Sequence[MemberKey]
    identity: str
    calendar: BusinessCalendar
    health: Callable[[str], KeyHealth]  # judged at the current time
    in_keys_folder: Callable[[str], bool]

    def judge(self, use: KeyUse, now: datetime) -> KeyState:
        """The key's state now (the identity key lives in gnupg_home, not the keys folder)."""
        if use.holder is not Holder.IDENTITY and not self.in_keys_folder(use.fingerprint):
            return KeyState(NOT_IN_FOLDER, None)
        health = self.health(use.fingerprint)
        return KeyState(key_problem_at(health, now), health.expires_at)


@dataclass
class KeyWatch:
    store: Store
    queue_alert: QueueAlert
    _checked: str | None = field(init=False, default=None)  # local date of the last check
    # What the last look at the advisories was made on, the earliest instant
    # one comes due, and the (advisory, notice time) pairs already handled.
    _seen: tuple[object, ...] | None = field(init=False, default=None)
    _next: datetime | None = field(init=False, default=None)
    _done: set[tuple[str, datetime]] = field(init=False, default_factory=set)

    def run(self, now: datetime, watched: Watched) -> set[str]:
        """The day's check and the 24-hour looks; returns the advisories that
        got a new alert (to be prepared)."""
        self.daily(now, watched)
        return self.before_notices(now, watched)

    def next_wake(self, now: datetime) -> datetime | None:
        """When the next advisory's 24-hour look is due (None: none ahead)."""
        return self._next if self._next is not None and self._next > now else None

    def daily(self, now: datetime, w: Watched) -> None:
        """The day's key check, unless this day's is done (also by an earlier run)."""
        today = w.calendar.local(now).date().isoformat()
        if self._checked == today:
            return
        if self.store.get_meta(CHECKED) != today:
            members = [(m.fingerprint, m.address) for m in w.members]
            keys = by_key(key_uses(w.orgs, members, w.identity))
            expiring = []
            for fpr, uses in keys.items():
                use = next((u for u in uses if u.holder is Holder.IDENTITY), uses[0])
                state = w.judge(use, now)
                if expiring_soon(state, now) and state.expires_at is not None:
                    expiring.append((fpr, uses, state.expires_at))
            with self.store.atomic():  # the day is marked checked with its alerts
                for fpr, uses, expires_at in expiring:
                    text = mailtext.key_alert(fpr, uses, expires_at, w.calendar)
                    what = f"key {fpr} expires on {utc(expires_at)}"
                    if self.queue_alert(None, expiry_about(fpr, expires_at), text, what):
                        log.warning("key-expiring", fingerprint=fpr)
                self.store.set_meta(CHECKED, today)
            log.info("key-check", keys=len(keys), expiring=len(expiring))
        self._checked = today

    def before_notices(self, now: datetime, w: Watched) -> set[str]:
        """From 24 hours before an advisory's notice time, one alert listing
        the recipients that would be blocked then. The advisories are read
        only when one was added or changed, the orgs list changed, or the
        next look falls due."""
        seen = (self.store.data_version(), id(w.orgs))
        if seen == self._seen and (self._next is None or now < self._next):
            return set()
        soonest: datetime | None = None
        looking, alerted = set(), set()
        for record in self.store.list_advisories():
            if record.state is not AdvisoryState.SCHEDULED:
                continue
            notify_at = record.plan.notify_at
            due, later = notices_to_watch(notify_at, now)
            if later is not None and (soonest is None or later < soonest):
                soonest = later
            if not due or notify_at is None:
                continue
            looking.add((record.id, notify_at))
            if (record.id, notify_at) not in self._done and self._warn(record, notify_at, now, w):
                alerted.add(record.id)
        # Only a look that went through to the end stands (else the next tick looks again).
        self._seen, self._next, self._done = seen, soonest, looking
        return alerted

    def _warn(self, record: AdvisoryRecord, notify_at: datetime, now: datetime, w: Watched) -> bool:
        risks = at_risk(
            recipients(w.orgs, record.meta.extra_recipients),
            lambda use: w.judge(use, now),
            notify_at,
        )
        if not risks:
            return False
        text = mailtext.at_risk_alert(record.meta, notify_at, risks, w.calendar)
        what = mailtext.at_risk_what(len(risks))
        if self.queue_alert(record.id, at_risk_about(record.id, notify_at), text, what):
            log.warning(
                "notice-at-risk",
                advisory=record.id,
                fingerprints=[r.use.fingerprint for r in risks],
            )
            return True
        return False
