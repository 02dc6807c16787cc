"""orgs.toml structure: every problem found, org by org, with lines."""

from __future__ import annotations

import pytest

from maild.domain.orgs import Basis, OrgStatus, normalise_fingerprint, parse_orgs
from maild.domain.tomlsource import SourceError
from maild.service.demo import org_toml

A = "AAAA" * 10
B = "BBBB" * 10


def org(
    org_id: str,
    *,
    status: str = "active",
    contacts: str = '["Ana <ana@x.example>", "Ben <ben@x.example>"]',
    email: str = "sec@x.example",
    key: str = A,
    extra: str = "",
) -> str:
    return org_toml(org_id, email, key, status=status, contacts=contacts, extra=extra)


def test_good_list_parses() -> None:
    """A valid list yields its orgs with normalised fingerprints."""
    spaced = " ".join(B[i : i + 4] for i in range(0, 40, 4)).lower()
    orgs = parse_orgs(org("one") + org("two", email="s@y.example", key=spaced), "orgs.toml")
    assert orgs.problems == ()
    assert [o.id for o in orgs.orgs] == ["one", "two"]
    assert orgs.orgs[0].basis is Basis.DISTRIBUTOR
    assert orgs.orgs[1].addresses[0].key == B


def test_recipients_and_public_list() -> None:
    """Active orgs are notified and public; ad hoc only when named; removed never."""
    text = (
        org("act")
        + org("adh", status="adhoc", email="b@y.example")
        + org(
            "rem",
            status="removed",
            email="c@z.example",
            extra='removed = { date = 2026-06-01, reason = "inactive" }',
        )
    )
    orgs = parse_orgs(text, "orgs.toml")
    assert orgs.problems == ()
    assert [o.id for o in orgs.recipients()] == ["act"]
    assert [o.id for o in orgs.recipients(("adh", "rem"))] == ["act", "adh"]
    assert [o.id for o in orgs.public()] == ["act"]
    assert orgs.statuses()["rem"] is OrgStatus.REMOVED


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            org("one", contacts='["Ana <ana@x.example>"]'),
            "orgs.toml:8: org one: contacts: needs at least two people, found 1",
        ),
        (org("one", contacts='["Ana", "Ben <ben@x.example>"]'), "'Ana' is not 'Name <"),
        (
            org("one", contacts='["Ana <ana@x.example>", "A. <ANA@x.example>"]'),
            "contacts: needs at least two people, found 1",
        ),
        (
            org("one", key="0123456789ABCDEF"),
            "orgs.toml:13: org one: address[1].key: '0123456789ABCDEF' is a short key id",
        ),
        (org("one", key="XYZ"), "is not a 40-hex OpenPGP fingerprint"),
        (org("one").replace("distributor", "reseller"), "orgs.toml:5: org one: basis: must be"),
        (org("one").replace('"active"', '"paused"'), "org one: status: must be one of"),
        (org("one") + org("one", email="z@z.example"), "org one: id: duplicate id"),
        (org("one") + org("two"), "org two: address: duplicate address sec@x.example"),
        (org("one", status="removed"), "status is removed: add removed = {"),
        (
            org("one", extra='removed = { date = 2026-06-01, reason = "inactive" }'),
            "org one: removed: is set but status is active",
        ),
        (
            org("one", status="removed", extra='removed = { date = 2026-06-01, reason = "bored" }'),
            "org one: removed.reason: must be one of not-eligible, inactive, confidentiality",
        ),
        (org("one").replace("pledge = {", "pledged = {"), "org one: pledge: is required"),
        (org("one").replace("joined = 2026-01-15", 'joined = "January"'), "joined: must be"),
        (
            org("one").replace('  email = "sec@x.example"', '  emial = "sec@x.example"'),
            "org one: address[1].email: is required",
        ),
        (org("One"), "org One: id: 'One' must be lower-case"),
        ("[[orgs]]\nid = 'x'\n", "orgs.toml:1: orgs: unknown key"),
    ],
)
def test_bad_org_is_reported_with_line_and_key(text: str, message: str) -> None:
    """Each structural problem names the file, line, org and key, and the
    faulty org is left out of the usable list."""
    orgs = parse_orgs(text, "orgs.toml")
    assert any(message in p for p in orgs.problems), orgs.problems
    assert all("\n" not in p for p in orgs.problems)


def test_every_problem_is_reported_not_just_the_first() -> None:
    """`orgs check` needs all problems at once: two orgs, three problems."""
    text = org("one", contacts='["Ana <a@x.example>"]', key="ABCD1234") + org(
        "two", email="bad-address"
    )
    problems = parse_orgs(text, "orgs.toml").problems
    assert len(problems) == 3
    assert "org one" in problems[0] and "org one" in problems[1] and "org two" in problems[2]


def test_broken_toml_raises_with_line() -> None:
    """A TOML syntax error is one line naming the file and line."""
    with pytest.raises(SourceError, match=r"orgs.toml:3: invalid TOML"):
        parse_orgs('[[org]]\nid = "a"\nname = \n', "orgs.toml")


def test_fingerprint_normalisation() -> None:
    """gpg's spaced, lower-case or 0x-prefixed fingerprints are accepted as the same pin."""
    assert normalise_fingerprint("0x" + A.lower()) == A
    with pytest.raises(ValueError, match="short key id"):
        normalise_fingerprint("ABCD1234")


def test_a_fingerprint_with_a_trailing_newline_is_refused() -> None:
    """A pin written as "...\\n" in TOML is refused, not stored with the
    newline (it would then never match a key, and block the org silently)."""
    with pytest.raises(ValueError, match="not a 40-hex"):
        normalise_fingerprint(A + "\n")
