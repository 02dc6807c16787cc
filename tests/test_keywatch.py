"""Key health in the daemon, in-process on a controllable clock with real gpg
keys (expiring at set dates), a real SQLite store and a real loopback
smarthost: the daily expiry alert and the alert a day before a notice time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from maild import config as configuration
from maild.adapters.gpg import Keyring
from maild.adapters.sink import RunningSink, start_sink
from maild.domain.models import MessageKind, MessageRecord, MessageState
from maild.service.clock import ManualClock
from maild.service.daemon import build
from maild.service.setup import Setup
from tests.conftest import CLI
from tests.keyfactory import raw_gpg, temp_keyring
from tests.test_dispatch import DISCLOSURE, NOTICE, Harness, armored_part, decrypt_as, parse
from tests.world import World, org_entry

WATCH = NOTICE - timedelta(hours=24)  # 2030-03-04 17:00 UTC
# Absolute expiry times (UTC) of keys made for these tests.
EXPIRIES = {
    "tenday": "20300314T100000",  # 10 days after 2030-03-04 10:00
    "later": "20300503T100000",  # 60 days after it
    "brief": "20300305T120000",  # after WATCH, before NOTICE
}


@pytest.fixture(scope="module")
def dated() -> Iterator[tuple[Keyring, dict[str, str]]]:
    """Org keys that expire at the dates in EXPIRIES (secret keys kept, so a
    test can extend one)."""
    with temp_keyring() as ring:
        fpr = {n: ring.generate(f"{n} <sec@{n}.example>", expire=e) for n, e in EXPIRIES.items()}
        yield ring, fpr


@dataclass
class Start:
    """Starts dispatchers on one world, sink and event loop."""

    world: World
    cli: CLI
    ring: Keyring
    fpr: dict[str, str]
    sink: RunningSink
    loop: asyncio.AbstractEventLoop
    pool: ThreadPoolExecutor
    started: list[Harness] = field(default_factory=list)

    def __call__(self, at: datetime, *names: str) -> Harness:
        """A dispatcher at `at` on the world with the named dated keys' orgs
        added, and an advisory whose notice time is NOTICE."""
        extra = ""
        for name in names:
            key = self.ring.export_public(self.fpr[name])
            (self.world.root / "keys" / f"{name}.asc").write_bytes(key)
            extra += org_entry(name, f"sec@{name}.example", self.fpr[name])
        self.world.write_orgs(self.world.orgs_text + extra)
        self.world.enable_run(self.sink.port)
        advisory = self.world.advisory(disclosure=DISCLOSURE.isoformat())
        result = self.cli("--config", str(self.world.config), "submit", str(advisory))
        assert result.code == 0, result.err
        return self.restart(ManualClock(at))

    def restart(self, clock: ManualClock) -> Harness:
        """Another dispatcher on the same state, as after a restart of maild."""
        setup = Setup(configuration.load(self.world.config))
        h = Harness(self.world, clock, self.sink, build(setup, clock, self.pool), setup, self.loop)
        self.started.append(h)
        return h


@pytest.fixture
def start(world: World, cli: CLI, dated: tuple[Keyring, dict[str, str]]) -> Iterator[Start]:
    loop = asyncio.new_event_loop()
    running = loop.run_until_complete(start_sink(replies=None))
    pool = ThreadPoolExecutor(max_workers=2)
    starter = Start(world, cli, *dated, running, loop, pool)
    try:
        yield starter
    finally:
        for h in starter.started:
            loop.run_until_complete(h.dispatcher.aclose())
            h.setup.__exit__(None, None, None)
        loop.run_until_complete(running.close())
        loop.close()
        pool.shutdown()


def key_alerts(h: Harness) -> list[MessageRecord]:
    """Alerts about no advisory (the daily key check's)."""
    found = h.setup.store.find_messages(kinds=[MessageKind.ALERT])
    return [m for m in found if m.advisory_id is None]


def advisory_alerts(h: Harness) -> list[MessageRecord]:
    (record,) = h.setup.store.list_advisories()
    return [m for m in h.messages(record.id) if m.kind is MessageKind.ALERT]


def read(h: Harness, data: bytes) -> tuple[str, str]:
    """(subject, body) of a message sent to the member, decrypted with the
    member's key alone; it must be signed by maild's identity key."""
    plain, signer = decrypt_as(h, "member", armored_part(data))
    assert signer == h.world.identity
    inner = parse(plain)
    return str(inner["Subject"]), inner.get_content()


def test_a_key_expiring_within_30_days_is_alerted_once(
    start: Start, dated: tuple[Keyring, dict[str, str]]
) -> None:
    """The daily check alerts the WG (signed, encrypted to the member) once
    for an org key expiring in 10 days, naming the key, its org and address,
    the expiry and what to do; nothing for a key expiring in 60 days; not
    again later that day, the next day, or after a restart."""
    _, fpr = dated
    h = start(datetime(2030, 3, 4, 10, tzinfo=UTC), "tenday", "later")
    h.tick()
    (row,) = key_alerts(h)
    assert row.state is MessageState.ACCEPTED and row.address == "m@wg.example"
    (sent,) = h.received("m@wg.example")
    assert fpr["tenday"].encode() not in sent  # the outer headers say nothing
    subject, body = read(h, sent)
    assert subject == f"maild alert: key {fpr['tenday']} expires on 2030-03-14 10:00 UTC"
    assert "org tenday <sec@tenday.example>" in body
    assert "Ask the organisation for an extended or new key" in body
    assert fpr["later"] not in body
    h.clock.now += timedelta(hours=5)
    h.tick()
    h.clock.now += timedelta(days=1)
    h.tick()
    assert h.setup.store.get_meta("key-check") == "2030-03-05"
    again = start.restart(h.clock)
    again.tick()
    again.clock.now += timedelta(days=1)
    again.tick()
    assert len(key_alerts(again)) == 1 and len(again.received("m@wg.example")) == 1


def test_an_extended_key_is_alerted_again_for_its_new_expiry(start: Start, world: World) -> None:
    """Extending a key that is still within 30 days of expiry (and restarting
    maild with it) brings one new alert for the new expiry date."""
    with temp_keyring() as ring:
        fpr = ring.generate("Stretch <sec@stretch.example>", expire="20300314T100000")
        h = start(datetime(2030, 3, 4, 10, tzinfo=UTC))
        (world.root / "keys" / "stretch.asc").write_bytes(ring.export_public(fpr))
        world.write_orgs(world.orgs_text + org_entry("stretch", "sec@stretch.example", fpr))
        h = start.restart(h.clock)
        h.tick()
        assert len(key_alerts(h)) == 1
        raw_gpg(ring, "--quick-set-expire", fpr, "20300325T100000")
        raw_gpg(ring, "--quick-set-expire", fpr, "20300325T100000", "*")
        (world.root / "keys" / "stretch.asc").write_bytes(ring.export_public(fpr))
        h.clock.now += timedelta(days=1)
        h = start.restart(h.clock)
        h.tick()
    assert len(key_alerts(h)) == 2
    _, newest = read(h, h.received("m@wg.example")[-1])
    assert "2030-03-25 10:00" in newest and "org stretch <sec@stretch.example>" in newest


def test_recipients_blocked_at_the_notice_time_are_listed_a_day_before(
    start: Start, dated: tuple[Keyring, dict[str, str]]
) -> None:
    """24 hours before the notice time (not before: the daemon wakes for it)
    the WG gets one alert for the advisory listing the recipient whose key
    expires before the notice time, and no other; it is not repeated, also
    after a restart."""
    _, fpr = dated
    h = start(WATCH - timedelta(minutes=1), "brief")
    assert h.tick() == WATCH
    assert advisory_alerts(h) == []
    before = len(h.received("m@wg.example"))  # the daily check's expiry alert
    h.clock.now = WATCH
    h.tick()
    (row,) = advisory_alerts(h)
    assert row.state is MessageState.ACCEPTED and row.fingerprint is not None
    sent = h.received("m@wg.example")[before:]
    assert len(sent) == 1
    subject, body = read(h, sent[0])
    assert subject == "maild alert: recipients blocked at the notice time: 1"
    assert "Tuesday 2030-03-05 17:00 UTC" in body
    assert f"org brief <sec@brief.example>: key {fpr['brief']}: key expires on" in body
    assert "before the notice time" in body and "sec@good.example" not in body
    h.clock.now = WATCH + timedelta(hours=1)
    h.tick()
    again = start.restart(h.clock)
    again.tick()
    assert len(advisory_alerts(again)) == 1
    assert len(again.received("m@wg.example")) == before + 1


def test_nothing_is_listed_when_every_recipient_can_get_its_notice(start: Start) -> None:
    """With every recipient's key usable at the notice time there is no
    alert a day before it."""
    h = start(WATCH, "later")
    h.tick()
    h.clock.now += timedelta(minutes=5)
    h.tick()
    assert advisory_alerts(h) == [] and h.received("m@wg.example") == []


def test_an_alert_about_no_advisory_is_retried_like_a_reply(start: Start) -> None:
    """A key alert the smarthost defers is retried after the backoff (the
    daemon wakes for it), not before, and then recorded accepted."""
    at = datetime(2030, 3, 1, 10, tzinfo=UTC)
    h = start(at, "tenday")
    h.sink.sink.replies = lambda rcpt, n: "451 4.3.0 try later" if n == 1 else None
    assert h.tick() == at + timedelta(minutes=1)
    (row,) = key_alerts(h)
    assert row.state is MessageState.DEFERRED and row.attempts == 1 and row.smtp_code == 451
    h.clock.now = at + timedelta(seconds=59)
    h.tick()
    assert h.received("m@wg.example") == []
    h.clock.now = at + timedelta(minutes=1)
    h.tick()
    (row,) = key_alerts(h)
    assert row.state is MessageState.ACCEPTED and row.attempts == 2
    assert len(h.received("m@wg.example")) == 1
