"""What the CLI prints: JSON documents and readable tables (no I/O here)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from maild.domain.activity import OrgActivity
from maild.domain.audit import ChainCheck
from maild.domain.businessdays import BusinessCalendar
from maild.domain.models import (
    AdvisoryRecord,
    Event,
    MessageKind,
    MessagePurpose,
    MessageRecord,
)
from maild.domain.orgs import Org
from maild.domain.policy import Plan


class Clock:
    """Formats instants in the calendar's zone."""

    def __init__(self, calendar: BusinessCalendar) -> None:
        self.calendar = calendar

    def iso(self, instant: datetime | None) -> str | None:
        return None if instant is None else self.calendar.local(instant).isoformat()

    def human(self, instant: datetime | None) -> str:
        if instant is None:
            return "-"
        local = self.calendar.local(instant)
        return local.strftime("%a %Y-%m-%d %H:%M %Z") + f" ({local.strftime('%z')})"


def plan_json(plan: Plan, clock: Clock) -> dict[str, Any]:
    return {
        "disclose_at": clock.iso(plan.disclose_at),
        "notify_at": clock.iso(plan.notify_at),
        "preannounce_at": clock.iso(plan.preannounce_at),
        "business_days": plan.business_days,
        "reason": plan.reason,
    }


def plan_text(plan: Plan, clock: Clock) -> str:
    notice = "none"
    if plan.notify_at is not None:
        days = plan.business_days
        notice = (
            f"{clock.human(plan.notify_at)}, {days} business day{'' if days == 1 else 's'} before"
        )
    rows = [
        ("disclosure", clock.human(plan.disclose_at)),
        ("advance notice", notice),
        ("pre-announcement", clock.human(plan.preannounce_at) if plan.preannounce_at else "none"),
        ("reason", plan.reason),
    ]
    return "\n".join(f"{k:<17} {v}" for k, v in rows)


Queue = Sequence[tuple[AdvisoryRecord, Sequence[MessageRecord]]]


def notice_states(messages: Sequence[MessageRecord]) -> dict[str, int]:
    """How many of the advisory's notices are in each state."""
    counts: dict[str, int] = {}
    for m in messages:
        if m.kind is MessageKind.NOTICE and m.purpose is MessagePurpose.ORIGINAL:
            counts[m.state.value] = counts.get(m.state.value, 0) + 1
    return dict(sorted(counts.items()))


def queue_json(queue: Queue, clock: Clock) -> list[dict[str, Any]]:
    out = []
    for r, messages in queue:
        what, when = r.next_action()
        out.append(
            {
                "id": r.id,
                "title": r.meta.title,
                "state": r.state.value,
                "disclose_at": clock.iso(r.plan.disclose_at),
                "notify_at": clock.iso(r.plan.notify_at),
                "next_action": what,
                "next_at": clock.iso(when),
                "notices": notice_states(messages),
            }
        )
    return out


def queue_text(queue: Queue, clock: Clock) -> str:
    if not queue:
        return "queue is empty"
    rows = [("ID", "TITLE", "STATE", "DISCLOSE", "NOTIFY", "NOTICES", "NEXT")]
    for r, messages in queue:
        what, when = r.next_action()
        states = ", ".join(f"{n} {state}" for state, n in notice_states(messages).items())
        rows.append(
            (
                r.id,
                _clip(r.meta.title, 40),
                r.state.value,
                _short(clock, r.plan.disclose_at),
                _short(clock, r.plan.notify_at),
                states or "-",
                what + (f" at {_short(clock, when)}" if when else ""),
            )
        )
    return table(rows)


def receipt_json(m: MessageRecord, clock: Clock) -> dict[str, Any]:
    return {
        "kind": m.kind.value,
        "org": m.org,
        "address": m.address,
        "fingerprint": m.fingerprint,
        "message_id": m.message_id,
        "state": m.state.value,
        "detail": m.detail,
        "attempts": m.attempts,
        "smtp_code": m.smtp_code,
        "smtp_response": m.smtp_response,
        "sent_at": clock.iso(m.sent_at),
        "dsn": m.dsn,
        "acked_at": clock.iso(m.acked_at),
        "possible_duplicate": m.possible_duplicate,
        "purpose": m.purpose.value,
    }


def receipts_text(messages: Sequence[MessageRecord], clock: Clock) -> str:
    if not messages:
        return "no messages"
    rows = [("KIND", "ORG", "ADDRESS", "STATE", "DETAIL", "SMTP REPLY", "SENT", "DSN", "ACKED")]
    for m in messages:
        reply = f"{m.smtp_code} {m.smtp_response or ''}".strip() if m.smtp_code else "-"
        rows.append(
            (
                m.kind.value
                + (f" ({m.purpose.value})" if m.purpose.value != "original" else "")
                + (" (possible duplicate)" if m.possible_duplicate else ""),
                m.org or "-",
                m.address,
                m.state.value,
                _clip(m.detail or "-", 40),
                _clip(reply, 40),
                _short(clock, m.sent_at),
                m.dsn or "-",
                _short(clock, m.acked_at),
            )
        )
    return table(rows)


def show_json(
    r: AdvisoryRecord,
    messages: Sequence[MessageRecord],
    events: Sequence[Event],
    check: ChainCheck,
    clock: Clock,
) -> dict[str, Any]:
    rules = r.meta.rules
    return {
        "id": r.id,
        "title": r.meta.title,
        "state": r.state.value,
        "component": r.meta.component,
        "severity": rules.severity.value,
        "exploited": rules.exploited,
        "toolchain_update": rules.toolchain_update,
        "category": rules.category.value,
        "cve": list(r.meta.cves),
        "extra_recipients": list(r.meta.extra_recipients),
        "preannounce": r.meta.preannounce.value,
        "notify_days": rules.notify_days,
        "notify_not_before": clock.iso(rules.notify_not_before),
        "patches": list(r.patch_names),
        "plan": plan_json(r.plan, clock),
        "recipients": [receipt_json(m, clock) for m in messages],
        "history": [
            {"seq": e.seq, "at": clock.iso(e.at), "kind": e.kind, "actor": e.actor, "data": e.data}
            for e in events
        ],
        "history_intact": check.intact,
        "history_check": check.describe(),
        "created_at": clock.iso(r.created_at),
        "updated_at": clock.iso(r.updated_at),
    }


def show_text(
    r: AdvisoryRecord,
    messages: Sequence[MessageRecord],
    events: Sequence[Event],
    check: ChainCheck,
    clock: Clock,
) -> str:
    rules = r.meta.rules
    head = [
        ("id", r.id),
        ("title", r.meta.title),
        ("state", r.state.value),
        ("severity", rules.severity.value + (", actively exploited" if rules.exploited else "")),
        ("component", r.meta.component),
        ("category", rules.category.value),
        ("cve", ", ".join(r.meta.cves) or "-"),
        ("patches", ", ".join(r.patch_names) or "-"),
        ("pre-announce", r.meta.preannounce.value),
    ]
    parts = [
        "\n".join(f"{k:<17} {v}" for k, v in head),
        plan_text(r.plan, clock),
        "recipients:\n" + _indent(receipts_text(messages, clock)),
        "history: " + check.describe() + "\n" + _indent(history_text(events, clock)),
    ]
    return "\n\n".join(parts)


def history_text(events: Sequence[Event], clock: Clock) -> str:
    rows = [("#", "AT", "EVENT", "BY", "DETAILS")]
    for e in events:
        details = ", ".join(f"{k}={v}" for k, v in e.data.items() if v is not None)
        rows.append((str(e.seq), _short(clock, e.at), e.kind, e.actor, _clip(details, 70)))
    return table(rows)


def activity_json(rows: Sequence[OrgActivity], last: int, clock: Clock) -> dict[str, Any]:
    return {
        "last": last,
        "orgs": [
            {
                "org": r.org,
                "name": r.name,
                "received": r.received,
                "acknowledged": r.acknowledged,
                "last_ack": clock.iso(r.last_ack),
                "recent": [
                    {
                        "advisory": n.advisory_id,
                        "sent_at": clock.iso(n.sent_at),
                        "acked_at": clock.iso(n.acked_at),
                    }
                    for n in r.recent
                ],
                "flagged": r.flagged,
            }
            for r in rows
        ],
    }


def activity_text(rows: Sequence[OrgActivity], last: int, clock: Clock) -> str:
    if not rows:
        return "no active organisations"
    out = [("ORG", "RECEIVED", "ACKNOWLEDGED", "LAST ACK", f"LAST {last}", "")]
    for r in rows:
        recent = " ".join("ack" if n.acked_at else "-" for n in r.recent) or "none yet"
        flag = f"FLAG: none of the last {last} acknowledged" if r.flagged else ""
        out.append(
            (r.org, str(r.received), str(r.acknowledged), _short(clock, r.last_ack), recent, flag)
        )
    flagged = sum(1 for r in rows if r.flagged)
    note = (
        f"{flagged} organisation(s) acknowledged none of their last {last} notices "
        "(the policy's 'did not act on the notifications')"
    )
    return table(out) + "\n" + note


def orgs_markdown(orgs: Sequence[Org]) -> str:
    lines = ["| Organisation | Basis | Joined |", "| --- | --- | --- |"]
    lines += [f"| {_md(o.name)} | {o.basis.value} | {o.joined} |" for o in orgs]
    return "\n".join(lines)


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _short(clock: Clock, instant: datetime | None) -> str:
    if instant is None:
        return "-"
    return clock.calendar.local(instant).strftime("%Y-%m-%d %H:%M %Z")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _md(text: str) -> str:
    return text.replace("|", "\\|")
