"""The advisory file format: front matter validation with line numbers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from maild.domain.advisory import parse_advisory
from maild.domain.models import Preannounce
from maild.domain.orgs import OrgStatus
from maild.domain.policy import Category, Severity
from maild.domain.tomlsource import SourceError

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
ORGS = {"distro": OrgStatus.ACTIVE, "friend": OrgStatus.ADHOC, "gone": OrgStatus.REMOVED}

GOOD = """+++
id = "WG-2026-007"
title = "Out-of-bounds write in slice::sort"
disclosure = 2026-12-08T17:00:00+01:00
severity = "high"
component = "standard library"
exploited = false
toolchain_update = true
category = "toolchain"
cve = ["CVE-2026-12345"]
extra_recipients = ["friend"]
preannounce = "minimal"
+++
# Out-of-bounds write

Details.
"""


def parse(text: str) -> object:
    return parse_advisory(text, "adv.md", now=NOW, orgs=ORGS, default_id="WG-2026-001")


def test_good_advisory_parses_every_field() -> None:
    """A complete advisory file yields its metadata and the Markdown draft."""
    adv = parse_advisory(GOOD, "adv.md", now=NOW, orgs=ORGS, default_id="x")
    meta = adv.meta
    assert meta.id == "WG-2026-007" and not adv.id_assigned
    assert meta.rules.severity is Severity.HIGH and meta.rules.category is Category.TOOLCHAIN
    assert meta.rules.disclosure == datetime(2026, 12, 8, 16, tzinfo=UTC)
    assert meta.cves == ("CVE-2026-12345",) and meta.extra_recipients == ("friend",)
    assert meta.preannounce is Preannounce.MINIMAL
    assert adv.body.startswith("# Out-of-bounds write")


def test_missing_id_is_assigned() -> None:
    """Without an id the advisory gets the one the queue assigns."""
    adv = parse_advisory(
        GOOD.replace('id = "WG-2026-007"\n', ""), "a.md", now=NOW, orgs=ORGS, default_id="WG-1"
    )
    assert adv.meta.id == "WG-1" and adv.id_assigned


def test_defaults_for_optional_fields() -> None:
    """Optional fields default as DESIGN.md section 5 says."""
    text = (
        '+++\ntitle = "t"\ndisclosure = 2026-12-08T17:00:00Z\nseverity = "low"\n'
        'component = "cargo"\n+++\nbody\n'
    )
    meta = parse_advisory(text, "a.md", now=NOW, orgs={}, default_id="x").meta
    assert meta.rules.exploited is False and meta.rules.toolchain_update is True
    assert meta.rules.category is Category.TOOLCHAIN and meta.preannounce is Preannounce.FULL
    assert meta.cves == () and meta.extra_recipients == ()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "disclosure = 2026-12-08T17:00:00+01:00",
            "disclosure = 2026-12-08T17:00:00",
            "adv.md:4: disclosure: 2026-12-08T17:00:00 has no time zone",
        ),
        (
            "disclosure = 2026-12-08T17:00:00+01:00",
            "disclosure = 2026-12-08",
            "adv.md:4: disclosure: is a date without a time",
        ),
        (
            "disclosure = 2026-12-08T17:00:00+01:00",
            'disclosure = "2026-12-08T17:00:00+01:00"',
            "adv.md:4: disclosure: must be a date and time",
        ),
        (
            "disclosure = 2026-12-08T17:00:00+01:00",
            "disclosure = 2026-11-01T17:00:00+01:00",
            "adv.md:4: disclosure: 2026-11-01T17:00:00+01:00 is in the past",
        ),
        (
            'severity = "high"',
            'severity = "urgent"',
            "adv.md:5: severity: must be one of low, medium, high, critical, not 'urgent'",
        ),
        ('category = "toolchain"', 'category = "crates"', "adv.md:9: category: must be one of"),
        ('preannounce = "minimal"', 'preannounce = "some"', "adv.md:12: preannounce:"),
        (
            'extra_recipients = ["friend"]',
            'extra_recipients = ["nobody"]',
            "adv.md:11: extra_recipients: unknown organisation 'nobody'",
        ),
        (
            'extra_recipients = ["friend"]',
            'extra_recipients = ["gone"]',
            "adv.md:11: extra_recipients: organisation 'gone' was removed",
        ),
        ('cve = ["CVE-2026-12345"]', 'cve = ["2026-12345"]', "adv.md:10: cve: '2026-12345'"),
        ('component = "standard library"', 'componnet = "std"', "adv.md: component: is required"),
        ("exploited = false", 'exploited = "no"', "adv.md:7: exploited: must be true or false"),
        (
            'title = "Out-of-bounds write in slice::sort"',
            'title = "a\\r\\nBcc: x@y.org"',
            "adv.md:3: title: must be one line",
        ),
        (
            'title = "Out-of-bounds write in slice::sort"',
            'title = "a\\u0085Bcc: x@y.org"',
            "adv.md:3: title: must be one line",
        ),
        (
            'component = "standard library"',
            'component = "std\\u2028Bcc: x@y.org"',
            "adv.md:6: component: must be one line",
        ),
        (
            "exploited = false",
            "exploited = false\nnotify_days = 7",
            "adv.md:8: notify_days: needs reporter_approval",
        ),
        (
            "exploited = false",
            'exploited = false\nnotify_days = 0\nreporter_approval = "ok"',
            "adv.md:8: notify_days: must be 1 or more",
        ),
        (
            "exploited = false",
            "exploited = false\nsevrity = 1",
            "adv.md:8: sevrity: unknown key (did you mean 'severity'?)",
        ),
        ('id = "WG-2026-007"', 'id = "../etc"', "adv.md:2: id: '../etc'"),
        ("exploited = false", "exploited = false\nexploited = true", "adv.md:8: invalid TOML"),
        (
            'title = "Out-of-bounds write in slice::sort"',
            'title = "unterminated',
            "adv.md:3: invalid TOML",
        ),
    ],
)
def test_bad_advisory_names_line_and_key(old: str, new: str, message: str) -> None:
    """Each bad advisory is refused with one line naming file, line and key."""
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(SourceError) as caught:
        parse(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("title = 'x'\n", "adv.md:1: an advisory starts with a '+++' line"),
        ("+++\ntitle = 'x'\n", "has no closing '+++' line"),
        (GOOD.split("+++\n# Out")[0] + "+++\n\n  \n", "adv.md:14: the draft advisory"),
        ("", "adv.md:1:"),
    ],
)
def test_bad_structure_is_refused(text: str, message: str) -> None:
    """A file without front matter fences, or with an empty draft, is refused."""
    with pytest.raises(SourceError, match=message.replace("+", r"\+")):
        parse(text)
