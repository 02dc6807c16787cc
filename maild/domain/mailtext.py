"""What maild's mail says (pure): notice, pre-announcement, blog post,
disclosure and alerts. No I/O, no clock; headers are built elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from maild.domain.businessdays import BusinessCalendar
from maild.domain.expiry import AtRisk, Holder, KeyUse
from maild.domain.models import AdvisoryMeta, Preannounce
from maild.domain.policy import Plan

# The outer Subject of every notice: the same for every advisory, so the
# envelope says nothing about what is inside (RFC 9788 header protection).
GENERIC_SUBJECT = "Embargoed security notice"

# From the policy's "Confidentiality" section.
CONFIDENTIALITY = """\
All organizations who received an advance notification must treat all the
information they received and all fixes they developed as confidential until
the public disclosure by the WG. The information can only be shared inside the
organization on a need-to-know basis, and can never be shared with people
external to the organization without explicit permission from the WG.

Organizations must take appropriate steps to protect the confidentiality of
advance notifications and of all communications and materials associated with
them. Any violation of confidentiality will have consequences, up to removal
from the advance-disclosure list."""


@dataclass(frozen=True)
class Text:
    subject: str
    body: str


def when(instant: datetime, calendar: BusinessCalendar) -> str:
    """`Tuesday 2026-12-08 17:00 CET (UTC+01:00)`: date, time and zone."""
    local = calendar.local(instant)
    offset = local.strftime("%z")
    return f"{local.strftime('%A %Y-%m-%d %H:%M')} {local.tzname()} (UTC{offset[:3]}:{offset[3:]})"


def notice(
    meta: AdvisoryMeta,
    plan: Plan,
    calendar: BusinessCalendar,
    *,
    org_name: str,
    draft: str,
    patch_names: Sequence[str],
    ack_token: str,
    reply_to: str,
) -> Text:
    """The advance notice one organisation reads once it has decrypted it."""
    embargo = when(plan.disclose_at, calendar)
    facts = [
        ("Advisory", meta.id),
        (
            "Severity",
            meta.rules.severity.value + (", actively exploited" if meta.rules.exploited else ""),
        ),
        ("Affected", meta.component),
        ("CVE", ", ".join(meta.cves) or "not yet assigned"),
        ("Patches", ", ".join(patch_names) or "none attached"),
        ("Public disclosure", embargo),
    ]
    body = "\n".join(
        [
            f"To: {org_name}",
            "",
            "EMBARGOED SECURITY NOTICE",
            "",
            "This is an advance notice of a vulnerability that will be disclosed publicly on",
            f"{embargo}. Until that moment it is under embargo.",
            "",
            *(f"{k + ':':<19}{v}" for k, v in facts),
            "",
            "Confidentiality",
            "---------------",
            CONFIDENTIALITY,
            "",
            "Draft advisory",
            "--------------",
            draft.strip("\n"),
            "",
            "Acknowledgement",
            "---------------",
            f"Please acknowledge receipt: reply to {reply_to} with this line, signed with",
            "the key pinned for your address:",
            "",
            f"    ACK {ack_token}",
            "",
        ]
    )
    return Text(f"[EMBARGOED until {_short(plan.disclose_at, calendar)}] {meta.title}", body)


def preannouncement(meta: AdvisoryMeta, plan: Plan, calendar: BusinessCalendar) -> Text:
    """The public pre-announcement: planned date and time with zone, and
    (unless minimal) severity and affected part. Never the title or details."""
    release = when(plan.disclose_at, calendar)
    lines = [
        "The Security Response WG will publish a security release on",
        f"{release}.",
        "",
    ]
    if meta.preannounce is Preannounce.FULL:
        lines += [
            f"Severity:      {meta.rules.severity.value}",
            f"Affected part: {meta.component}",
            "",
        ]
    lines += [
        "Details will be published at that time. Please plan to update then.",
        "",
    ]
    subject = f"Security release planned for {_short(plan.disclose_at, calendar)}"
    return Text(subject, "\n".join(lines))


def revised_preannouncement(meta: AdvisoryMeta, plan: Plan, calendar: BusinessCalendar) -> Text:
    """The pre-announcement again, after the release date moved."""
    text = preannouncement(meta, plan, calendar)
    return Text(f"Revised: {text.subject}", "The planned date has changed.\n\n" + text.body)


def blog_post(meta: AdvisoryMeta, plan: Plan, calendar: BusinessCalendar) -> str:
    """The pre-announcement as a Markdown blog draft."""
    text = preannouncement(meta, plan, calendar)
    return f"# {text.subject}\n\n{text.body}"


def disclosure(meta: AdvisoryMeta, draft: str) -> Text:
    """The public advisory at disclosure time."""
    cves = f" ({', '.join(meta.cves)})" if meta.cves else ""
    return Text(f"[SECURITY] {meta.title}{cves}", draft.strip("\n") + "\n")


def alert(meta: AdvisoryMeta, what: str, details: Sequence[str]) -> Text:
    """A message to the WG members about something that needs a person."""
    body = "\n".join([f"maild alert for {meta.id} ({meta.title}):", "", what, "", *details, ""])
    return Text(f"maild alert: {what}", body)


# What to do about a key that expires soon, by whose key it is.
KEY_ADVICE = {
    Holder.ORG: "Ask the organisation for an extended or new key. Put the updated public key "
    "in the keys folder (if its fingerprint changed, pin the new one in orgs.toml) and "
    "reload maild. Once the key expires the organisation gets no notices: they are held "
    "as blocked, never sent in clear.",
    Holder.MEMBER: "Ask the member to extend the key and send the updated public key. Put "
    "it in the keys folder (if its fingerprint changed, update intake.members) and reload "
    "maild. Once the key expires maild can no longer send that member replies or alerts.",
    Holder.IDENTITY: "Extend the identity key in maild's gnupg home (gpg --quick-set-expire "
    "FINGERPRINT 1y, then again with '*' for its subkeys), and send the updated public key "
    "to the organisations and members. Once it expires maild cannot sign what it sends.",
}


def key_alert(
    fingerprint: str, uses: Sequence[KeyUse], expires_at: datetime, calendar: BusinessCalendar
) -> Text:
    """To the WG: a key maild relies on expires soon (about no advisory)."""
    lines = [
        "maild alert: a key expires soon.",
        "",
        f"Key:      {fingerprint}",
        f"Expires:  {when(expires_at, calendar)}",
        *(f"{'Used by:' if i == 0 else '':<10}{u.label()}" for i, u in enumerate(uses)),
        "",
        "What to do:",
        *(KEY_ADVICE[h] for h in dict.fromkeys(u.holder for u in uses)),
        "",
    ]
    return Text(
        f"maild alert: key {fingerprint} expires on {_short(expires_at, calendar)}",
        "\n".join(lines),
    )


def at_risk_alert(
    meta: AdvisoryMeta, notify_at: datetime, risks: Sequence[AtRisk], calendar: BusinessCalendar
) -> Text:
    """To the WG, a day before the notice time: who would get no notice."""
    what = at_risk_what(len(risks))
    details = [
        f"Notice time: {when(notify_at, calendar)}",
        "",
        *(f"{r.use.label()}: key {r.use.fingerprint}: {r.reason}" for r in risks),
        "",
        "Unless their keys are fixed before the notice time (an extended or new key in the",
        "keys folder, the pin in orgs.toml, then reload maild), they get no notice: it is",
        "held as blocked, never sent in clear.",
    ]
    return alert(meta, what, details)


def at_risk_what(count: int) -> str:
    return f"recipients blocked at the notice time: {count}"


def _short(instant: datetime, calendar: BusinessCalendar) -> str:
    return calendar.local(instant).strftime("%Y-%m-%d %H:%M %Z")


def notice_update(
    meta: AdvisoryMeta, plan: Plan, calendar: BusinessCalendar, *, org_name: str
) -> Text:
    """To an org already notified: the disclosure moved."""
    embargo = when(plan.disclose_at, calendar)
    body = "\n".join(
        [
            f"To: {org_name}",
            "",
            "EMBARGO UPDATE",
            "",
            f"The public disclosure of {meta.id} has moved. The embargo now ends on",
            f"{embargo}.",
            "",
            "Everything you received stays confidential until then, under the same terms.",
            "",
        ]
    )
    return Text(
        f"[EMBARGO UPDATE: now until {_short(plan.disclose_at, calendar)}] {meta.title}", body
    )


def withdrawal(meta: AdvisoryMeta, *, org_name: str) -> Text:
    """To an org already notified: the advisory was withdrawn."""
    body = "\n".join(
        [
            f"To: {org_name}",
            "",
            "ADVISORY WITHDRAWN",
            "",
            f"The Security Response WG has withdrawn {meta.id}. No disclosure is scheduled.",
            "",
            "Everything you received about it stays confidential: do not publish or share",
            "it. The WG will contact you if this changes.",
            "",
        ]
    )
    return Text(f"[WITHDRAWN] {meta.title}", body)
