"""The pure key-health rules: what counts as expiring soon, who would be
blocked at a notice time, when to look, and what the key alert says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from maild.domain import mailtext
from maild.domain.businessdays import BusinessCalendar
from maild.domain.expiry import (
    Holder,
    KeyState,
    KeyUse,
    at_risk,
    at_risk_about,
    blocked_at,
    expiring_soon,
    expiry_about,
    key_uses,
    notices_to_watch,
)
from maild.domain.orgs import parse_orgs
from maild.service.demo import org_toml

NOW = datetime(2030, 3, 4, 10, tzinfo=UTC)
FPR = "A" * 40


def test_expiring_soon_means_usable_now_and_gone_within_30_days() -> None:
    """A usable key expiring at most 30 days ahead counts; one a second
    later, one already expired, one with a problem, or one that never
    expires does not."""
    limit = NOW + timedelta(days=30)
    assert expiring_soon(KeyState(None, limit), NOW)
    assert not expiring_soon(KeyState(None, limit + timedelta(seconds=1)), NOW)
    assert not expiring_soon(KeyState(None, NOW), NOW)
    assert not expiring_soon(KeyState("key is revoked", NOW + timedelta(days=3)), NOW)
    assert not expiring_soon(KeyState(None, None), NOW)


def test_blocked_at_the_notice_time() -> None:
    """A key blocked now stays blocked; a usable one is blocked at the notice
    time if it expires at or before it, with the expiry in the reason."""
    notice = NOW + timedelta(days=1)
    assert blocked_at(KeyState("key is revoked", None), notice) == "key is revoked"
    assert blocked_at(KeyState(None, notice), notice) == (
        "key expires on 2030-03-05 10:00 UTC, before the notice time"
    )
    assert blocked_at(KeyState(None, notice + timedelta(seconds=1)), notice) is None
    assert blocked_at(KeyState(None, None), notice) is None


def test_the_look_at_recipients_starts_24_hours_before_the_notice() -> None:
    """Before the window: not yet, and when it opens; inside: now; at or
    after the notice time, or with no notice: never."""
    notice = NOW + timedelta(days=2)
    assert notices_to_watch(notice, NOW) == (False, notice - timedelta(hours=24))
    assert notices_to_watch(notice, notice - timedelta(hours=24)) == (True, None)
    assert notices_to_watch(notice, notice) == (False, None)
    assert notices_to_watch(None, NOW) == (False, None)


def test_every_key_in_use_is_watched_but_removed_orgs() -> None:
    """Active and ad hoc orgs' pinned keys, members' keys and the identity
    key are watched; a removed org's key is not."""
    text = (
        org_toml("one", "sec@one.example", "1" * 40)
        + org_toml("two", "sec@two.example", "2" * 40, status="adhoc")
        + org_toml(
            "gone",
            "sec@gone.example",
            "3" * 40,
            status="removed",
            extra='removed = { date = 2026-06-01, reason = "inactive" }',
        )
    )
    orgs = parse_orgs(text, "orgs.toml")
    assert orgs.problems == () and len(orgs.orgs) == 3
    uses = key_uses(orgs, [("4" * 40, "m@wg.example")], "5" * 40)
    assert [(u.holder, u.fingerprint[0], u.label()) for u in uses] == [
        (Holder.ORG, "1", "org one <sec@one.example>"),
        (Holder.ORG, "2", "org two <sec@two.example>"),
        (Holder.MEMBER, "4", "WG member <m@wg.example>"),
        (Holder.IDENTITY, "5", "maild's identity key"),
    ]


def test_at_risk_lists_only_the_recipients_that_would_be_blocked() -> None:
    """Each recipient is judged by its own key; only the blocked are listed."""
    notice = NOW + timedelta(hours=20)
    ok = KeyUse(Holder.ORG, "1" * 40, "one", "sec@one.example")
    short = KeyUse(Holder.ORG, "2" * 40, "two", "sec@two.example")
    states = {ok.fingerprint: KeyState(None, None), short.fingerprint: KeyState(None, NOW)}
    (risk,) = at_risk([ok, short], lambda u: states[u.fingerprint], notice)
    assert risk.use == short and "before the notice time" in risk.reason


def test_alert_ids_change_with_the_expiry_and_the_notice_time() -> None:
    """An extended key, or a moved notice time, is a new thing to alert about."""
    later = NOW + timedelta(days=1)
    assert expiry_about(FPR, NOW) != expiry_about(FPR, later)
    assert at_risk_about("WG-1", NOW) != at_risk_about("WG-1", later)
    assert expiry_about(FPR, NOW) == expiry_about(FPR, NOW.astimezone(timezone(timedelta(hours=1))))


def test_key_alert_names_the_key_its_users_the_expiry_and_what_to_do() -> None:
    """The alert text says which key, whose (every use), when it expires in
    the calendar's zone, and what to do for each kind of holder."""
    uses = [
        KeyUse(Holder.MEMBER, FPR, address="m@wg.example"),
        KeyUse(Holder.IDENTITY, FPR),
    ]
    text = mailtext.key_alert(FPR, uses, NOW + timedelta(days=9), BusinessCalendar())
    assert text.subject == f"maild alert: key {FPR} expires on 2030-03-13 10:00 UTC"
    assert f"Key:      {FPR}" in text.body
    assert "Expires:  Wednesday 2030-03-13 10:00 UTC" in text.body
    assert "Used by:  WG member <m@wg.example>\n          maild's identity key" in text.body
    assert "Ask the member to extend the key" in text.body
    assert "gpg --quick-set-expire" in text.body
