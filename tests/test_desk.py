"""The embargo desk on the in-memory store, with time passed in: what an
operator sees after submit, reschedule, cancel and disclose-now."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from maild.adapters.memstore import MemoryStore
from maild.domain.businessdays import BusinessCalendar
from maild.domain.models import AdvisoryState, MessageState, NewEvent
from maild.domain.orgs import parse_orgs
from maild.service.demo import org_toml
from maild.service.embargo import Desk, Patch, UserError, unbundle

A, B = "A" * 40, "B" * 40
ORGS = org_toml("one", "s@one.example", A) + org_toml("two", "s@two.example", B)
ADVISORY = """+++
title = "Frob overflow"
disclosure = {disclosure}
severity = "{severity}"
component = "compiler"
category = "{category}"
+++
Body text.
"""
DISCLOSURE = datetime(2026, 12, 8, 17, tzinfo=UTC)  # a Tuesday


def make_desk(store: MemoryStore, *, bad_key: str | None = None) -> Desk:
    return Desk(
        store=store,
        calendar=BusinessCalendar(),
        orgs=parse_orgs(ORGS, "orgs.toml"),
        mail_domain="wg.example",
        seal=lambda data: b"SEALED:" + data[::-1],
        key_problem=lambda fpr: "key is revoked" if fpr == bad_key else None,
    )


def advisory(severity: str = "high", category: str = "toolchain") -> str:
    return ADVISORY.format(disclosure=DISCLOSURE.isoformat(), severity=severity, category=category)


def test_accepted_after_notice_time_means_send_now() -> None:
    """Submitted on Friday for a Tuesday disclosure: the notice is due at
    once, and the plan says two business days of notice remain."""
    store = MemoryStore()
    now = datetime(2026, 12, 4, 10, tzinfo=UTC)
    record = make_desk(store).submit(advisory(), "a.md", [], now, "cli:test")
    assert record.plan.notify_at == now
    assert record.plan.business_days == 2
    assert "send now" in record.plan.reason
    assert record.next_action() == ("send notices", now)


def test_submit_seals_text_and_patches_and_holds_blocked_keys() -> None:
    """The stored advisory is sealed (text and patches), and a recipient with
    an unusable key is held as blocked with the reason."""
    store = MemoryStore()
    now = datetime(2026, 11, 24, tzinfo=UTC)
    patch = Patch("fix.patch", b"+fixed\n")
    record = make_desk(store, bad_key=B).submit(advisory(), "a.md", [patch], now, "cli:t")
    stored = store.get_advisory(record.id)
    assert stored is not None and stored.sealed.startswith(b"SEALED:")
    text, patches = unbundle(stored.sealed[len(b"SEALED:") :][::-1])
    assert text == advisory() and patches == [patch]
    states = {m.org: (m.state, m.detail) for m in store.messages(record.id)}
    assert states == {
        "one": (MessageState.QUEUED, None),
        "two": (MessageState.BLOCKED, "key is revoked"),
    }
    assert len({m.message_id for m in store.messages(record.id)}) == 2
    assert [e.kind for e in store.events()] == ["submitted"]


def test_notice_ids_are_unique_and_the_public_ones_tell_nothing_of_ack_tokens() -> None:
    """Every notice gets its own 32-hex Message-ID/ENVID and ack token; the
    Message-ID, which every relay sees, shares no prefix with any ack token
    (ack tokens only travel inside the encryption)."""
    store = MemoryStore()
    now = datetime(2026, 11, 24, tzinfo=UTC)
    orgs = "".join(org_toml(f"o{i}", f"s@o{i}.example", f"{i:040X}") for i in range(50))
    desk = replace(make_desk(store), orgs=parse_orgs(orgs, "orgs.toml"))
    record = desk.submit(advisory(), "a.md", [], now, "cli:t")
    notices = store.messages(record.id)
    assert len(notices) == 50
    ids = [m.envid for m in notices]
    acks = [m.ack_token or "" for m in notices]
    assert len(set(ids) | set(acks)) == 100
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in ids + acks)
    assert all(m.message_id == f"<{m.envid}@wg.example>" for m in notices)
    assert not any(i[:12] == a[:12] for i in ids for a in acks)


def test_no_notice_tier_queues_no_notices() -> None:
    """A crate advisory gets no notices: the next action is disclosure."""
    store = MemoryStore()
    now = datetime(2026, 11, 24, tzinfo=UTC)
    record = make_desk(store).submit(advisory(category="crate"), "a.md", [], now, "cli:t")
    assert store.messages(record.id) == []
    assert record.next_action() == ("disclose", DISCLOSURE)


def test_reschedule_replans_from_the_time_of_the_change() -> None:
    """Moving the disclosure recomputes the plan at the time of the change."""
    store = MemoryStore()
    desk = make_desk(store)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    record = desk.submit(advisory(), "a.md", [], now, "cli:t")
    new = desk.reschedule(record.id, DISCLOSURE + timedelta(days=7), now, "cli:t")
    assert new.plan.notify_at == datetime(2026, 12, 8, 17, tzinfo=UTC)
    assert new.version == record.version + 1
    assert [e.kind for e in store.events(record.id)] == ["submitted", "rescheduled"]


def test_disclose_now_after_notices_cancels_only_unsent_messages() -> None:
    """Ending the embargo early cancels what was not sent, keeps what was,
    and keeps the notice time that really happened."""
    store = MemoryStore()
    desk = make_desk(store)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    record = desk.submit(advisory(), "a.md", [], now, "cli:t")
    notified = replace(record, state=AdvisoryState.NOTIFIED, version=record.version + 1)
    store.update_advisory(notified, NewEvent(now, "test-notified", "test"))
    later = datetime(2026, 12, 3, tzinfo=UTC)
    new = desk.disclose_now(record.id, "exploit seen in the wild", later, "cli:t")
    assert new.plan.disclose_at == later
    assert new.plan.notify_at == record.plan.notify_at
    assert {m.state for m in store.messages(record.id)} == {MessageState.CANCELLED}


def test_changes_to_closed_or_unknown_advisories_are_refused() -> None:
    """A cancelled advisory cannot be rescheduled; an unknown id is named."""
    store = MemoryStore()
    desk = make_desk(store)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    record = desk.submit(advisory(), "a.md", [], now, "cli:t")
    desk.cancel(record.id, now, "cli:t")
    with pytest.raises(UserError, match="it is cancelled"):
        desk.reschedule(record.id, DISCLOSURE, now, "cli:t")
    with pytest.raises(UserError, match="no advisory with id 'nope'"):
        desk.cancel("nope", now, "cli:t")
    assert [e.kind for e in store.events()] == ["submitted", "cancelled"]


def test_reschedule_that_creates_a_notice_adds_the_recipients() -> None:
    """An advisory whose embargo terms allowed no notice gets its notices
    when a later disclosure makes room for one, in the same change."""
    store = MemoryStore()
    desk = make_desk(store)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    text = advisory().replace(
        'category = "toolchain"', 'category = "toolchain"\nnotify_not_before = 2026-12-20T00:00:00Z'
    )
    record = desk.submit(text, "a.md", [], now, "cli:t")
    assert record.plan.notify_at is None and store.messages(record.id) == []
    moved = desk.reschedule(record.id, datetime(2027, 1, 20, 17, tzinfo=UTC), now, "cli:t")
    assert moved.plan.notify_at == datetime(2027, 1, 13, 17, tzinfo=UTC)
    assert {m.org for m in store.messages(record.id)} == {"one", "two"}
    back = desk.reschedule(record.id, DISCLOSURE, now, "cli:t")
    assert back.plan.notify_at is None
    assert {m.state for m in store.messages(record.id)} == {MessageState.CANCELLED}


def test_rescheduling_after_the_notices_keeps_when_they_went_out() -> None:
    """Once notified, a reschedule moves only the disclosure: the plan still
    says when the notices were sent and how much notice they gave."""
    store = MemoryStore()
    desk = make_desk(store)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    record = desk.submit(advisory(), "a.md", [], now, "cli:t")
    notified = replace(record, state=AdvisoryState.NOTIFIED, version=record.version + 1)
    store.update_advisory(notified, NewEvent(now, "test-notified", "test"))
    later = datetime(2026, 12, 7, tzinfo=UTC)
    moved = desk.reschedule(record.id, DISCLOSURE + timedelta(days=7), later, "cli:t")
    assert moved.plan.disclose_at == DISCLOSURE + timedelta(days=7)
    assert moved.plan.notify_at == record.plan.notify_at
    assert moved.plan.business_days == 5


def test_preannounce_none_means_no_preannouncement_time() -> None:
    """`preannounce = "none"` leaves the plan without a pre-announcement."""
    store = MemoryStore()
    text = advisory().replace(
        'category = "toolchain"', 'category = "toolchain"\npreannounce = "none"'
    )
    record = make_desk(store).submit(text, "a.md", [], datetime(2026, 11, 24, tzinfo=UTC), "t")
    assert record.plan.notify_at is not None and record.plan.preannounce_at is None
