"""Crash faults on the real `maild run` process: SIGKILL at named points
(maild/service/failpoints.py), then a restart. Nothing is lost, nothing is
sent early, a message is sent again only after a crash caught it between the
smarthost's reply and its receipt (at most one per open connection per
kill), and every copy sent again is flagged `possible_duplicate`."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maild.adapters.gpg import Keyring
from maild.adapters.store import SqliteStore
from maild.domain.models import MessageKind, MessageRecord, MessageState
from tests.conftest import CLI
from tests.daemonrig import WAIT, Daemons, Process, Sink, receipts, send_mail, sink, wait_for
from tests.mailfactory import correspondent, member_mail
from tests.world import World, org_entry

__all__ = ["sink"]  # the loopback smarthost fixture, from the rig

CONNECTIONS = 2  # World's [smtp] connections
Start = Callable[..., Process]


def env(failpoint: str | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "MAILD_FAILPOINT"}
    if failpoint is not None:
        out["MAILD_FAILPOINT"] = failpoint
    return out


@pytest.fixture
def start(world: World, sink: Sink) -> Iterator[Start]:
    """Starts `maild run` on the world, armed with a failpoint if given."""
    world.enable_run(sink[1])
    daemons = Daemons(world)

    def run(failpoint: str | None = None) -> Process:
        return daemons.start(env(failpoint))

    yield run
    daemons.kill_all()


def killed_itself(proc: Process) -> None:
    """The daemon died of SIGKILL at its failpoint (nobody else signalled it)."""
    code = proc.proc.wait(timeout=WAIT)
    proc.handle.close()
    assert code == -signal.SIGKILL, proc.text()[-2000:]


def many_orgs(world: World, count: int) -> list[str]:
    """`count` active orgs, one address each, all pinned to the same key."""
    addresses = [f"sec@o{i:03d}.example" for i in range(count)]
    world.write_orgs(
        "".join(
            org_entry(f"o{i:03d}", address, world.keys.fpr["good"])
            for i, address in enumerate(addresses)
        )
    )
    return addresses


def submit_at(cli: CLI, world: World, notify_at: datetime) -> str:
    """An advisory disclosed in two days whose notices (and pre-announcement)
    are due at `notify_at` (the reporter's notify_not_before)."""
    path = world.advisory(
        disclosure=(datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0).isoformat(),
        notify_not_before=notify_at.isoformat(),
    )
    result = cli("--config", str(world.config), "submit", str(path), "--json")
    assert result.code == 0, result.err
    return str(result.json()["id"])


def arrivals(maildir: Path) -> list[tuple[datetime, bytes]]:
    """What the sink accepted, each with the instant it took it (the Maildir
    name starts with the sink's clock: seconds, then M and microseconds)."""
    new = maildir / "new"
    out = []
    for path in sorted(new.iterdir()) if new.exists() else []:
        seconds, micros = re.match(r"(\d+)\.M(\d+)P", path.name).groups()  # type: ignore[union-attr]
        at = datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, UTC)
        out.append((at, path.read_bytes()))
    return out


def message_id(data: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", data, re.M)
    assert found is not None
    return found.group(1).decode()


def check_release(
    world: World, adv: str, maildir: Path, kills: int, *, at_least_one_per_kill: bool
) -> list[MessageRecord]:
    """The invariants after a release cut by `kills` crashes: every notice and
    the pre-announcement accepted and at the sink, each copy of one message
    with its one Message-ID, none before its time, the disclosure not at all;
    extra copies at most one per connection per kill, and each flagged."""
    messages = receipts(world, adv)
    by_id = {m.message_id: m for m in messages}
    due = [m for m in messages if m.kind in (MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT)]
    assert {m.state for m in due} == {MessageState.ACCEPTED}
    got = arrivals(maildir)
    notify_at = stored_notify_at(world, adv)
    copies = Counter(message_id(data) for _, data in got)
    assert set(copies) == {m.message_id for m in due}  # all there; the disclosure is not
    ids_by_address: dict[str, set[str]] = {}
    for at, data in got:
        m = by_id[message_id(data)]
        assert f"To: {m.address}".encode() in data
        assert at >= notify_at, f"{m.kind.value} to {m.address} sent {notify_at - at} early"
        ids_by_address.setdefault(m.address, set()).add(m.message_id)
    assert all(len(ids) == 1 for ids in ids_by_address.values())
    extra = {mid: n - 1 for mid, n in copies.items() if n > 1}
    assert sum(extra.values()) <= CONNECTIONS * kills
    if at_least_one_per_kill:
        assert sum(extra.values()) >= kills
    for mid in extra:
        assert by_id[mid].possible_duplicate, f"{mid} arrived twice but is not flagged"
    flagged = [m for m in messages if m.possible_duplicate]
    assert len(flagged) <= CONNECTIONS * kills
    return messages


def stored_notify_at(world: World, adv: str) -> datetime:
    """The advisory's notice time, as stored."""
    with sqlite3.connect(world.database) as db:
        (text,) = db.execute("SELECT notify_at FROM advisories WHERE id = ?", (adv,)).fetchone()
    return datetime.fromisoformat(str(text).partition("[")[0])


def accepted(world: World, adv: str) -> int:
    return sum(1 for m in receipts(world, adv) if m.state is MessageState.ACCEPTED)


def prepared(world: World, adv: str) -> int:
    store = SqliteStore.open(world.database)
    try:
        return len(store.payload_versions(adv))
    finally:
        store.close()


def all_accepted(world: World, adv: str) -> bool:
    return all(
        m.state is MessageState.ACCEPTED
        for m in receipts(world, adv)
        if m.kind in (MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT)
    )


def test_kill_9_twice_in_a_release_of_200_notices(
    cli: CLI, world: World, sink: Sink, start: Start
) -> None:
    """A release of 200 notices killed (SIGKILL) after its 50th receipt, and
    again after about the 120th: after each restart the rest goes out; every
    notice reaches its address, all copies of one notice share its
    Message-ID, nothing is sent before the notice time (nor the disclosure
    at all), and the extra copies are at most one per connection per kill,
    each flagged possible_duplicate."""
    addresses = many_orgs(world, 200)
    first = start("release@50")
    adv = submit_at(cli, world, datetime.now(UTC) + timedelta(seconds=4))
    killed_itself(first)
    done = accepted(world, adv)
    assert 50 <= done < 150, done
    second = start(f"release@{max(1, 120 - done)}")
    killed_itself(second)
    done = accepted(world, adv)
    assert 100 <= done < 201, done  # 200 notices and the pre-announcement
    last = start()
    wait_for("every notice accepted", lambda: all_accepted(world, adv), timeout=2 * WAIT)
    messages = check_release(world, adv, sink[2], kills=2, at_least_one_per_kill=False)
    notices = [m for m in messages if m.kind is MessageKind.NOTICE]
    assert sorted(m.address for m in notices) == addresses
    assert last.stop() == 0


def test_kill_9_between_data_and_receipt_repeatedly(
    cli: CLI, world: World, sink: Sink, start: Start
) -> None:
    """maild killed three times, on successive restarts, right after the
    smarthost accepted a message and before its receipt was recorded: that
    message goes again after each restart, with the same Message-ID and
    flagged possible_duplicate; every notice arrives, none early, and the
    extra copies are at least one and at most one per connection per kill."""
    many_orgs(world, 12)
    daemon = start("after-data@4")
    adv = submit_at(cli, world, datetime.now(UTC) + timedelta(seconds=3))
    for _ in range(2):
        killed_itself(daemon)
        daemon = start("after-data@3")
    killed_itself(daemon)
    last = start()
    wait_for("every notice accepted", lambda: all_accepted(world, adv))
    check_release(world, adv, sink[2], kills=3, at_least_one_per_kill=True)
    assert last.stop() == 0


def table_counts(world: World) -> dict[str, int]:
    with sqlite3.connect(world.database) as db:
        (check,) = db.execute("PRAGMA integrity_check").fetchone()
        assert check == "ok"
        tables = ("advisories", "messages", "events", "signatures", "payloads")
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def test_kill_9_in_a_member_submission_commit_leaves_no_half_state(
    world: World, sink: Sink, start: Start
) -> None:
    """maild killed (SIGKILL) inside the transaction that takes a member's
    mailed advisory, just before it commits: the member gets no 250; after a
    restart the database passes integrity_check and holds nothing of that
    mail (no advisory, notice, reply, event or remembered signature), so the
    same mail sent again is accepted, whole: the advisory with its notices,
    and the member's reply."""
    first = start("intake-commit")
    before = table_counts(world)
    with correspondent(world) as who:
        mail = member_mail(who, world.advisory().read_text())
        reply = send_mail(world, mail)
        assert not reply.startswith("250") and "accepted" not in reply, reply
        killed_itself(first)
        assert table_counts(world) == before
        start()
        assert "Ok: accepted" in send_mail(world, mail)
    with sqlite3.connect(world.database) as db:
        ((adv,),) = db.execute("SELECT id FROM advisories").fetchall()
    kinds = Counter(m.kind for m in receipts(world, str(adv)))
    assert kinds[MessageKind.NOTICE] == 2 and kinds[MessageKind.REPLY] == 1
    new = sink[2] / "new"
    wait_for(
        "the member's reply",
        lambda: any(b"To: m@wg.example" in p.read_bytes() for p in new.iterdir()),
    )


def test_submit_killed_before_its_commit_leaves_nothing(world: World) -> None:
    """`maild submit` killed (SIGKILL) inside its transaction, just before the
    commit: the database passes integrity_check and holds no trace of the
    advisory (no advisory, notice or audit event); the same submit then
    succeeds, with its notices."""
    path = world.advisory()
    command = [sys.executable, "-m", "maild", "--config", str(world.config), "submit", str(path)]
    first = subprocess.run(
        command, env=env("submit-commit"), capture_output=True, timeout=WAIT, check=False
    )
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert table_counts(world) == dict.fromkeys(
        ("advisories", "messages", "events", "signatures", "payloads"), 0
    )
    again = subprocess.run(command, env=env(), capture_output=True, timeout=WAIT, check=False)
    assert again.returncode == 0, again.stderr
    counts = table_counts(world)
    assert (counts["advisories"], counts["messages"], counts["events"]) == (1, 2, 1)


# -- a full disk ---------------------------------------------------------------------


class Disk:
    """A small tmpfs mounted on the world's state folder (database and gnupg home)."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.filler = mount / "filler"

    def fill(self) -> None:
        """Write a filler file until the device has not one byte left."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 4096, 1):
                while True:
                    try:
                        os.write(fd, bytes(size))
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(world: World) -> Iterator[Disk]:
    """The world's state folder moved onto an 8 MiB tmpfs (skipped where
    mounting is not permitted); unmounted afterwards."""
    state, keep = world.root / "state", world.root / "state.keep"
    Keyring(state / "gnupg").close()  # its agent's sockets stay behind
    state.rename(keep)
    state.mkdir(mode=0o700)
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "maild-faults", str(state)]
    mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        state.rmdir()
        keep.rename(state)
        pytest.skip(f"cannot mount a small tmpfs to fill up: {mounted.stderr.strip()}")
    try:
        shutil.copytree(keep, state, dirs_exist_ok=True, ignore=shutil.ignore_patterns("S.*"))
        yield Disk(state)
    finally:
        Keyring(state / "gnupg").close()
        subprocess.run(["umount", "--lazy", str(state)], capture_output=True, check=False)


def dump(world: World) -> list[str]:
    """The whole database as SQL, after checking its integrity."""
    with sqlite3.connect(world.database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return list(db.iterdump())


def test_submit_on_a_full_disk_says_so_and_changes_nothing(
    cli: CLI, world: World, disk: Disk
) -> None:
    """With the disk under the state folder full, `maild submit` exits 1 with
    one line on stderr saying the disk is full and naming the folder; the
    database is exactly as before and passes integrity_check; once space is
    freed the same submit succeeds."""
    assert cli("--config", str(world.config), "submit", str(world.advisory("a.md"))).code == 0
    before = dump(world)
    second = world.advisory("b.md")
    disk.fill()
    result = cli("--config", str(world.config), "submit", str(second))
    assert result.code == 1
    (line,) = result.err.strip().splitlines()
    assert "disk full" in line and str(disk.mount) in line, line
    disk.free()
    assert dump(world) == before
    again = cli("--config", str(world.config), "submit", str(second), "--json")
    assert again.code == 0, again.err
    assert len(receipts(world, str(again.json()["id"]))) == 2


def test_the_daemon_rides_out_a_full_disk(
    cli: CLI, world: World, disk: Disk, sink: Sink, start: Start
) -> None:
    """The running daemon with its disk full: a member's mailed advisory gets
    451 4.3.1 (never 250, never a refusal for good); notices falling due
    cannot be claimed, and the daemon says so in its log and keeps running
    (no exit, so no restart loop) with the queue intact; once space is
    freed, the same process sends every notice, once, and the same mail
    sent again is accepted."""
    daemon = start()
    notify_at = datetime.now(UTC) + timedelta(seconds=10)
    adv = submit_at(cli, world, notify_at)
    wait_for("the notices prepared", lambda: prepared(world, adv) == 3)
    with correspondent(world) as who:
        mail = member_mail(who, world.advisory().read_text())
    disk.fill()
    assert datetime.now(UTC) < notify_at, "the machine is too slow for this test"
    reply = send_mail(world, mail)
    # Deferred for the disk, not refused for good (gpg cannot even start):
    assert re.match(r"failed: SMTPDataError: \(451, '4\.3\.1 Insufficient system storage", reply)
    assert '"event": "mail-deferred"' in daemon.text()
    wait_for(
        "a failed pass, or an exit",
        lambda: '"event": "pass-failed"' in daemon.text() or daemon.proc.poll() is not None,
    )
    assert daemon.proc.poll() is None, daemon.text()[-2000:]
    assert arrivals(sink[2]) == []
    disk.free()
    wait_for("every notice accepted", lambda: all_accepted(world, adv))
    check_release(world, adv, sink[2], kills=0, at_least_one_per_kill=False)
    assert len(receipts(world, adv)) == 4  # two notices, pre-announcement, disclosure
    assert "Ok: accepted" in send_mail(world, mail)
    assert daemon.stop() == 0
