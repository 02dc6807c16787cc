"""Benchmark 4: peak RSS of the daemon with 1,000 queued advisories of 50 recipients each.

The parent makes an installation with 50 organisations, submits one advisory through the
real CLI, and copies it into 1,000 queued advisories, each with its 50 notices, its
pre-announcement and its disclosure, all marked prepared with a small fake payload (put
through the store API; preparing 52,000 real messages with gpg would take an hour and
changes nothing here: a tick before any notice time never reads a payload). Then two
child processes report their peak RSS:

* baseline: imports the daemon's modules and opens the store;
* daemon: the same, then `build()` and one `tick()` on a clock before any notice time
  (it syncs every advisory against the orgs list and checks what is prepared and due).

The peak is the kernel's high-water mark of the child's own address space (VmHWM in
/proc/self/status). getrusage(RUSAGE_SELF).ru_maxrss is printed too, but on Linux it
also counts the high-water mark of the address space the child was forked (vfork'd)
from, i.e. this benchmark process, which is larger than a daemon that starts on its own.

Run a child by hand: python -m bench.rss --child {baseline,tick} CONFIG CLOCK
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import Report, configure_logging, ratio
from bench.world import ANNOUNCE, KeyPool, World
from maild import config as configuration
from maild.adapters.store import SqliteStore
from maild.domain.models import MessageKind, MessageRecord, MessageState, NewEvent
from maild.service.daemon import build
from maild.service.embargo import notice_rows
from maild.service.setup import Setup

ADVISORIES = 1000
RECIPIENTS = 50
PAYLOAD = b"-----BEGIN PGP MESSAGE-----\r\n" + b"A" * 1000 + b"\r\n-----END PGP MESSAGE-----\r\n"
DISCLOSE = datetime(2030, 3, 12, 17, tzinfo=UTC)
TARGET_MB = 80
RUNS = 2
ROOT = Path(__file__).resolve().parent.parent


def run(keys: KeyPool, report: Report, advisories: int = ADVISORIES) -> None:
    # Nothing is due, so nothing is sent: the smarthost port is never dialled.
    world = World.create(keys, RECIPIENTS, smtp_port=9)
    try:
        print(f"  installation in {world.root}: {RECIPIENTS} organisations")
        template = world.submit(DISCLOSE, "t")
        started = time.perf_counter()
        first_notice = _seed(world, template, advisories)
        print(
            f"  seeded {advisories} advisories x ({RECIPIENTS} notices + 2 public) "
            f"with {len(PAYLOAD)}-byte payloads in {time.perf_counter() - started:.1f} s"
        )
        clock = (first_notice - timedelta(days=1)).isoformat()
        base = [_child(world, "baseline", clock) for _ in range(RUNS)]
        tick = [_child(world, "tick", clock) for _ in range(RUNS)]
    finally:
        world.close()
    base_mb = max(b["hwm_kb"] for b in base) / 1024
    tick_mb = max(t["hwm_kb"] for t in tick) / 1024
    seconds = min(t["tick_s"] for t in tick)
    assert all(t["sent"] == 0 for t in tick), "the tick sent something"
    assert all(t["advisories"] == advisories for t in tick)
    label = f"{advisories}x{RECIPIENTS}"
    report.add("rss", None, f"baseline: import + open store ({label})", f"{base_mb:.1f} MB")
    report.add(
        "rss",
        None,
        f"daemon: build() + one tick ({label})",
        f"{tick_mb:.1f} MB",
        f"target < {TARGET_MB} MB",
        tick_mb < TARGET_MB,
    )
    report.add("rss", None, "ratio daemon / baseline", ratio(tick_mb / base_mb))
    built_mb = max(t["built_kb"] for t in tick) / 1024
    report.add("rss", None, "  daemon after build(), before the tick", f"{built_mb:.1f} MB")
    inherited = max(t["maxrss_kb"] for t in [*base, *tick]) / 1024
    print(
        f"    (getrusage ru_maxrss of the children, inflated by this process's own peak: "
        f"baseline {max(b['maxrss_kb'] for b in base) / 1024:.1f} MB, "
        f"daemon {inherited:.1f} MB)"
    )
    report.add("rss", None, f"that tick's wall time ({label}, best of {RUNS})", f"{seconds:.2f} s")


def _seed(world: World, template_id: str, advisories: int) -> datetime:
    """Copy the submitted advisory into `advisories` queued, prepared ones (the first
    is the template itself). Returns the earliest notice time."""
    setup = world.store_setup()
    template = world.record(template_id)
    assert template.plan.notify_at is not None
    domain = "maild.example"
    recipients = setup.orgs.recipients(template.meta.extra_recipients)
    now = datetime.now(UTC)
    path = setup.store.path
    # The store API on a connection of our own, without an fsync per transaction: this
    # only fills the database (the children open it the daemon's way).
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    store = SqliteStore(conn, path)

    def public(record_id: str, kind: MessageKind) -> MessageRecord:
        token = uuid.uuid4().hex
        return MessageRecord(
            advisory_id=record_id,
            kind=kind,
            address=ANNOUNCE,
            message_id=f"<{token}@{domain}>",
            envid=token,
        )

    try:
        for i in range(advisories):
            if i == 0:
                record = template
                messages = list(store.messages(record.id))
            else:
                record = replace(template, meta=replace(template.meta, id=f"BENCH-{i:04d}"))
                messages = notice_rows(record, recipients, lambda fpr: None, domain)
            messages += [
                public(record.id, MessageKind.PREANNOUNCEMENT),
                public(record.id, MessageKind.DISCLOSURE),
            ]
            if i == 0:
                store.add_messages(record.id, messages[-2:])
            else:
                store.add_advisory(
                    record, messages, NewEvent(now, "submitted", "bench", record.id, {})
                )
            for m in messages:
                store.put_payload(m.message_id, record.version, PAYLOAD, now)
    finally:
        store.close()
    return template.plan.notify_at


def _child(world: World, mode: str, clock: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.rss", "--child", mode, str(world.config), clock],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rss child {mode} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the child process --------------------------------------------------------------------


def _child_main(mode: str, config_path: str, clock_text: str) -> None:
    configure_logging()
    setup = Setup(configuration.load(Path(config_path)))
    out: dict[str, float] = {}
    with setup:
        store = setup.store
        if mode == "tick":
            now = datetime.fromisoformat(clock_text)
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpg") as pool:
                dispatcher = build(setup, lambda: now, pool)
                out["built_kb"] = _high_water_kb()
                started = time.perf_counter()
                asyncio.run(dispatcher.tick())
                out["tick_s"] = time.perf_counter() - started
            out["hwm_kb"] = _high_water_kb()
            out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            records = store.list_advisories()
            out["advisories"] = len(records)
            out["sent"] = sum(
                1
                for r in records
                for m in store.messages(r.id)
                if m.state not in (MessageState.QUEUED, MessageState.BLOCKED)
            )
    out.setdefault("hwm_kb", _high_water_kb())
    out.setdefault("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(json.dumps(out))


def _high_water_kb() -> float:
    """Peak resident set of this process's own address space (VmHWM), in kB."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rss")
    parser.add_argument("--child", choices=("baseline", "tick"), required=True)
    parser.add_argument("config")
    parser.add_argument("clock", help="the tick's clock, ISO 8601 with offset")
    args = parser.parse_args()
    _child_main(args.child, args.config, args.clock)


if __name__ == "__main__":
    main()
