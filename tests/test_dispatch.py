"""The dispatcher in-process on a controllable clock, with real gpg keys, a
real SQLite store and a real loopback smarthost: what recipients receive,
and when."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from maild import config as configuration
from maild.adapters.gpg import GpgError, Keyring
from maild.adapters.sink import RunningSink, start_sink
from maild.adapters.smtp_out import Envelope, SendResult
from maild.domain.models import MessageKind, MessageState
from maild.service import dispatch
from maild.service.clock import ManualClock
from maild.service.compose import Composer
from maild.service.daemon import build
from maild.service.dispatch import Dispatcher
from maild.service.setup import Setup
from tests.conftest import CLI
from tests.keyfactory import export_secret, raw_gpg, temp_keyring
from tests.world import World, org_entry


@dataclass
class Harness:
    world: World
    clock: ManualClock
    sink: RunningSink
    dispatcher: Dispatcher
    setup: Setup
    loop: asyncio.AbstractEventLoop

    def tick(self) -> datetime | None:
        return self.loop.run_until_complete(self.dispatcher.tick())

    def received(self, to: str) -> list[bytes]:
        return [r.data for r in self.sink.sink.received if to in r.rcpt_tos]

    def messages(self, advisory_id: str) -> list[Any]:
        return self.setup.store.messages(advisory_id)

    def advisory(self, advisory_id: str) -> Any:
        return self.setup.store.get_advisory(advisory_id)


DISCLOSURE = datetime(2030, 3, 12, 17, tzinfo=UTC)  # a Tuesday
NOTICE = datetime(2030, 3, 5, 17, tzinfo=UTC)


@pytest.fixture
def harness(world: World, cli: CLI) -> Iterator[Harness]:
    """A world with an advisory submitted for DISCLOSURE, a sink, and a
    dispatcher whose clock starts a day before the notice time."""
    loop = asyncio.new_event_loop()
    running = loop.run_until_complete(start_sink(replies=None))
    world.enable_run(running.port)
    path = world.advisory(disclosure=DISCLOSURE.isoformat(), cve='["CVE-2030-0001"]')
    patch = world.root / "fix.patch"
    patch.write_bytes(b"--- a/lib.rs\n+++ b/lib.rs\n+PATCH-LINE\n")
    result = cli("--config", str(world.config), "submit", str(path), "--patch", str(patch))
    assert result.code == 0, result.err
    clock = ManualClock(NOTICE - timedelta(days=1))
    setup = Setup(configuration.load(world.config))
    pool = ThreadPoolExecutor(max_workers=2)
    dispatcher = build(setup, clock, pool)
    try:
        yield Harness(world, clock, running, dispatcher, setup, loop)
    finally:
        loop.run_until_complete(dispatcher.aclose())
        loop.run_until_complete(running.close())
        loop.close()
        pool.shutdown()
        setup.__exit__(None, None, None)


def the_id(h: Harness) -> str:
    (record,) = h.setup.store.list_advisories()
    return record.id


def decrypt_as(h: Harness, name: str, data: bytes) -> tuple[bytes, str | None]:
    """Decrypt with one organisation's secret key alone."""
    with Keyring(h.world.keys.home) as all_keys, temp_keyring() as ring:
        secret = ring.home / "secret.asc"
        secret.write_bytes(export_secret(all_keys, h.world.keys.fpr[name]))
        raw_gpg(ring, "--import", str(secret))
        with Keyring(h.world.root / "state" / "gnupg") as identity:
            ring.import_key(identity.export_public(h.world.identity))
        return ring.decrypt_verify(data)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def armored_part(data: bytes) -> bytes:
    found = re.search(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", data, re.S)
    assert found is not None
    return found.group(0)


def test_notices_are_prepared_ahead_and_nothing_is_sent_early(harness: Harness) -> None:
    """A day before the notice time every notice is already encrypted and
    stored, the smarthost has received nothing, and the advisory's text is
    nowhere in the database in clear (the disclosure is built at its time)."""
    next_at = harness.tick()
    adv = the_id(harness)
    notices = [m for m in harness.messages(adv) if m.kind is MessageKind.NOTICE]
    assert len(notices) == 2
    assert all(harness.setup.store.payload(m.message_id) for m in notices)
    assert harness.sink.sink.received == []
    assert next_at == NOTICE
    stored = b"".join(p.read_bytes() for p in harness.world.database.parent.glob("maild.db*"))
    assert b"SECRET-WORDS-42" not in stored  # the disclosure is not prepared ahead
    (disclosure,) = [m for m in harness.messages(adv) if m.kind is MessageKind.DISCLOSURE]
    assert harness.setup.store.payload(disclosure.message_id) is None


@pytest.mark.parametrize("batch", [dispatch.PAYLOAD_BATCH, 1])
def test_each_org_gets_its_own_encrypted_signed_notice(
    harness: Harness, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the notice time each org address receives one notice that decrypts
    with its own key and no other, is signed by the identity key, carries the
    advisory, the patch and the disclosure time, and leaks nothing outside;
    also when the release reads the prepared bytes one message at a time."""
    monkeypatch.setattr(dispatch, "PAYLOAD_BATCH", batch)
    harness.tick()
    harness.clock.now = NOTICE
    harness.tick()
    (good,) = harness.received("sec@good.example")
    (good2,) = harness.received("sec@good2.example")
    outer = parse(good)
    assert outer["Subject"] == "Embargoed security notice"
    outer_headers = good.split(b"\r\n\r\n", 1)[0].decode()
    for word in ("frobnicator", "CVE-2030", "standard library", "WG-"):
        assert word not in outer_headers
    assert outer.get_content_type() == "multipart/encrypted"
    plain, signer = decrypt_as(harness, "good", armored_part(good))
    assert signer == harness.world.identity
    inner = parse(plain)
    assert "frobnicator" in inner["Subject"]
    text = plain.decode("utf-8", "replace")
    assert "SECRET-WORDS-42" in text and "2030-03-12 17:00" in text
    assert any(p.get_filename() == "fix.patch" for p in inner.walk())
    with pytest.raises(GpgError):
        decrypt_as(harness, "good2", armored_part(good))
    assert decrypt_as(harness, "good2", armored_part(good2))[1] == harness.world.identity
    assert harness.received("sec@adhoc.example") == []


def test_preannouncement_is_public_signed_and_says_only_when_and_what(harness: Harness) -> None:
    """The pre-announcement goes out with the notices, signed, with the
    planned date, time and zone, severity and component, never the title."""
    harness.tick()
    harness.clock.now = NOTICE
    harness.tick()
    (pre,) = harness.received("announce@lists.example")
    msg = parse(pre)
    assert msg.get_content_type() == "multipart/signed"
    text = pre.decode()
    assert "2030-03-12 17:00" in text and "UTC" in text
    assert "high" in text and "standard library" in text
    assert "frobnicator" not in text and "SECRET-WORDS" not in text
    adv = harness.advisory(the_id(harness))
    assert adv.state.value == "notified"
    blog = list((harness.world.root / "blog").glob("*.md"))
    assert len(blog) == 1 and "frobnicator" not in blog[0].read_text()


def test_disclosure_publishes_the_advisory_signed(harness: Harness) -> None:
    """At disclosure the advisory itself goes to the announce list, signed,
    and the advisory is marked disclosed."""
    harness.tick()
    harness.clock.now = NOTICE
    harness.tick()
    harness.clock.now = DISCLOSURE - timedelta(seconds=1)
    harness.tick()
    assert len(harness.received("announce@lists.example")) == 1
    harness.clock.now = DISCLOSURE
    harness.tick()
    _, disclosed = harness.received("announce@lists.example")
    assert b"SECRET-WORDS-42" in disclosed
    assert parse(disclosed).get_content_type() == "multipart/signed"
    assert harness.advisory(the_id(harness)).state.value == "disclosed"


def test_receipts_hold_the_smarthost_queue_id(harness: Harness) -> None:
    """Every accepted message records the smarthost's reply with its queue id."""
    harness.tick()
    harness.clock.now = NOTICE
    harness.tick()
    accepted = [m for m in harness.messages(the_id(harness)) if m.state is MessageState.ACCEPTED]
    assert len(accepted) == 3
    queue_ids = {r.queue_id for r in harness.sink.sink.received}
    for m in accepted:
        assert m.smtp_code == 250 and m.attempts == 1 and m.sent_at == NOTICE
        assert any(q in (m.smtp_response or "") for q in queue_ids)


def test_no_message_goes_on_the_wire_before_its_claim_is_on_disk(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each message is `sending` in the database, flushed to disk, before its
    SMTP transaction starts (so a crash, even of the machine, after it went
    out finds it `sending` and resends it flagged as a possible duplicate),
    and its outcome is flushed before the release ends."""
    store = harness.setup.store
    flushed: list[set[str]] = []  # at each flush: the envids then `sending`
    real_sync = store.sync

    def sync() -> None:
        real_sync()
        found = store.find_messages(states=[MessageState.SENDING])
        flushed.append({m.envid for m in found})

    monkeypatch.setattr(store, "sync", sync)
    smarthost = harness.dispatcher.smarthost
    real_send = smarthost.send
    on_the_wire: list[str] = []

    async def send(envelope: Envelope) -> SendResult:
        assert flushed and envelope.envid in flushed[-1], "sent before its claim was flushed"
        on_the_wire.append(envelope.envid or "")
        return await real_send(envelope)

    monkeypatch.setattr(smarthost, "send", send)
    harness.tick()
    harness.clock.now = NOTICE
    flushed.clear()
    harness.tick()
    assert len(on_the_wire) == 3
    assert flushed[-1] == set()  # the last outcome is on disk: nothing left `sending`
    states = {m.envid: m.state for m in harness.messages(the_id(harness))}
    assert all(states[e] is MessageState.ACCEPTED for e in on_the_wire)


def test_a_clock_stepped_back_never_sends_early(harness: Harness) -> None:
    """If the wall clock goes back between planning and sending, nothing is
    sent until the notice time really comes."""
    harness.tick()
    harness.clock.now = NOTICE
    harness.dispatcher.clock = lambda: NOTICE - timedelta(hours=1)
    harness.tick()
    assert harness.sink.sink.received == []
    harness.dispatcher.clock = harness.clock
    harness.tick()
    assert len(harness.sink.sink.received) == 3


def test_blocked_recipient_gets_nothing_and_the_wg_is_alerted(
    harness: Harness, world: World
) -> None:
    """A recipient whose key was revoked gets nothing at all; each WG member
    gets alerts encrypted to their own key (here two: the blocked notice's,
    and, as the notice time is a day away, the list of who is blocked then)."""
    world.add_key("revoked")
    world.write_orgs(
        world.orgs_text + org_entry("rev", "sec@revoked.example", world.keys.fpr["revoked"])
    )
    fresh = Setup(configuration.load(world.config))
    harness.dispatcher = build(fresh, harness.clock, ThreadPoolExecutor(max_workers=2))
    harness.tick()
    harness.clock.now = NOTICE
    harness.tick()
    assert harness.received("sec@revoked.example") == []
    rev = [m for m in harness.messages(the_id(harness)) if m.org == "rev"]
    assert [m.state for m in rev] == [MessageState.BLOCKED] and "revoked" in (rev[0].detail or "")
    alerts = [
        decrypt_as(harness, "member", armored_part(a)) for a in harness.received("m@wg.example")
    ]
    assert [signer for _, signer in alerts] == [world.identity] * 2
    subjects = sorted(str(parse(plain)["Subject"]) for plain, _ in alerts)
    assert subjects == [
        "maild alert: notice to rev <sec@revoked.example> blocked",
        "maild alert: recipients blocked at the notice time: 1",
    ]
    fresh.__exit__(None, None, None)


def test_deferred_then_accepted_with_backoff(harness: Harness) -> None:
    """A 4xx answer defers the notice; it is retried a minute later and then
    accepted, with two attempts on its receipt."""
    harness.sink.sink.replies = lambda rcpt, n: (
        "451 4.3.0 try later" if (rcpt == "sec@good.example" and n == 1) else None
    )
    harness.tick()
    harness.clock.now = NOTICE
    harness.tick()
    (m,) = [m for m in harness.messages(the_id(harness)) if m.address == "sec@good.example"]
    assert m.state is MessageState.DEFERRED and m.smtp_code == 451
    assert m.next_attempt_at == NOTICE + timedelta(minutes=1)
    harness.clock.now = NOTICE + timedelta(seconds=59)
    harness.tick()
    assert harness.received("sec@good.example") == []
    harness.clock.now = NOTICE + timedelta(minutes=1)
    harness.tick()
    (m,) = [m for m in harness.messages(the_id(harness)) if m.address == "sec@good.example"]
    assert m.state is MessageState.ACCEPTED and m.attempts == 2
    assert len(harness.received("sec@good.example")) == 1


def test_a_retry_that_falls_due_while_a_pass_sends_is_not_left_for_later(
    harness: Harness,
) -> None:
    """Retries a few seconds apart: when a pass spends long enough sending the
    first that the others fall due meanwhile, it asks to be woken at once (a
    time already past), not at the regular wake-up 30 s later; the next pass
    sends them."""
    adv = the_id(harness)

    def slow(reply: str | None, seconds: int) -> Callable[[str, int], str | None]:
        def replies(rcpt: str, n: int) -> str | None:
            harness.clock.now += timedelta(seconds=seconds)  # the transaction takes this long
            return reply

        return replies

    harness.tick()
    harness.clock.now = NOTICE
    harness.sink.sink.replies = slow("451 4.3.0 try later", 1)
    harness.tick()
    retries = sorted(m.next_attempt_at for m in harness.messages(adv) if m.next_attempt_at)
    assert len(retries) == 3 and retries[0] < retries[-1] < retries[0] + timedelta(seconds=10)
    harness.clock.now = retries[0]
    harness.sink.sink.replies = slow(None, 10)
    wake = harness.tick()
    waiting = [m for m in harness.messages(adv) if m.state is MessageState.DEFERRED]
    assert waiting and wake is not None and wake <= harness.clock.now
    harness.tick()
    accepted = [m for m in harness.messages(adv) if m.state is MessageState.ACCEPTED]
    assert len(accepted) == 3


def test_permanent_failure_is_recorded_and_alerted(harness: Harness) -> None:
    """A 5xx answer fails the notice for that org only and alerts the WG."""
    harness.sink.sink.replies = lambda rcpt, n: (
        "550 5.1.1 no such user" if (rcpt == "sec@good.example") else None
    )
    harness.tick()
    harness.clock.now = NOTICE
    harness.tick()
    states = {m.address: m.state for m in harness.messages(the_id(harness))}
    assert states["sec@good.example"] is MessageState.FAILED
    assert states["sec@good2.example"] is MessageState.ACCEPTED
    harness.tick()
    assert len(harness.received("m@wg.example")) == 1


def test_crash_mid_send_resends_with_the_same_ids_flagged(harness: Harness) -> None:
    """A message found 'sending' after a crash is sent again with the same
    Message-ID and flagged as a possible duplicate."""
    harness.tick()
    adv = the_id(harness)
    (m, *_) = [m for m in harness.messages(adv) if m.kind is MessageKind.NOTICE]
    harness.setup.store.update_messages([replace(m, state=MessageState.SENDING, attempts=1)])
    assert harness.dispatcher.recover() == 1
    harness.clock.now = NOTICE
    harness.tick()
    (after,) = [x for x in harness.messages(adv) if x.message_id == m.message_id]
    assert after.possible_duplicate and after.state is MessageState.ACCEPTED
    assert after.attempts == 2
    (data,) = harness.received(m.address)
    assert parse(data)["Message-ID"] == m.message_id


def test_removed_org_gets_nothing(harness: Harness, world: World) -> None:
    """An org removed from the list before the notice time is cancelled."""
    harness.tick()
    world.write_orgs(
        world.orgs_text.replace(
            'status = "active"',
            'status = "removed"\nremoved = { date = 2026-06-01, reason = "inactive" }',
            1,
        )
    )
    fresh = Setup(configuration.load(world.config))
    harness.dispatcher = build(fresh, harness.clock, ThreadPoolExecutor(max_workers=2))
    harness.clock.now = NOTICE
    harness.tick()
    assert harness.received("sec@good.example") == []
    (m,) = [m for m in harness.messages(the_id(harness)) if m.org == "good"]
    assert m.state is MessageState.CANCELLED
    fresh.__exit__(None, None, None)


def notified(h: Harness) -> str:
    """Take the harness's advisory through its notice time."""
    h.tick()
    h.clock.now = NOTICE
    h.tick()
    assert h.advisory(the_id(h)).state.value == "notified"
    return the_id(h)


def test_reschedule_after_notices_sends_updates_and_a_revised_preannouncement(
    harness: Harness, cli: CLI
) -> None:
    """Moving the disclosure after the notices went out sends each notified
    org an encrypted update with the new date, and the announce list a
    revised, signed pre-announcement."""
    adv = notified(harness)
    harness.clock.now = NOTICE + timedelta(hours=1)
    moved = "2030-03-19T17:00:00+00:00"
    assert (
        cli("--config", str(harness.world.config), "reschedule", adv, "--disclosure", moved).code
        == 0
    )
    harness.tick()
    _, update = harness.received("sec@good.example")
    plain, signer = decrypt_as(harness, "good", armored_part(update))
    assert signer == harness.world.identity
    assert b"EMBARGO UPDATE" in plain and b"2030-03-19 17:00" in plain
    assert parse(update)["Subject"] == "Embargoed security notice"
    _, revised = harness.received("announce@lists.example")
    assert b"Revised: Security release planned for 2030-03-19 17:00" in revised
    assert b"frobnicator" not in revised
    updates = [m for m in harness.messages(adv) if m.purpose.value == "update"]
    assert {m.state for m in updates} == {MessageState.ACCEPTED} and len(updates) == 3


def test_cancel_after_notices_sends_an_encrypted_withdrawal(harness: Harness, cli: CLI) -> None:
    """Cancelling after the notices went out tells each notified org, in an
    encrypted message, that the advisory is withdrawn; nothing public is sent
    and the disclosure never goes out."""
    adv = notified(harness)
    assert cli("--config", str(harness.world.config), "cancel", adv).code == 0
    harness.tick()
    _, withdrawal = harness.received("sec@good.example")
    plain, _ = decrypt_as(harness, "good", armored_part(withdrawal))
    assert b"ADVISORY WITHDRAWN" in plain
    harness.clock.now = DISCLOSURE
    harness.tick()
    assert len(harness.received("announce@lists.example")) == 1  # the pre-announcement only
    disclosure = [m for m in harness.messages(adv) if m.kind is MessageKind.DISCLOSURE]
    assert {m.state for m in disclosure} == {MessageState.CANCELLED}


def test_a_follow_up_to_a_key_expired_since_is_blocked_and_alerted(
    harness: Harness, world: World, cli: CLI
) -> None:
    """An org whose key expired after it got the notice gets no withdrawal (it
    cannot be encrypted to that key): the withdrawal is blocked and the WG
    alerted, rather than left queued for ever. (Found by the soak benchmark.)"""
    with temp_keyring() as ring:
        # gpg reads a bare date as noon UTC: after NOTICE, before the cancel below.
        brief = ring.generate("Brief <sec@brief.example>", expire="2030-03-06")
        (world.root / "keys" / "brief.asc").write_bytes(ring.export_public(brief))
    world.write_orgs(world.orgs_text + org_entry("brief", "sec@brief.example", brief))
    fresh = Setup(configuration.load(world.config))
    harness.dispatcher = build(fresh, harness.clock, ThreadPoolExecutor(max_workers=2))
    adv = notified(harness)
    assert len(harness.received("sec@brief.example")) == 1
    assert cli("--config", str(world.config), "cancel", adv).code == 0
    harness.clock.now = NOTICE + timedelta(days=2)
    harness.tick()
    assert len(harness.received("sec@brief.example")) == 1
    (withdrawal,) = [
        m for m in harness.messages(adv) if m.org == "brief" and m.purpose.value == "withdrawal"
    ]
    assert withdrawal.state is MessageState.BLOCKED and "expired" in (withdrawal.detail or "")
    assert len(harness.received("sec@good.example")) == 2  # the others got theirs
    alerts = [
        decrypt_as(harness, "member", armored_part(alert))[0]
        for alert in harness.received("m@wg.example")
    ]  # the daily key check also warns of brief's key expiring
    assert any(b"withdrawal" in p and b"blocked" in p for p in alerts)
    fresh.__exit__(None, None, None)


def test_stopping_starts_no_new_transaction(harness: Harness) -> None:
    """Once maild is told to stop, due messages stay queued for the next
    start instead of being sent."""
    harness.tick()
    harness.clock.now = NOTICE
    harness.dispatcher.stopping = lambda: True
    harness.tick()
    assert harness.sink.sink.received == []
    adv = the_id(harness)
    notices = [m for m in harness.messages(adv) if m.kind is MessageKind.NOTICE]
    assert {m.state for m in notices} == {MessageState.QUEUED}
    harness.dispatcher.stopping = lambda: False
    harness.tick()
    assert len(harness.received("sec@good.example")) == 1


def test_a_deferred_disclosure_is_retried_until_it_goes_out(harness: Harness) -> None:
    """A 4xx on the disclosure keeps the advisory open and the disclosure is
    retried; only once it is accepted is the advisory marked disclosed."""
    harness.sink.sink.replies = lambda rcpt, n: (
        "451 4.3.0 try later" if rcpt == "announce@lists.example" and n == 2 else None
    )
    adv = notified(harness)
    harness.clock.now = DISCLOSURE
    assert harness.tick() == DISCLOSURE + timedelta(minutes=1)
    assert harness.advisory(adv).state.value == "notified"
    harness.clock.now = DISCLOSURE + timedelta(minutes=1)
    harness.tick()
    assert harness.advisory(adv).state.value == "disclosed"
    assert b"SECRET-WORDS-42" in harness.received("announce@lists.example")[-1]


def test_the_daemon_wakes_for_the_disclosure_before_it_is_prepared(harness: Harness) -> None:
    """Once notified, the next wake-up is the disclosure time, although the
    disclosure is only built at that time."""
    notified(harness)
    assert harness.tick() == DISCLOSURE


def test_a_message_that_cannot_be_prepared_never_makes_the_loop_spin(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the advisory cannot be unsealed, nothing is sent and the next
    wake-up is never in the past (the regular wake-up retries it)."""

    def broken(self: Composer, record: object) -> object:
        raise GpgError("decryption failed")

    monkeypatch.setattr(Composer, "open", broken)
    harness.clock.now = DISCLOSURE + timedelta(hours=1)
    wake = harness.tick()
    assert wake is None or wake > harness.clock.now
    assert harness.sink.sink.received == []


def test_a_cancel_during_the_release_stops_what_was_not_yet_sent(
    harness: Harness, cli: CLI
) -> None:
    """`maild cancel` while notices are on the wire: the notice in flight
    completes and its org gets a withdrawal; the notices and pre-announcement
    not yet started are never sent and stay cancelled."""
    adv = the_id(harness)
    harness.dispatcher.connections = 1  # one transaction at a time: a clear order
    cancelled: list[int] = []

    def cancel_on_first(rcpt: str, n: int) -> None:
        if not cancelled:
            cancelled.append(cli("--config", str(harness.world.config), "cancel", adv).code)
        return None

    harness.sink.sink.replies = cancel_on_first
    harness.tick()
    harness.clock.now = NOTICE
    harness.tick()
    assert cancelled == [0]
    first = harness.sink.sink.received[0].rcpt_tos[0]
    harness.tick()
    states = {(m.address, m.purpose.value): m.state for m in harness.messages(adv)}
    assert states[(first, "original")] is MessageState.ACCEPTED
    assert states[(first, "withdrawal")] is MessageState.ACCEPTED
    others = [k for k in states if k[0] != first and k[1] == "original"]
    assert others and all(states[k] is MessageState.CANCELLED for k in others)
    assert [r.rcpt_tos[0] for r in harness.sink.sink.received] == [first, first]


def test_the_sync_is_skipped_only_while_nothing_it_judged_changed(
    harness: Harness, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first tick, a tick brings the advisories in line with the orgs
    list and keys again only when the CLI committed a change, the keyring
    changed, or a key it judged has expired since; a key expiring between two
    ticks blocks its notice (and alerts the WG) before the notice time."""
    syncs: list[str] = []
    real_sync = harness.dispatcher._sync
    monkeypatch.setattr(
        harness.dispatcher, "_sync", lambda r, now: syncs.append(r.id) or real_sync(r, now)
    )
    adv = the_id(harness)
    harness.tick()
    harness.tick()
    assert syncs.count(adv) == 1
    result = cli("--config", str(harness.world.config), "submit", str(harness.world.advisory()))
    assert result.code == 0, result.err
    harness.tick()
    assert syncs.count(adv) == 2  # the CLI committed a change
    harness.setup.keyring.refresh()
    harness.tick()
    assert syncs.count(adv) == 3
    harness.tick()
    assert syncs.count(adv) == 3

    good = harness.world.keys.fpr["good"]
    expires = harness.clock.now + timedelta(hours=1)
    real_health = harness.dispatcher.key_health

    def health(fpr: str) -> Any:
        got = real_health(fpr)
        if fpr != good:
            return got
        gone = harness.clock.now >= expires
        return replace(got, expires_at=expires, expired=gone, can_encrypt=not gone)

    harness.dispatcher.key_health = health
    harness.dispatcher.resync()
    harness.tick()
    assert syncs.count(adv) == 4
    alerts = len(harness.received("m@wg.example"))
    harness.clock.now = expires
    harness.tick()
    assert syncs.count(adv) == 5  # the key expired since the last sync: judged again
    (m,) = [m for m in harness.messages(adv) if m.address == "sec@good.example"]
    assert m.state is MessageState.BLOCKED
    assert harness.received("sec@good.example") == []
    assert len(harness.received("m@wg.example")) == alerts + 1
