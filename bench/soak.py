"""The soak: `make soak`, or `.venv/bin/python -m bench soak [--advisories 100] [--orgs 50]
[--days 7] [--restarts 4] [--crashes 3] [--seed 7]`.

A simulated week of a real maild installation: organisations with real keys, advisories
submitted through the embargo desk at spread times with every policy tier, some
rescheduled, cancelled or disclosed early; organisations removed, re-keyed and added
(each followed by a restart, as an operator's reload is); an org key that expires
mid-week; clean restarts and crashes in the middle of a release; the clock stepped back
an hour and forward a day. The daemon's parts are the real ones, wired by `build()` and
started as `maild run` starts them (including `recover()`); the smarthost is the
in-process loopback sink; the clock is a `ManualClock` moved from one due instant or
scripted event to the next. At the end the invariants are checked and printed as PASS or
FAIL lines (exit 1 on any FAIL), then the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from bench.common import configure_logging, machine
from bench.soak_check import Checker, Stamp, Tracked, integrity, message_id_of, report
from bench.soak_figures import GpgCount, figures, high_water_kb
from bench.soak_plan import ADHOC, START, Event, Script, make_script
from bench.soak_world import Installation, OrgSpec
from bench.world import PATCH
from maild.adapters.sink import RunningSink, start_sink
from maild.domain.models import MessageKind, MessagePurpose, MessageState
from maild.service.clock import ManualClock
from maild.service.dispatch import Dispatcher
from maild.service.embargo import Patch, UserError

TIME_LIMIT = 30 * 60  # seconds: the soak gives up (and cleans up) after this
HORIZON = timedelta(days=40)  # past the scripted week: the clock never runs further
SAMPLE = 25  # notices decrypted with their org's key at the end
# `maild run` wakes at least every 30 s; the soak jumps from one due instant or scripted
# event to the next, but also ticks a second before each, and at least every 3 hours,
# so that a message sent before its time has ticks to be sent in.
PROBE = timedelta(seconds=1)
IDLE = timedelta(hours=3)
CRASHED = object()


class Soak:
    """The harness: applies the script, drives the ticks, keeps the oracle's records."""

    def __init__(self, inst: Installation, script: Script, running: RunningSink) -> None:
        self.inst, self.script, self.running = inst, script, running
        self.clock = ManualClock(START)
        self.seq = 0
        self.tracked = {i: Tracked(i, s.marker) for i, s in script.advisories.items()}
        self.stamps: list[Stamp] = []
        self.orgs: list[OrgSpec] = []
        self.folder: set[str] = set()  # fingerprints in the keys folder
        self.expiry: dict[str, datetime] = {}
        self.spare: list[str] = []  # keys made ahead for re-keyed and new orgs
        self.dispatcher: Dispatcher | None = None
        self.crash_after: int | None = None  # armed: crash once this many were accepted
        self.back_by: timedelta | None = None  # armed: step back after the next release
        self.hook: Callable[[], None] | None = None
        self.counts: Counter[str] = Counter()
        self.refused: list[str] = []
        original = running.sink.handle_DATA

        async def handle_data(*args: Any) -> str:
            reply = await original(*args)
            if self.hook is not None:
                self.hook()
            return reply

        running.sink.handle_DATA = handle_data  # type: ignore[method-assign,assignment]

    # -- the installation ----------------------------------------------------------
    def make_orgs(self, count: int) -> None:
        for i in range(count):
            oid = f"o{i:02d}"
            expire = self.script.expires if i == self.script.expiring_org else "never"
            addresses = [
                (
                    f"sec@{oid}.example",
                    self.inst.new_key(f"Org {i} <sec@{oid}.example>", expire=expire),
                )
            ]
            if i % 10 == 5:  # a few orgs have a second address, with a key of its own
                addresses.append(
                    (f"alt@{oid}.example", self.inst.new_key(f"Alt {i} <alt@{oid}.example>"))
                )
            self.orgs.append(OrgSpec(oid, addresses))
        adhoc = self.inst.new_key(f"Adhoc <sec@{ADHOC}.example>")
        self.orgs.append(OrgSpec(ADHOC, [(f"sec@{ADHOC}.example", adhoc)], status="adhoc"))
        changes = sum(e.what in ("rekey-org", "add-org") for e in self.script.events)
        self.spare = [
            self.inst.new_key(f"Spare {i} <spare{i}@keys.example>") for i in range(changes)
        ]
        for org in self.orgs:
            for _, fpr in org.addresses:
                self.inst.put_key(fpr)
                self.folder.add(fpr)
        expiring = self.orgs[self.script.expiring_org].addresses[0][1]
        when = self.inst.expiry(expiring, START)
        assert when is not None, "the expiring key has no expiry"
        self.expiry[expiring] = when
        self.inst.write_orgs(self.orgs)

    # -- the run -----------------------------------------------------------------------
    async def simulate(self) -> None:
        self.dispatcher, _ = self.inst.start(self.clock)
        events, i = self.script.events, 0
        limit = START + HORIZON
        day = START
        while self.clock.now < limit:
            while i < len(events) and events[i].at <= self.clock.now:
                await self.apply(events[i])
                i += 1
            wake = await self.tick()
            if wake is CRASHED:
                continue  # tick again at once, as the restarted daemon does
            assert wake is None or isinstance(wake, datetime)
            ahead = [t for t in (wake, events[i].at if i < len(events) else None) if t]
            if not ahead:
                break
            target = min(ahead)
            if target - PROBE > self.clock.now:
                target -= PROBE  # a tick just before: nothing due at `target` may go yet
            self.clock.now = min(target, self.clock.now + IDLE)
            if self.clock.now >= day + timedelta(days=1):
                day = self.clock.now
                print(
                    f"    {day:%a %d %b %H:%M %Z}: {len(self.stamps)} messages so far", flush=True
                )
        if self.clock.now >= limit:
            print(f"    stopped at the horizon ({HORIZON.days} days) with work still due")
        assert self.dispatcher is not None
        await self.dispatcher.aclose()

    async def apply(self, e: Event) -> None:
        self.seq += 1
        now = self.clock.now
        started = time.perf_counter()
        assert self.inst.setup is not None
        try:
            if e.what == "submit":
                spec = self.script.advisories[e.advisory or ""]
                desk = self.inst.setup.desk(now)
                patch = [Patch("fix.patch", PATCH)]
                self._record(e, desk.submit(spec.text, f"{spec.id}.md", patch, now, "soak"))
            elif e.what == "reschedule":
                assert isinstance(e.arg, datetime)
                desk = self.inst.setup.desk(now)
                self._record(e, desk.reschedule(e.advisory or "", e.arg, now, "soak"))
            elif e.what == "cancel":
                desk = self.inst.setup.desk(now, validate=False)
                self._record(e, desk.cancel(e.advisory or "", now, "soak"))
                self.tracked[e.advisory or ""].cancelled_seq = self.seq
            elif e.what == "disclose-now":
                desk = self.inst.setup.desk(now, validate=False)
                self._record(e, desk.disclose_now(e.advisory or "", "exploit public", now, "soak"))
            elif e.what in ("remove-org", "rekey-org", "add-org"):
                self._change_orgs(e)
                await self.restart()
            elif e.what == "restart":
                await self.restart()
            elif e.what == "crash":
                assert isinstance(e.arg, int)
                self.crash_after = e.arg
                self.counts["crash armed"] += 1
            elif e.what == "back":
                assert isinstance(e.arg, timedelta)
                self.back_by = e.arg
            elif e.what == "forward":
                assert isinstance(e.arg, timedelta)
                self.step(e.arg)
        except UserError as exc:  # e.g. a change to an advisory already disclosed
            self.refused.append(f"{e.what} {e.advisory}: {exc}")
        if e.advisory is not None:
            self._took("desk", started)

    def _record(self, e: Event, record: Any) -> None:
        self.counts[e.what] += 1
        self.tracked[e.advisory or ""].history.append((self.seq, record))

    def _change_orgs(self, e: Event) -> None:
        self.counts[e.what] += 1
        if e.what == "add-org":
            fpr = self.spare.pop()
            oid = f"o{len(self.orgs):02d}"
            self.orgs.insert(-1, OrgSpec(oid, [(f"sec@{oid}.example", fpr)]))
            self.inst.put_key(fpr)
            self.folder.add(fpr)
        else:
            assert isinstance(e.arg, int)
            org = self.orgs[e.arg]
            if e.what == "remove-org":
                org.status, org.removed = "removed", self.clock.now.date()
            else:  # the org's last address gets a new key; the old one leaves the folder
                email, old = org.addresses[-1]
                org.addresses[-1] = (email, self.spare.pop())
                self.inst.put_key(org.addresses[-1][1])
                self.inst.drop_key(old)
                self.folder = (self.folder - {old}) | {org.addresses[-1][1]}
        self.inst.write_orgs(self.orgs)

    async def restart(self, *, crashed: bool = False) -> None:
        """Stop and start again as `maild run` would: a new Setup (orgs list, keys
        folder, store), `build()`, `recover()`."""
        started = time.perf_counter()
        old = self.dispatcher
        assert old is not None
        if crashed:
            # The crash cut the tick's senders short; let the receipts' group commit
            # already under way finish (a crash a moment later: its fsync runs in a
            # thread), as the old store closes next.
            for _ in range(1000):
                if old._receipts._writer is None:
                    break
                await asyncio.sleep(0.001)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.aclose(), 30)
        self._stamp()
        self.inst.stop()
        self.dispatcher, recovered = self.inst.start(self.clock)
        self.counts["crash" if crashed else "restart"] += 1
        self.counts["recovered"] += recovered
        self._took("restarts", started)

    def _took(self, what: str, started: float) -> None:
        self.counts[f"ms {what}"] += round((time.perf_counter() - started) * 1000)

    def step(self, delta: timedelta) -> None:
        self.clock.now += delta
        self.counts["clock step"] += 1

    async def tick(self) -> object:
        """One `tick()`; crashes it (cancels it mid-release) when a crash is armed and
        the sink has accepted that many of its messages."""
        assert self.dispatcher is not None
        self.seq += 1
        self.counts["tick"] += 1
        self._expect()
        before = len(self.running.sink.received)
        started = time.perf_counter()
        task = asyncio.ensure_future(self.dispatcher.tick())
        crashed = False
        if self.crash_after is not None:
            k = self.crash_after

            def crash() -> None:
                nonlocal crashed
                if not crashed and len(self.running.sink.received) - before >= k:
                    crashed = True
                    task.cancel()

            self.hook = crash
        try:
            wake: object = await task
        except asyncio.CancelledError:
            if not crashed:
                raise
            wake = CRASHED
        finally:
            self.hook = None
            self._stamp()
            self._took("ticks", started)
        if crashed:
            self.crash_after = None
            await self.restart(crashed=True)
        elif self.back_by is not None and len(self.running.sink.received) > before:
            self.step(-self.back_by)
            self.back_by = None
        return wake

    def _stamp(self) -> None:
        """Stamp what the sink accepted since the last stamp with the clock's time now
        (the clock stands still during a tick) and this step's number."""
        for r in self.running.sink.received[len(self.stamps) :]:
            self.stamps.append(Stamp(self.seq, self.clock.now, r, message_id_of(r.data)))

    def _expect(self) -> None:
        """The oracle: at the first tick at or after an advisory's notice time (before
        its disclosure), who is on the list with a usable key is who must get it."""
        now = self.clock.now
        for t in self.tracked.values():
            if t.expected is not None or t.cancelled_seq is not None or not t.history:
                continue
            plan = t.final
            if plan.notify_at is None or not plan.notify_at <= now < plan.disclose_at:
                continue
            extra = self.script.advisories[t.id].extra
            t.expected = {
                (org.id, email, fpr)
                for org in self.orgs
                if org.status == "active" or (org.status == "adhoc" and org.id in extra)
                for email, fpr in org.addresses
                if fpr in self.folder and (fpr not in self.expiry or now < self.expiry[fpr])
            }


# -- entry point -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--advisories", type=_positive, default=100)
    parser.add_argument("--orgs", type=_positive, default=50, help="organisations (>= 6)")
    parser.add_argument("--days", type=_positive, default=7, help="simulated days of activity")
    parser.add_argument("--restarts", type=int, default=4, help="clean restarts (besides reloads)")
    parser.add_argument("--crashes", type=int, default=3, help="crashes in the middle of a release")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the installation's folder")
    args = parser.parse_args(argv)
    if args.orgs < 6:
        parser.error("--orgs: give at least 6 (five take part in the list changes)")
    configure_logging()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT)
    try:
        return _run(args)
    except _OutOfTime as exc:
        print(f"\nstopped: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)


def _run(args: argparse.Namespace) -> int:
    info = machine()
    print("maild soak")
    for key, value in info.items():
        print(f"  {key:<17} {value}")
    started = time.perf_counter()
    rng = random.Random(args.seed)
    script = make_script(rng, args.advisories, args.orgs, args.days, args.restarts, args.crashes)
    inst = Installation.create()
    loop = asyncio.new_event_loop()
    try:
        running = loop.run_until_complete(start_sink())
        try:
            inst.write_config(running.port)
            soak = Soak(inst, script, running)
            print(f"\nmaking {args.orgs} organisations' keys in {inst.root}", flush=True)
            soak.make_orgs(args.orgs)
            keys_s = time.perf_counter() - started
            print(f"\nsimulating from {START:%a %d %b %Y %H:%M %Z} ({len(script.events)} events)")
            sim_started = time.perf_counter()
            with GpgCount() as gpg:
                loop.run_until_complete(soak.simulate())
            sim_s = time.perf_counter() - sim_started
            rss_mb = high_water_kb() / 1024
            soak.counts["bytes received"] = sum(len(s.received.data) for s in soak.stamps)
            end = soak.clock.now
            print(f"\ninvariants (clock at the end: {end:%a %d %b %Y %H:%M %Z})")
            ok = _check(soak, inst, end)
            figures(
                soak.counts, len(soak.stamps), soak.refused, gpg, args, keys_s, sim_s, rss_mb, end
            )
        finally:
            inst.stop()
            loop.run_until_complete(running.close())
    finally:
        loop.close()
        inst.close(keep=args.keep)
    print(f"\n{'all invariants hold' if ok else 'SOME INVARIANTS FAILED'}")
    return 0 if ok else 1


def _check(soak: Soak, inst: Installation, end: datetime) -> bool:
    assert inst.setup is not None
    checker = Checker(soak.tracked, soak.stamps, inst.setup.store, end)
    notices = [
        s
        for s in soak.stamps
        if (m := checker.rows.get(s.message_id)) is not None
        and m.kind is MessageKind.NOTICE
        and m.purpose is MessagePurpose.ORIGINAL
    ]
    sample = random.Random(1).sample(notices, k=min(SAMPLE, len(notices)))
    results = [
        checker.notices_reached(),
        checker.once(),
        checker.never_early(),
        checker.nothing_after_disclosure(),
        checker.disclosures(),
        checker.cancelled(),
        checker.no_plaintext(),
        checker.decrypt_sample(inst.orgkeys, inst.identity, sample),
        checker.settled(),
        checker.history(),
    ]
    soak.counts["possible duplicate"] = sum(m.possible_duplicate for m in checker.rows.values())
    soak.counts["duplicate receipt"] = sum(len(v) - 1 for v in checker.by_message.values())
    for kind in MessageKind:
        soak.counts[f"sent {kind}"] = sum(
            1 for s in soak.stamps if (m := checker.rows.get(s.message_id)) and m.kind is kind
        )
    soak.counts["blocked notices"] = sum(
        1
        for m in checker.rows.values()
        if m.kind is MessageKind.NOTICE and m.state is MessageState.BLOCKED
    )
    inst.stop()
    results.append(integrity(inst.database))
    return report(results)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number")
    return value


class _OutOfTime(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _OutOfTime(f"the soak ran out of time ({TIME_LIMIT} s)")


if __name__ == "__main__":
    sys.exit(main())
