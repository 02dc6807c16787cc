"""The advance-notification policy of the RFC, as a pure function of its inputs.

`plan()` answers: when does each organisation get its notice, when is the
public pre-announcement, and how many business days of notice does that give.
Time is always an argument; nothing here reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from maild.domain.businessdays import BusinessCalendar

NORMAL_DAYS = 5
CRITICAL_EXPLOITED_DAYS = 1
MAX_NOTIFY_DAYS = 60  # about three months of business days


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Category(StrEnum):
    TOOLCHAIN = "toolchain"
    INFRASTRUCTURE = "infrastructure"
    CRATE = "crate"
    OTHER = "other"


class PolicyError(ValueError):
    """Inputs the policy cannot accept; the message names the field."""


@dataclass(frozen=True)
class PolicyInput:
    """Everything the policy looks at, and nothing else."""

    disclosure: datetime
    severity: Severity
    exploited: bool = False
    toolchain_update: bool = True
    category: Category = Category.TOOLCHAIN
    notify_days: int | None = None
    reporter_approval: str | None = None
    notify_not_before: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware("disclosure", self.disclosure)
        if self.notify_not_before is not None:
            _require_aware("notify_not_before", self.notify_not_before)
        if self.notify_days is not None:
            if isinstance(self.notify_days, bool) or not 1 <= self.notify_days <= MAX_NOTIFY_DAYS:
                raise PolicyError(
                    f"notify_days: must be a whole number of business days from 1 to "
                    f"{MAX_NOTIFY_DAYS}, not {self.notify_days}"
                )
            if not (self.reporter_approval or "").strip():
                raise PolicyError(
                    "notify_days: needs reporter_approval (the RFC requires the reporter's "
                    "approval to notify earlier than the policy)"
                )


@dataclass(frozen=True)
class Plan:
    """The schedule the policy gives. Times are in the calendar's zone."""

    disclose_at: datetime
    notify_at: datetime | None
    preannounce_at: datetime | None
    business_days: int | None
    reason: str

    @property
    def has_notice(self) -> bool:
        return self.notify_at is not None


def required_days(rules: PolicyInput) -> int | None:
    """Business days of notice the policy tier gives, or None for no notice."""
    if rules.category is not Category.TOOLCHAIN:
        return None
    critical_exploited = rules.severity is Severity.CRITICAL and rules.exploited
    if critical_exploited and not rules.toolchain_update:
        return None
    return CRITICAL_EXPLOITED_DAYS if critical_exploited else NORMAL_DAYS


def plan(rules: PolicyInput, calendar: BusinessCalendar, now: datetime | None = None) -> Plan:
    """The policy's schedule for `rules`.

    `now` is given when an advisory is accepted (or rescheduled): a notice time
    already past then means "send now", and the plan counts the business days
    of notice that remain. Without `now` this is the pure policy for any date.
    """
    if now is not None:
        _require_aware("now", now)
    try:
        return _plan(rules, calendar, now)
    except OverflowError:
        raise PolicyError(
            f"disclosure: {rules.disclosure.isoformat()} is outside the dates maild can plan"
        ) from None


def _plan(rules: PolicyInput, calendar: BusinessCalendar, now: datetime | None) -> Plan:
    disclose_at = calendar.local(rules.disclosure)
    days = required_days(rules)
    if days is None:
        return Plan(disclose_at, None, None, None, _no_notice_reason(rules))

    reasons = [_tier_reason(rules)]
    if rules.notify_days is not None:
        if rules.notify_days > days:
            reasons.append(
                f"notify_days = {rules.notify_days} with the reporter's approval: "
                f"{rules.notify_days} business days instead of {days}"
            )
            days = rules.notify_days
        else:
            reasons.append(
                f"notify_days = {rules.notify_days} is not earlier than the policy's {days}: "
                "no change"
            )

    notice_day = calendar.count_back(disclose_at.date(), days)
    notify_at = calendar.at_local(notice_day, disclose_at.timetz())

    if rules.notify_not_before is not None:
        not_before = calendar.local(rules.notify_not_before)
        if not_before >= disclose_at:
            reasons.append(
                f"notify_not_before {not_before.isoformat()} is at or after disclosure: "
                "the embargo terms allow no advance notice"
            )
            return Plan(disclose_at, None, None, None, "; ".join(reasons))
        if notify_at < not_before:
            reasons.append(
                f"moved to notify_not_before {not_before.isoformat()} (reporter's embargo terms)"
            )
            notify_at = not_before

    if now is not None and notify_at < now:
        if now >= disclose_at:
            raise PolicyError(f"disclosure: {disclose_at.isoformat()} is already past")
        reasons.append(f"notice time {notify_at.isoformat()} already past: send now")
        notify_at = calendar.local(now)

    left = calendar.business_days_between(notify_at.date(), disclose_at.date())
    return Plan(disclose_at, notify_at, notify_at, left, "; ".join(reasons))


def _tier_reason(rules: PolicyInput) -> str:
    if rules.severity is Severity.CRITICAL and rules.exploited:
        return (
            f"critical and actively exploited: {CRITICAL_EXPLOITED_DAYS} business day "
            "of advance notice"
        )
    return f"{rules.severity.value} severity: {NORMAL_DAYS} business days of advance notice"


def _no_notice_reason(rules: PolicyInput) -> str:
    if rules.category is not Category.TOOLCHAIN:
        return (
            f"category {rules.category.value} is not shipped in the toolchain: "
            "no advance notice and no pre-announcement"
        )
    return (
        "critical and actively exploited, mitigated without a toolchain update: "
        "no advance notice and no pre-announcement"
    )


def _require_aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime):
        raise PolicyError(f"{name}: must be a date and time with a UTC offset")
    if value.tzinfo is None or value.utcoffset() is None:
        raise PolicyError(
            f"{name}: {value.isoformat()} has no time zone; add a UTC offset like +01:00 or Z"
        )
