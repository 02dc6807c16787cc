"""Benchmarks 1 to 3 on one installation of N recipient addresses.

1. release latency, as the issue defines it: from the due instant to the last 250 at the
   sink, in the tick at the notice time (everything prepared by an earlier tick), median
   of RELEASE_RUNS runs (one advisory each), against (a) the floor, aiosmtplib sending the
   same stored bytes over as many connections, from its first send to the last 250 at
   the same sink, run before the first and after each maild run; and (b) signing and
   encrypting each copy at send time, one after another (once). The whole tick (which
   goes on to advance the advisory and work out the next wake-up) is printed too;
2. preparation cost per recipient: the preparing tick against a loop of `gpg --encrypt
   --sign` command lines on the same data and keys;
3. lateness of the first send after the due instant: the real `serve()` loop on a real
   clock, against the sink's round-trip time for one message.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bench.common import Marks, Report, Timer, median, ms, paired_ratio, ratio
from bench.world import CONNECTIONS, KeyPool, World
from maild.adapters.sink import RunningSink, start_sink
from maild.adapters.smtp_out import Envelope, Outcome, SendResult, Smarthost
from maild.domain.models import (
    AdvisoryRecord,
    AdvisoryState,
    MessageKind,
    MessageRecord,
    MessageState,
)
from maild.service.clock import ManualClock
from maild.service.compose import Composer
from maild.service.daemon import serve
from maild.service.dispatch import Dispatcher
from maild.service.scheduler import SENDABLE, due_time

DISCLOSE_A = datetime(2030, 3, 12, 17, tzinfo=UTC)  # a Tuesday: benchmarks 1 and 2
# Benchmark 1's runs, one advisory each: A, then Tuesdays two weeks apart, so that each
# run's notice time (a week before its disclosure) comes after the previous run's
# disclosure, and every run but the last can be disclosed before the next one starts.
# Five runs, two weeks apart: a single run of ~100 ms swings by 20% on a shared host, and
# with three a load spike during one floor run (which two ratios share) could decide
# the median.
DISCLOSE_RUNS = tuple(DISCLOSE_A + timedelta(weeks=2 * k) for k in range(5))
RELEASE_RUNS = len(DISCLOSE_RUNS)
FLOOR_RUNS = RELEASE_RUNS + 1  # one before the first maild run, one after each
# Benchmark 3's advisory: disclosed a month before A, so at its notice time nothing of
# the release runs' advisories is due (their notices went out, their disclosures are later
# or done).
DISCLOSE_B = datetime(2030, 2, 12, 17, tzinfo=UTC)
LEAD = 2.0  # seconds between starting serve() and the due instant
RTT_RUNS = 7
SERVE_LIMIT = 120.0  # seconds after the due instant before benchmark 3 gives up

Item = tuple[AdvisoryRecord, MessageRecord]


class _Captured(Exception):
    def __init__(self, data: bytes) -> None:
        super().__init__("captured")
        self.data = data


class _CapturingKeyring:
    """Stands in for the Keyring inside a Composer: keeps the bytes that would be
    signed and encrypted (the protected part of one notice), and stops there."""

    def sign_encrypt(self, data: bytes, recipient: str, signer: str, now: datetime) -> bytes:
        raise _Captured(data)


def run(keys: KeyPool, n: int, report: Report, *, profile: bool = False) -> None:
    loop = asyncio.new_event_loop()
    running = loop.run_until_complete(start_sink())
    try:
        world = World.create(keys, n, running.port)
        try:
            print(f"  N={n}: installation in {world.root}, sink on 127.0.0.1:{running.port}")
            advisory = world.submit(DISCLOSE_A, "a")
            record = world.record(advisory)
            assert record.plan.notify_at is not None
            clock = ManualClock(record.plan.notify_at - timedelta(days=1))
            dispatcher = world.open(clock)
            preps = [_preparation(loop, world, dispatcher, record, clock, 1)]
            _release(
                loop, world, running, dispatcher, record, clock, report, preps, profile=profile
            )
            _lateness(loop, world, running, dispatcher, report)
        finally:
            if world.dispatcher is not None:
                loop.run_until_complete(world.dispatcher.aclose())
            world.close()
    finally:
        loop.run_until_complete(running.close())
        loop.close()


# -- 2. preparation -------------------------------------------------------------------


@dataclass
class _Prep:
    """One advisory's preparation: the gpg command-line loop just before, then maild."""

    baseline: float  # seconds for the gpg loop over that advisory's notices
    prepared: float  # seconds for maild's preparing tick
    count: int  # messages maild prepared
    gpg: Timer  # Keyring.sign_encrypt in maild's threads
    writes: Timer  # store.put_payload


def _preparation(
    loop: asyncio.AbstractEventLoop,
    world: World,
    dispatcher: Dispatcher,
    record: AdvisoryRecord,
    clock: ManualClock,
    k: int,
) -> _Prep:
    """Benchmark 2 on one advisory, with the clock a day before its notice time: the
    baseline loop of gpg command lines on its notices, then maild's preparing tick."""
    n = world.n
    notices = world.messages(record.id, MessageKind.NOTICE)
    assert len(notices) == n, f"{len(notices)} notices for {n} addresses"
    jobs = _protected_parts(dispatcher, record, notices, clock.now)

    print(
        f"  N={n}: baseline: {n} `gpg --encrypt --sign` command lines, one after another "
        f"(run {k} of {RELEASE_RUNS})"
    )
    started = time.perf_counter()
    for fingerprint, data in jobs:
        _gpg_command_line(world, fingerprint, data)
    baseline = time.perf_counter() - started

    print(f"  N={n}: maild: the preparing tick (clock a day before the notice time)")
    store = world.store_setup().store
    gpg = Timer(dispatcher.composer.keyring, "sign_encrypt")
    writes = Timer(store, "put_payload")
    started = time.perf_counter()
    try:
        loop.run_until_complete(dispatcher.tick())
    finally:
        gpg.remove()
        writes.remove()
    prepared = time.perf_counter() - started
    versions = world.store_setup().store.payload_versions(record.id)
    # Everything but the disclosure, which is only built at its time.
    count = sum(1 for m in world.messages(record.id) if m.kind is not MessageKind.DISCLOSURE)
    assert len(versions) == count, f"run {k}: {len(versions)} of {count} messages prepared"
    return _Prep(baseline, prepared, count, gpg, writes)


def _report_preparation(preps: Sequence[_Prep], n: int, report: Report) -> None:
    """Medians over the runs (each run's maild tick right after its own gpg loop, the
    ratio taken run by run); the breakdown rows are those of the median run."""
    of_runs = f"median of {len(preps)}"
    prepared = median([p.prepared for p in preps])
    baseline = median([p.baseline for p in preps])
    mid = sorted(preps, key=lambda p: p.prepared)[len(preps) // 2]
    per_maild, per_gpg = prepared / n, baseline / n
    label = f"maild preparing tick ({mid.count} messages, {of_runs})"
    report.add("prepare", n, label, ms(prepared))
    report.add("prepare", n, "maild per recipient", ms(per_maild))
    report.add("prepare", n, f"gpg command line loop, per recipient ({of_runs})", ms(per_gpg))
    paired = median([p.prepared / p.baseline for p in preps])
    report.add(
        "prepare",
        n,
        "ratio maild / gpg loop (median of each run against its own gpg loop)",
        ratio(paired),
        "target <= 1.2x",
        paired <= 1.2,
    )
    report.add("prepare", n, "  ratio of the medians above", ratio(per_maild / per_gpg))
    report.add(
        "prepare",
        n,
        "  maild Keyring.sign_encrypt, per call (in threads), of the median run",
        ms(mid.gpg.total / max(mid.gpg.calls, 1)),
    )
    report.add(
        "prepare",
        n,
        f"  maild store writes ({mid.writes.calls} put_payload), in all, of the median run",
        ms(mid.writes.total),
    )


def _protected_parts(
    dispatcher: Dispatcher,
    record: AdvisoryRecord,
    notices: Sequence[MessageRecord],
    now: datetime,
) -> list[tuple[str, bytes]]:
    """Each notice's protected part (what maild signs and encrypts), with its key."""
    real = dispatcher.composer
    capture = Composer(
        _CapturingKeyring(),  # type: ignore[arg-type]
        real.identity_address,
        real.signing_key,
        real.calendar,
    )
    draft = real.open(record)
    jobs = []
    for m in notices:
        assert m.fingerprint is not None
        org = dispatcher.orgs.get(m.org or "")
        try:
            capture.notice(record, m, draft, org.name if org else "", now)
        except _Captured as got:
            jobs.append((m.fingerprint, got.data))
        else:
            raise AssertionError("the composer did not sign and encrypt")
    return jobs


def _gpg_command_line(world: World, fingerprint: str, data: bytes) -> bytes:
    done = subprocess.run(
        [
            "gpg",
            "--homedir",
            str(world.gnupg_home),
            "--batch",
            "--trust-model",
            "always",
            "--encrypt",
            "--sign",
            "--armor",
            "-r",
            fingerprint,
            "--local-user",
            world.identity + "!",
        ],
        input=data,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0 or not done.stdout.startswith(b"-----BEGIN PGP MESSAGE-----"):
        raise RuntimeError(f"gpg failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


# -- 1. release -------------------------------------------------------------------------


def _release(
    loop: asyncio.AbstractEventLoop,
    world: World,
    running: RunningSink,
    dispatcher: Dispatcher,
    first: AdvisoryRecord,
    clock: ManualClock,
    report: Report,
    preps: list[_Prep],
    *,
    profile: bool,
) -> None:
    """RELEASE_RUNS release ticks, one per advisory, each followed by a floor run on its
    messages (and one floor run before the first), so that load on the machine hits
    both alike; maild's figures are medians, the breakdown that of the median run.
    Each later run's advisory is prepared as benchmark 2 was (its own gpg loop, then
    the timed preparing tick), added to `preps`, reported first."""
    n = world.n
    runs: list[_Run] = []
    floors: list[_Floor] = []
    counts: list[int] = []
    first_items: list[Item] = []
    record = first
    for k, disclosure in enumerate(DISCLOSE_RUNS, 1):
        if k > 1:
            record = _next_advisory(loop, world, dispatcher, clock, disclosure, record, k)
            preps.append(_preparation(loop, world, dispatcher, record, clock, k))
        items, stored = _due_items(world, record)
        counts.append(len(items))
        if k == 1:
            size = sum(len(b) for b in stored.values())
            print(
                f"  N={n}: {len(items)} messages due at the notice time "
                f"({n} notices, {len(items) - n} pre-announcement), {size / 1e6:.1f} MB stored"
            )
            floors.append(
                loop.run_until_complete(_floor(world, running, dispatcher, items, stored))
            )
        profiled = profile and k == 1
        print(
            f"  N={n}: maild: the tick at the notice time (run {k} of {RELEASE_RUNS})"
            + (" (profiled)" if profiled else "")
        )
        runs.append(_release_tick(loop, world, running, dispatcher, record, items, clock, profiled))
        floors.append(loop.run_until_complete(_floor(world, running, dispatcher, items, stored)))
        print(
            f"    run {k}: maild: due instant -> last 250 {ms(runs[-1].last_250)}, "
            f"the whole tick {ms(runs[-1].released)}; floor: first send -> last 250 "
            f"{ms(floors[-1].last_250)}, all sent {ms(floors[-1].elapsed)}"
        )
        if k == 1:
            first_items = items
    assert len(set(counts)) == 1, f"the runs released different counts: {counts}"
    assert len(floors) == FLOOR_RUNS, f"{len(floors)} floor runs, not {FLOOR_RUNS}"

    # (b) once, after all the maild runs as before: run between two of them, its second of
    # gpg work seemed to slow the next one down (3 trials of 3). On the first run's
    # advisory and messages as read before its tick (since disclosed): (b) unseals and
    # composes from those records alone, and reads and writes nothing in the store.
    print(f"  N={n}: baseline (b): sign and encrypt each copy at send time, one after another")
    notify_at = first.plan.notify_at
    assert notify_at is not None
    resend = loop.run_until_complete(
        _at_send_time(world, dispatcher, first, first_items, notify_at)
    )

    _report_preparation(preps, n, report)
    released = median([r.released for r in runs])
    last_250 = median([r.last_250 for r in runs])
    floor = median([f.elapsed for f in floors])
    floor_250 = median([f.last_250 for f in floors])
    mid = sorted(runs, key=lambda r: r.last_250)[len(runs) // 2]
    print(f"    median run: run {runs.index(mid) + 1} of {RELEASE_RUNS}")
    marks, of_runs = mid.marks, f"median of {RELEASE_RUNS}"
    label = f"maild due instant -> last 250 at the sink ({counts[0]} messages, {of_runs})"
    label += ", run 1 PROFILED" if profile else ""
    report.add("release", n, label, ms(last_250))
    report.add("release", n, f"maild release tick, the whole pass ({of_runs})", ms(released))
    report.add(
        "release",
        n,
        "  tick before sending (sync, scan of the queue), of the median run",
        ms(marks.entered - mid.started),
    )
    report.add(
        "release",
        n,
        "  sending (_release of what was prepared), of the median run",
        ms(marks.left - marks.entered),
    )
    report.add(
        "release",
        n,
        f"    of which receipt transactions ({mid.writes.calls}, BEGIN..COMMIT)",
        ms(mid.writes.total),
    )
    report.add(
        "release",
        n,
        f"    of which their flushes to disk ({mid.flushes.calls} fdatasync, on the loop)",
        ms(mid.flushes.total),
    )
    report.add(
        "release", n, f"    of which payload reads ({mid.reads.calls} batches)", ms(mid.reads.total)
    )
    report.add("release", n, f"    of which log lines ({mid.logs.calls})", ms(mid.logs.total))
    report.add(
        "release",
        n,
        "  tick after sending (prepare scan, advance, next wake), of the median run",
        ms(mid.started + mid.released - marks.left),
    )
    report.add(
        "release",
        n,
        f"(a) floor: aiosmtplib, {CONNECTIONS} conns, first send -> last 250 at the sink "
        f"(median of {FLOOR_RUNS})",
        ms(floor_250),
    )
    report.add("release", n, "    the same, until every reply was read", ms(floor))
    report.add("release", n, "(b) sign+encrypt at send time, sequential", ms(resend))
    paired = paired_ratio([r.last_250 for r in runs], [f.last_250 for f in floors])
    report.add(
        "release",
        n,
        "ratio maild / floor, to the last 250 (median of each run against the floors beside it)",
        ratio(paired),
        "target <= 1.3x",
        paired <= 1.3,
    )
    report.add("release", n, "  ratio of the medians above", ratio(last_250 / floor_250))
    whole = paired_ratio([r.released for r in runs], [f.elapsed for f in floors])
    report.add(
        "release",
        n,
        "  ratio of maild's whole pass (advance, next wake too) to the floor's whole run",
        ratio(whole),
    )
    report.add(
        "release",
        n,
        "ratio (b) / maild",
        ratio(resend / released),
        "target >= 5x",
        resend / released >= 5,
    )


@dataclass
class _Run:
    """One timed release tick: its wall time, and where the time went."""

    started: float  # perf_counter when the tick began
    released: float  # the tick's wall time, seconds
    last_250: float  # due instant -> the last 250 at the sink, seconds
    marks: Marks
    writes: Timer
    flushes: Timer
    reads: Timer
    logs: Timer


def _next_advisory(
    loop: asyncio.AbstractEventLoop,
    world: World,
    dispatcher: Dispatcher,
    clock: ManualClock,
    disclosure: datetime,
    previous: AdvisoryRecord,
    k: int,
) -> AdvisoryRecord:
    """Run k's advisory, with the clock a day before its notice time (the caller
    prepares it).

    First the previous run's advisory is disclosed (an untimed tick at its disclosure
    time sends one message to the announce list), so that it no longer counts among
    the open advisories every tick reads: each measured tick, like the first, and
    benchmark 3 after the last, find as many open advisories as before there were
    several runs (each open advisory of N recipients adds to a tick's scan)."""
    clock.now = previous.plan.disclose_at
    loop.run_until_complete(dispatcher.tick())
    store = world.store_setup().store
    done = world.record(previous.id)
    assert done.state is AdvisoryState.DISCLOSED, f"run {k - 1}'s advisory is {done.state}"
    assert previous.id not in store.advisories_with_messages_in(SENDABLE), "mail left"
    record = world.record(world.submit(disclosure, f"a{k}"))
    notify_at, before = record.plan.notify_at, previous.plan.notify_at
    assert notify_at is not None and before is not None
    assert notify_at > before, f"run {k}'s notice time {notify_at} is not after {before}"
    assert notify_at - timedelta(days=1) > clock.now, f"run {k} would prepare in the past"
    clock.now = notify_at - timedelta(days=1)
    return record


def _due_items(world: World, record: AdvisoryRecord) -> tuple[list[Item], dict[str, bytes]]:
    """The advisory's messages due at its notice time, and their stored bytes; nothing
    of another advisory may be due then (it would be sent in the same tick)."""
    notify_at = record.plan.notify_at
    assert notify_at is not None
    others = _others_due(world, record.id, notify_at)
    assert not others, f"{others} message(s) of other advisories due at {notify_at}"
    store = world.store_setup().store
    items = [
        (record, m)
        for m in world.messages(record.id)
        if (t := due_time(record, m)) is not None and t <= notify_at
    ]
    stored = {}
    for _, m in items:
        payload = store.payload(m.message_id)
        assert payload is not None, f"{m.message_id} is due but not prepared"
        stored[m.message_id] = payload[1]
    return items, stored


def _others_due(world: World, advisory_id: str, at: datetime) -> int:
    """How many messages of the advisories other than `advisory_id` are due at `at`."""
    count = 0
    for other in world.submitted:
        if other != advisory_id:
            record = world.record(other)
            due_at = (due_time(record, m) for m in world.messages(other))
            count += sum(1 for t in due_at if t is not None and t <= at)
    return count


def _release_tick(
    loop: asyncio.AbstractEventLoop,
    world: World,
    running: RunningSink,
    dispatcher: Dispatcher,
    record: AdvisoryRecord,
    items: Sequence[Item],
    clock: ManualClock,
    profile: bool,
) -> _Run:
    """The timed tick at the notice time; checks that every item arrived and was
    accepted."""
    notify_at = record.plan.notify_at
    assert notify_at is not None
    store = world.store_setup().store
    # Like the first run (and a daemon idle since its last send), and like the floor:
    # no pooled connection is left open from the previous run.
    loop.run_until_complete(dispatcher.aclose())
    sink = running.sink
    before = len(sink.received)
    clock.now = notify_at
    profiler = cProfile.Profile() if profile else None
    marks = Marks(dispatcher, "_release")
    # The receipts' transactions and their flushes to disk, both on the event loop's
    # thread (see maild.service.groupcommit), and the batched payload reads.
    writes = Timer(dispatcher._receipts, "_commit")
    flushes = Timer(store, "sync")
    reads = Timer(store, "payloads")
    logs = _count_sent_logs(dispatcher)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        loop.run_until_complete(dispatcher.tick())
    finally:
        if profiler is not None:
            profiler.disable()
        for timer in (marks, writes, flushes, reads, logs):
            timer.remove()
    released = time.perf_counter() - started
    arrived = sink.received[before:]
    now_stored = {m.message_id: m.state for m in world.messages(record.id)}
    states = [now_stored[m.message_id] for _, m in items]
    assert len(arrived) == len(items), f"{len(arrived)} of {len(items)} arrived"
    assert all(s is MessageState.ACCEPTED for s in states), "not every message was accepted"
    last_250 = (max(r.at for r in arrived) - started_at).total_seconds()
    if profiler is not None:
        _print_profile(profiler)
    return _Run(started, released, last_250, marks, writes, flushes, reads, logs)


def _count_sent_logs(dispatcher: Dispatcher) -> Timer:
    """Times the dispatcher's log calls (rendered to /dev/null) during the release."""
    from maild.service import dispatch

    return Timer(dispatch.log, "info")


def _smarthost(world: World, dispatcher: Dispatcher) -> Smarthost:
    """A new client for the same smarthost, configured as maild's own."""
    config = world.store_setup().config
    assert config.smtp is not None
    return Smarthost(config.smtp, local_hostname=dispatcher.mail_domain)


def _check(results: Sequence[SendResult]) -> None:
    refused = [r for r in results if r.outcome is not Outcome.ACCEPTED]
    assert not refused, f"the sink refused {len(refused)}: {refused[0].response}"


@dataclass(frozen=True)
class _Floor:
    """One floor run: from its first send to the last 250 at the sink (as maild's
    release is timed), and to the last reply read by the client."""

    last_250: float
    elapsed: float


async def _floor(
    world: World,
    running: RunningSink,
    dispatcher: Dispatcher,
    items: Sequence[Item],
    stored: dict[str, bytes],
) -> _Floor:
    """(a) The same stored bytes, over as many pooled connections, nothing else."""
    smarthost = _smarthost(world, dispatcher)
    sender = dispatcher.envelope_sender
    before = len(running.sink.received)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            smarthost.send(Envelope(sender, m.address, stored[m.message_id], envid=m.envid))
            for _, m in items
        )
    )
    elapsed = time.perf_counter() - started
    await smarthost.close()
    _check(results)
    arrived = running.sink.received[before:]
    assert len(arrived) == len(items), f"the floor: {len(arrived)} of {len(items)} arrived"
    return _Floor((max(r.at for r in arrived) - started_at).total_seconds(), elapsed)


async def _at_send_time(
    world: World,
    dispatcher: Dispatcher,
    record: AdvisoryRecord,
    items: Sequence[Item],
    now: datetime,
) -> float:
    """(b) What list re-encrypters do: at the due instant, unseal the advisory, then for
    each recipient in turn sign and encrypt its copy (the same code maild prepares
    with) and send it."""
    smarthost = _smarthost(world, dispatcher)
    sender = dispatcher.envelope_sender
    compose: Callable[..., bytes] = dispatcher._compose
    results = []
    started = time.perf_counter()
    draft = dispatcher.composer.open(record)
    for _, m in items:
        data = compose(record, m, draft, now)
        results.append(await smarthost.send(Envelope(sender, m.address, data, envid=m.envid)))
    elapsed = time.perf_counter() - started
    await smarthost.close()
    _check(results)
    return elapsed


def _print_profile(profiler: cProfile.Profile) -> None:
    print(f"    profile of the release tick (run 1 of {RELEASE_RUNS} only), top 25 by own time:")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)
    print("    ... and maild's own functions by cumulative time (the sink shares the loop):")
    stats.sort_stats("cumulative").print_stats(r"/maild/", 30)


# -- 3. lateness ------------------------------------------------------------------------


def _lateness(
    loop: asyncio.AbstractEventLoop,
    world: World,
    running: RunningSink,
    dispatcher: Dispatcher,
    report: Report,
) -> None:
    n = world.n
    advisory = world.submit(DISCLOSE_B, "b")
    record = world.record(advisory)
    notify_at = record.plan.notify_at
    assert notify_at is not None
    print(f"  N={n}: lateness: preparing a second advisory a day before its notice time")
    world.open(ManualClock(notify_at - timedelta(days=1)))
    loop.run_until_complete(dispatcher.tick())
    expected = [
        m
        for m in world.messages(advisory)
        if (t := due_time(record, m)) is not None and t <= notify_at
    ]
    versions = world.store_setup().store.payload_versions(advisory)
    assert all(m.message_id in versions for m in expected), "not everything was prepared"
    others = _others_due(world, advisory, notify_at)
    assert not others, f"{others} message(s) of the release runs' advisories due at {notify_at}"
    # Like a daemon that has been idle: no pooled connection is left open.
    loop.run_until_complete(dispatcher.aclose())

    store = world.store_setup().store
    sample = store.payload(expected[0].message_id)
    assert sample is not None
    rtts = [
        loop.run_until_complete(_one_send(world, dispatcher, expected[0], sample[1]))
        for _ in range(RTT_RUNS)
    ]
    rtt = median(rtts)

    print(f"  N={n}: lateness: the real serve() loop on a real clock, due in {LEAD:g} s")
    marks = Marks(dispatcher, "_release")
    try:
        first, last, early, due_perf = loop.run_until_complete(
            _serve_until_sent(running, dispatcher, notify_at, len(expected))
        )
    finally:
        marks.remove()
    assert not early, f"{early} message(s) arrived BEFORE the due instant"
    report.add(
        "lateness", n, "first send after the due instant", ms(first), "target < 100 ms", first < 0.1
    )
    report.add(
        "lateness", n, "  due instant -> sending starts (tick's scan)", ms(marks.entered - due_perf)
    )
    report.add("lateness", n, f"last of {len(expected)} after the due instant", ms(last))
    report.add("lateness", n, f"baseline: one direct send (median of {RTT_RUNS})", ms(rtt))
    report.add("lateness", n, "ratio first-send lateness / one direct send", ratio(first / rtt))


async def _one_send(world: World, dispatcher: Dispatcher, m: MessageRecord, data: bytes) -> float:
    """Round trip of one message sent directly: connect, EHLO, MAIL, RCPT, DATA, 250."""
    smarthost = _smarthost(world, dispatcher)
    started = time.perf_counter()
    result = await smarthost.send(
        Envelope(dispatcher.envelope_sender, m.address, data, envid=m.envid)
    )
    elapsed = time.perf_counter() - started
    await smarthost.close()
    _check([result])
    return elapsed


async def _serve_until_sent(
    running: RunningSink, dispatcher: Dispatcher, notify_at: datetime, count: int
) -> tuple[float, float, int, float]:
    """Run serve() with a real clock shifted so `notify_at` falls LEAD seconds from now;
    stop once `count` messages arrived. Returns (first, last) arrival after the due
    instant in seconds, how many arrived before it, and the due instant on the
    perf_counter clock."""
    sink = running.sink
    before = len(sink.received)
    offset = notify_at - (datetime.now(UTC) + timedelta(seconds=LEAD))
    due_real = notify_at - offset
    due_perf = time.perf_counter() + (due_real - datetime.now(UTC)).total_seconds()
    dispatcher.clock = lambda: datetime.now(UTC) + offset
    stop = asyncio.Event()
    task = asyncio.create_task(serve(dispatcher, stop))
    limit = due_real + timedelta(seconds=SERVE_LIMIT)
    while len(sink.received) - before < count and not task.done():
        if datetime.now(UTC) > limit:
            break
        await asyncio.sleep(0.005)
    stop.set()
    await task
    arrived = sink.received[before:]
    assert len(arrived) >= count, f"only {len(arrived)} of {count} arrived in time"
    at = sorted(r.at for r in arrived)
    return (
        (at[0] - due_real).total_seconds(),
        (at[-1] - due_real).total_seconds(),
        sum(1 for t in at if t < due_real),
        due_perf,
    )
