"""Network and clock faults on the real `maild run`: a smarthost that is down
for a while, a storm of 4xx replies, a 5xx for one organisation, and a wall
clock stepped back an hour and forward a day.

The daemon's wall clock is faked with libfaketime (Debian package
`faketime`; its thread-safe build, as the daemon runs gpg from a thread pool):
the daemon reads an offset from the real clock out of a file on every call, so
a test steps the daemon's time by rewriting the file, while the daemon's
monotonic clock (asyncio's timers) stays real. gpg, started by the daemon,
inherits the faked clock. The smarthost and the test itself run on the real
clock; receipts record times in the daemon's.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maild.adapters.store import SqliteStore
from maild.domain.models import AdvisoryRecord, MessageKind, MessageRecord, MessageState
from maild.service.scheduler import backoff
from tests.conftest import CLI
from tests.daemonrig import Process, decrypts_for, mails, receipts, to, wait_for
from tests.world import World, free_port

LIBFAKETIME = next(
    iter(
        sorted(
            glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
            + glob.glob("/usr/lib/faketime/libfaketimeMT.so.1")
        )
    ),
    None,
)
needs_faketime = pytest.mark.skipif(
    LIBFAKETIME is None and not os.environ.get("CI"),
    reason="libfaketime (Debian package 'faketime') is not installed; CI installs it",
)

ANNOUNCE = "announce@lists.example"
ORGS = ("sec@good.example", "sec@good2.example")
DISCLOSURE = MessageKind.DISCLOSURE
DUE = (MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT)  # what goes out at notice time
SLOW = 60.0  # seconds: an upper bound for a daemon step that runs gpg, never a pacing sleep

# libfaketime 0.9.10 breaks Python 3.11's time.sleep() when the monotonic clock
# is not faked (clock_nanosleep with TIMER_ABSTIME gets a negative time: EINVAL,
# https://github.com/wolfcw/libfaketime/issues/426); subprocess's timed waits use
# it. Loaded into the faked daemon only, this sleeps on select() instead (the
# same relative wait on the real clock) when, and only when, the bug is there.
SHIM = """\
import select
import time

def _sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)

try:
    time.sleep(0.001)
except OSError:
    time.sleep = _sleep
"""


class DaemonClock:
    """The faked wall clock of `maild run`: an offset in whole seconds from
    the real clock, in a file libfaketime reads on every call. Replaced
    atomically, so the daemon never reads half a line."""

    def __init__(self, path: Path, start: datetime) -> None:
        self.path = path
        self.offset = 0
        self.set(start)

    def set(self, when: datetime) -> None:
        """Make the daemon's clock read `when` now (to the second) and run on."""
        self._write(round((when - datetime.now(UTC)).total_seconds()))

    def step(self, seconds: int) -> None:
        """Step the daemon's clock by `seconds` (negative: back)."""
        self._write(self.offset + seconds)

    def now(self) -> datetime:
        """What the daemon's clock reads now."""
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def env(self) -> dict[str, str]:
        if LIBFAKETIME is None:
            pytest.fail("CI is set but libfaketime is not installed (apt-get install faketime)")
        shim = self.path.parent / "faketime-shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(SHIM, encoding="utf-8")
        return {
            "PYTHONPATH": str(shim),
            "LD_PRELOAD": LIBFAKETIME,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
        }

    def _write(self, offset: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset:+d}\n", encoding="ascii")
        tmp.replace(self.path)
        self.offset = offset


class FakedProcess(Process):
    """`Process` with extra environment variables."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=self.handle, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )


class Rig:
    """`maild run` on a faked clock, and loopback smarthosts on chosen ports."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.started: list[Process] = []

    def sink(self, port: int, script: dict[str, list[str | None]] | None = None) -> int:
        """Start the loopback smarthost on `port`, answering as `script` says;
        returns the port."""
        args = [sys.executable, "-m", "maild.adapters.sink", "--port", str(port)]
        args += ["--maildir", str(self.world.root / "maildir")]
        if script is not None:
            path = self.world.root / f"script-{port}.json"
            path.write_text(json.dumps(script), encoding="utf-8")
            args += ["--script", str(path)]
        proc = Process(args, self.world.root / f"sink-{len(self.started)}.log")
        self.started.append(proc)
        wait_for("the sink to listen", lambda: "listening on" in proc.text())
        return port

    def daemon(self, smtp_port: int, clock: DaemonClock | None = None) -> Process:
        """`maild run` sending to `smtp_port`, on `clock` (None: the real one)."""
        self.world.enable_run(smtp_port)
        args = [sys.executable, "-m", "maild", "--config", str(self.world.config), "run"]
        log = self.world.root / f"daemon-{len(self.started)}.log"
        proc = FakedProcess(args, log, clock.env() if clock else {})
        self.started.append(proc)
        wait_for("the daemon to start", lambda: '"event": "started"' in proc.text(), SLOW)
        return proc

    def close(self) -> None:
        for proc in self.started:
            if proc.proc.poll() is None:
                proc.stop(signal.SIGKILL)
            # libfaketime leaves its shared memory behind when Python exits.
            for name in (f"faketime_shm_{proc.proc.pid}", f"sem.faketime_sem_{proc.proc.pid}"):
                Path("/dev/shm", name).unlink(missing_ok=True)


@pytest.fixture
def rig(world: World) -> Iterator[Rig]:
    r = Rig(world)
    try:
        yield r
    finally:
        r.close()


def submit(cli: CLI, world: World, disclosure: datetime, **fields: str) -> AdvisoryRecord:
    """Submit an advisory with the CLI (on the real clock); its stored record."""
    path = world.advisory(
        name=f"adv-{disclosure:%Y%m%d%H%M%S}.md", disclosure=disclosure.isoformat(), **fields
    )
    result = cli("--config", str(world.config), "submit", str(path), "--json")
    assert result.code == 0, result.err
    store = SqliteStore.open(world.database)
    try:
        record = store.get_advisory(str(result.json()["id"]))
    finally:
        store.close()
    assert record is not None and record.plan.notify_at is not None
    return record


def advisory(world: World, advisory_id: str) -> AdvisoryRecord:
    store = SqliteStore.open(world.database)
    try:
        record = store.get_advisory(advisory_id)
    finally:
        store.close()
    assert record is not None
    return record


def prepared(world: World, advisory_id: str) -> int:
    store = SqliteStore.open(world.database)
    try:
        return len(store.payload_versions(advisory_id))
    finally:
        store.close()


def due_mail(world: World, advisory_id: str) -> list[MessageRecord]:
    """The notices and the pre-announcement: what goes out at notice time."""
    return [m for m in receipts(world, advisory_id) if m.kind in DUE]


def ticked(cli: CLI, world: World) -> None:
    """Make the daemon run a pass now and wait until it has: a far-future
    advisory is submitted (a change the daemon sees within a second) and
    its notices get prepared, which a pass does after it released what was
    due."""
    other = submit(cli, world, datetime.now(UTC).replace(microsecond=0) + timedelta(days=60))
    wait_for("a pass of the daemon", lambda: prepared(world, other.id) >= 2, SLOW)


def next_weekday(weekday: int, at_least: timedelta) -> datetime:
    """17:00 UTC on the first `weekday` (0 = Monday) at least `at_least` ahead."""
    day = (datetime.now(UTC) + at_least).replace(hour=17, minute=0, second=0, microsecond=0)
    return day + timedelta(days=(weekday - day.weekday()) % 7)


def retry_rounds(
    world: World, clock: DaemonClock, advisory_id: str, rounds: int
) -> list[list[timedelta]]:
    """Step the daemon's clock just past every deferred message's next
    attempt, `rounds` times, waiting each time for every one to be tried once
    more; returns, per round, how long after the step each message that was
    deferred again is due next."""
    gaps = []
    for _ in range(rounds):
        before = {m.message_id: m for m in due_mail(world, advisory_id)}
        assert {m.state for m in before.values()} == {MessageState.DEFERRED}
        step = max(m.next_attempt_at for m in before.values() if m.next_attempt_at)
        step += timedelta(seconds=1)
        clock.set(step)

        def tried_again(
            before: dict[str, MessageRecord] = before,
        ) -> list[MessageRecord] | None:
            now = due_mail(world, advisory_id)
            done = all(
                m.attempts == before[m.message_id].attempts + 1
                and m.state is not MessageState.SENDING
                for m in now
            )
            return now if done else None

        after = wait_for("every message tried again", tried_again, SLOW)
        assert isinstance(after, list)
        gaps.append(
            [
                m.next_attempt_at - step
                for m in after
                if m.state is MessageState.DEFERRED and m.next_attempt_at is not None
            ]
        )
    return gaps


def assert_backoff(gaps: Sequence[Sequence[timedelta]], minutes: Sequence[int]) -> None:
    """Every message deferred in round i is next due `minutes[i]` minutes
    after the step (and the few seconds the round took: under a minute)."""
    assert len(gaps) == len(minutes)
    for round_gaps, wait in zip(gaps, minutes, strict=True):
        assert len(round_gaps) == 3, round_gaps
        for gap in round_gaps:
            assert timedelta(minutes=wait) <= gap < timedelta(minutes=wait + 1), (wait, gap)


def deferred_once(world: World, advisory_id: str) -> list[MessageRecord]:
    found = wait_for(
        "the notices and pre-announcement deferred",
        lambda: (
            ms
            if len(ms := due_mail(world, advisory_id)) == 3
            and all(m.state is MessageState.DEFERRED and m.attempts == 1 for m in ms)
            else None
        ),
        SLOW,
    )
    assert isinstance(found, list)
    return found


def delivered_once(world: World, record: AdvisoryRecord, attempts: int) -> None:
    """Each notice and the pre-announcement accepted after `attempts` tries,
    before disclosure, and in the smarthost's Maildir exactly once."""
    done = due_mail(world, record.id)
    assert [m.state for m in done] == [MessageState.ACCEPTED] * 3
    assert {(m.attempts, m.smtp_code) for m in done} == {(attempts, 250)}
    assert all(m.sent_at is not None and m.sent_at < record.plan.disclose_at for m in done)
    for address in (*ORGS, ANNOUNCE):
        assert len(to(world.root / "maildir", address)) == 1, address


# ------------------------------------------------------------------------------ tests


@needs_faketime
def test_a_smarthost_down_for_a_while_gets_everything_once_before_disclosure(
    cli: CLI, world: World, rig: Rig
) -> None:
    """The smarthost refuses connections when the notices fall due: the
    notices and the pre-announcement are deferred with a backoff that grows
    (1, 2, 4, 8 minutes); once it is back on the same port the next retry
    delivers each exactly once, before disclosure, and at disclosure the
    advisory is published once, with nothing failed."""
    port = free_port()  # nothing listens there yet
    record = submit(cli, world, next_weekday(2, timedelta(days=14)))
    assert record.plan.notify_at is not None
    start = record.plan.notify_at + timedelta(seconds=1)
    clock = DaemonClock(world.root / "clock", start)
    rig.daemon(port, clock)
    for m in deferred_once(world, record.id):
        assert m.smtp_code is None and "connect" in (m.smtp_response or "").lower()
        assert m.next_attempt_at is not None
        assert backoff(1) <= m.next_attempt_at - start < backoff(1) + timedelta(minutes=1)
    assert_backoff(retry_rounds(world, clock, record.id, 3), [2, 4, 8])
    rig.sink(port)
    assert retry_rounds(world, clock, record.id, 1) == [[]]
    delivered_once(world, record, attempts=5)
    clock.set(record.plan.disclose_at + timedelta(seconds=1))
    wait_for("the disclosure", lambda: advisory(world, record.id).state.value == "disclosed", SLOW)
    announced = to(world.root / "maildir", ANNOUNCE)
    assert len(announced) == 2 and sum(b"SECRET-WORDS-42" in m for m in announced) == 1
    assert MessageState.FAILED not in {m.state for m in receipts(world, record.id)}


@needs_faketime
def test_a_4xx_storm_backs_off_up_to_30_minutes_and_delivers_each_once(
    cli: CLI, world: World, rig: Rig
) -> None:
    """The smarthost answers 4xx seven times to every recipient (at RCPT or
    at the end of DATA): each receipt shows the deferral and the reply, the
    backoff grows 1, 2, 4, 8, 16 minutes and stays at 30, and the eighth
    attempt delivers each message exactly once, well before disclosure."""
    storm = 7
    port = rig.sink(
        free_port(),
        {
            "sec@good.example": ["451 4.3.0 try again later"] * storm + [None],
            "sec@good2.example": ["data:452 4.3.1 insufficient storage"] * storm + [None],
            ANNOUNCE: ["450 4.2.0 mailbox busy"] * storm + [None],
        },
    )
    record = submit(cli, world, next_weekday(2, timedelta(days=14)))
    assert record.plan.notify_at is not None
    start = record.plan.notify_at + timedelta(seconds=1)
    clock = DaemonClock(world.root / "clock", start)
    rig.daemon(port, clock)
    replies = {m.address: (m.smtp_code, m.detail) for m in deferred_once(world, record.id)}
    assert replies == {
        "sec@good.example": (451, "4.3.0 try again later"),
        "sec@good2.example": (452, "4.3.1 insufficient storage"),
        ANNOUNCE: (450, "4.2.0 mailbox busy"),
    }
    assert_backoff(retry_rounds(world, clock, record.id, storm - 1), [2, 4, 8, 16, 30, 30])
    assert retry_rounds(world, clock, record.id, 1) == [[]]
    delivered_once(world, record, attempts=storm + 1)
    assert len(mails(world.root / "maildir")) == 3


def test_a_5xx_for_one_organisation_fails_only_its_notice_and_alerts_the_wg(
    cli: CLI, world: World, rig: Rig
) -> None:
    """One organisation's mail server refuses its notice for good (550): that
    notice is failed at once with the reply recorded and never retried, each
    WG member gets an encrypted alert naming it, and every other org's
    notice and the pre-announcement are accepted."""
    port = rig.sink(free_port(), {"sec@good2.example": ["550 5.1.1 mailbox unavailable"]})
    rig.daemon(port)  # the real clock: the advisory is late, so it is sent now
    record = submit(cli, world, datetime.now(UTC).replace(microsecond=0) + timedelta(days=2))
    maildir = world.root / "maildir"
    (alert,) = wait_for("the alert", lambda: to(maildir, "m@wg.example"), SLOW)  # type: ignore[misc]
    plain = decrypts_for(world, "member", alert)
    assert b"sec@good2.example" in plain and b"failed" in plain
    by_address = {m.address: m for m in receipts(world, record.id) if m.kind is not DISCLOSURE}
    failed = by_address["sec@good2.example"]
    assert (failed.state, failed.smtp_code, failed.attempts) == (MessageState.FAILED, 550, 1)
    assert "5.1.1 mailbox unavailable" in (failed.detail or "")
    assert "5.1.1 mailbox unavailable" in (failed.smtp_response or "")
    assert by_address["sec@good.example"].state is MessageState.ACCEPTED
    assert by_address[ANNOUNCE].state is MessageState.ACCEPTED
    assert by_address["m@wg.example"].kind is MessageKind.ALERT
    assert len(to(maildir, "sec@good.example")) == 1 and to(maildir, "sec@good2.example") == []
    ticked(cli, world)
    assert next(m for m in receipts(world, record.id) if m.address == failed.address) == failed


@needs_faketime
def test_a_clock_stepped_back_an_hour_then_forward_a_day_sends_each_once_in_order(
    cli: CLI, world: World, rig: Rig
) -> None:
    """A critical, exploited advisory: notices a day before disclosure. Two
    minutes before the notice time the wall clock steps back an hour: passes
    run and send nothing. When the clock reaches the notice time again the
    notices and pre-announcement go out, none early; then the clock jumps a
    day, past disclosure: the advisory is published once, after every
    notice, nothing is sent twice, and the daemon neither crashes nor logs
    an error."""
    port = rig.sink(free_port())
    record = submit(
        cli, world, next_weekday(2, timedelta(days=7)), severity='"critical"', exploited="true"
    )
    notify_at = record.plan.notify_at
    assert notify_at == record.plan.disclose_at - timedelta(days=1)
    clock = DaemonClock(world.root / "clock", notify_at - timedelta(minutes=2))
    proc = rig.daemon(port, clock)
    maildir = world.root / "maildir"
    wait_for("the notices prepared", lambda: prepared(world, record.id) >= 3, SLOW)
    assert clock.now() < notify_at, "preparing took longer than the test allows"
    clock.step(-3600)
    ticked(cli, world)
    clock.set(notify_at - timedelta(seconds=30))
    ticked(cli, world)
    assert mails(maildir) == []
    assert {(m.state, m.attempts) for m in due_mail(world, record.id)} == {(MessageState.QUEUED, 0)}
    clock.set(notify_at + timedelta(seconds=1))
    wait_for(
        "the notices accepted",
        lambda: {m.state for m in due_mail(world, record.id)} == {MessageState.ACCEPTED},
    )
    wait_for("the advisory notified", lambda: advisory(world, record.id).state.value == "notified")
    clock.step(86400)
    wait_for("the disclosure", lambda: advisory(world, record.id).state.value == "disclosed", SLOW)
    ticked(cli, world)
    sent = receipts(world, record.id)
    notices = [m for m in sent if m.kind in DUE]
    (disclosure,) = [m for m in sent if m.kind is MessageKind.DISCLOSURE]
    assert all(m.sent_at is not None and m.sent_at >= notify_at for m in notices)
    assert disclosure.sent_at is not None and disclosure.sent_at >= record.plan.disclose_at
    assert all(m.sent_at and m.sent_at < disclosure.sent_at for m in notices)
    assert {m.attempts for m in (*notices, disclosure)} == {1}
    for address in ORGS:
        assert len(to(maildir, address)) == 1
    announced = to(maildir, ANNOUNCE)
    assert len(announced) == 2 and sum(b"SECRET-WORDS-42" in m for m in announced) == 1
    assert proc.proc.poll() is None and proc.stop() == 0
    assert '"level": "error"' not in proc.text() and "Traceback" not in proc.text()
