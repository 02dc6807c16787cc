"""The advisory file: Markdown with TOML front matter between `+++` lines (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from maild.domain.fields import Table
from maild.domain.models import Advisory, AdvisoryMeta, Preannounce
from maild.domain.orgs import OrgStatus
from maild.domain.policy import Category, PolicyError, PolicyInput, Severity
from maild.domain.tomlsource import LineIndex, SourceError, parse_toml

ADVISORY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CVE_ID = re.compile(r"^CVE-\d{4}-\d{4,}$")
FENCE = "+++"
MAX_TITLE = 200


def split_front_matter(text: str, source: str) -> tuple[str, str, int]:
    """(front matter TOML, Markdown body, line number of the body's first line)."""
    lines = text.removeprefix("\ufeff").splitlines(keepends=True)
    if not lines or lines[0].strip() != FENCE:
        raise SourceError(
            f"{source}:1: an advisory starts with a '+++' line, then TOML front matter, "
            "then another '+++' line"
        )
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() == FENCE:
            return "".join(lines[1 : number - 1]), "".join(lines[number:]), number + 1
    raise SourceError(f"{source}: the front matter opened on line 1 has no closing '+++' line")


def parse_advisory(
    text: str,
    source: str,
    *,
    now: datetime,
    orgs: Mapping[str, OrgStatus],
    default_id: str,
) -> Advisory:
    """Parse and validate an advisory file submitted at `now`.

    `orgs` maps the known organisation ids to their status (for
    `extra_recipients`); `default_id` is used when the file has no `id`.
    Raises SourceError naming the file, the line and the key.
    """
    front, body, body_line = split_front_matter(text, source)
    data = parse_toml(front, source, line_offset=1)
    t = Table(data, source=source, index=LineIndex(front, line_offset=1))

    advisory_id = t.text("id", None)
    if advisory_id is not None and not ADVISORY_ID.match(advisory_id):
        raise t.error("id", f"{advisory_id!r}: use letters, digits, '.', '_' and '-' (max 64)")
    title = t.text("title")
    if len(title) > MAX_TITLE:
        raise t.error("title", f"is {len(title)} characters long; keep it under {MAX_TITLE}")
    disclosure = t.instant("disclosure")
    if disclosure <= now:
        raise t.error(
            "disclosure", f"{disclosure.isoformat()} is in the past (now {now.isoformat()})"
        )
    severity = t.choice("severity", Severity)
    component = t.text("component")
    exploited = t.flag("exploited", False)
    toolchain_update = t.flag("toolchain_update", True)
    category = t.choice("category", Category, Category.TOOLCHAIN)
    cves = t.texts("cve", ())
    for cve in cves:
        if not CVE_ID.match(cve):
            raise t.error("cve", f"{cve!r} is not a CVE id like CVE-2026-12345")
    extra = t.texts("extra_recipients", ())
    _check_extra(t, extra, orgs)
    preannounce = t.choice("preannounce", Preannounce, Preannounce.FULL)
    notify_days = t.number("notify_days", None, minimum=1)
    approval = t.text("reporter_approval", None, single_line=False)
    not_before = t.instant("notify_not_before", None)
    t.reject_unknown()

    try:
        rules = PolicyInput(
            disclosure=disclosure,
            severity=severity,
            exploited=exploited,
            toolchain_update=toolchain_update,
            category=category,
            notify_days=notify_days,
            reporter_approval=approval,
            notify_not_before=not_before,
        )
    except PolicyError as exc:
        key, _, problem = str(exc).partition(": ")
        raise t.error(key, problem) from None
    if not body.strip():
        raise SourceError(
            f"{source}:{body_line}: the draft advisory after the front matter is empty"
        )
    meta = AdvisoryMeta(
        id=advisory_id or default_id,
        title=title,
        component=component,
        rules=rules,
        cves=cves,
        extra_recipients=extra,
        preannounce=preannounce,
    )
    return Advisory(meta=meta, body=body, id_assigned=advisory_id is None)


def _check_extra(t: Table, extra: tuple[str, ...], orgs: Mapping[str, OrgStatus]) -> None:
    if len(set(extra)) != len(extra):
        raise t.error("extra_recipients", "names an organisation twice")
    for org_id in extra:
        status = orgs.get(org_id)
        if status is None:
            raise t.error("extra_recipients", f"unknown organisation {org_id!r} (not in orgs.toml)")
        if status is OrgStatus.REMOVED:
            raise t.error("extra_recipients", f"organisation {org_id!r} was removed from the list")
