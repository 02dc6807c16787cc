"""The rig of the end-to-end tests: the real `maild run` process and the
loopback smarthost, each a process of its own with its output in a log file
under the world's root, and what a test reads back (the sink's Maildir, the
receipts, a notice decrypted as its organisation would)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import aiosmtplib
import pytest

from maild.adapters.gpg import Keyring
from maild.adapters.store import SqliteStore
from maild.domain.models import MessageRecord
from tests.conftest import CLI
from tests.keyfactory import export_secret, raw_gpg, temp_keyring
from tests.world import World

WAIT = 30.0  # seconds: an upper bound for the daemon to react, never a pacing sleep


def wait_for(what: str, check: Callable[[], object], timeout: float = WAIT) -> object:
    """Poll `check` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Process:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self.handle, stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.handle.close()
        return code


def maild_run(
    world: World, log: str, env: dict[str, str] | None = None, *, wait: bool = True
) -> Process:
    """`maild run` on the world's config (`env`: its whole environment),
    its output in `log` under the world's root; with `wait`, once it has
    logged that it started."""
    args = [sys.executable, "-m", "maild", "--config", str(world.config), "run"]
    proc = Process(args, world.root / log, env=env)
    if wait:
        wait_for("the daemon to start", lambda: '"event": "started"' in proc.text())
    return proc


def send_mail(world: World, mail: bytes) -> str:
    """The intake's reply to `mail`, or what went wrong on the connection."""

    async def send() -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=world.listen_port, start_tls=False)
        await client.connect()
        try:
            _, reply = await client.sendmail("m@wg.example", ["embargo@maild.example"], mail)
        finally:
            client.close()
        return reply

    try:
        return asyncio.run(send())
    except aiosmtplib.SMTPException as exc:
        return f"failed: {type(exc).__name__}: {exc}"


Sink = tuple[Process, int, Path]  # the sink's process, its port and its Maildir


@pytest.fixture
def sink(world: World) -> Iterator[Sink]:
    """The loopback smarthost as its own process, keeping a Maildir."""
    maildir = world.root / "maildir"
    proc = Process(
        [sys.executable, "-m", "maild.adapters.sink", "--port", "0", "--maildir", str(maildir)],
        world.root / "sink.log",
    )
    line = wait_for(
        "the sink to listen", lambda: re.search(r"listening on [\d.]+:(\d+)", proc.text())
    )
    assert isinstance(line, re.Match)
    yield proc, int(line.group(1)), maildir
    proc.proc.send_signal(signal.SIGCONT)
    proc.stop()


class Daemons:
    """The `maild run` processes a test starts, each logging to a file of its
    own; those still running when the test ends are killed."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.started: list[Process] = []

    def start(self, env: dict[str, str] | None = None) -> Process:
        proc = maild_run(self.world, f"daemon-{len(self.started)}.log", env)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.proc.poll() is None:
                proc.stop(signal.SIGKILL)


@pytest.fixture
def daemon(world: World, sink: Sink) -> Iterator[Callable[[], Process]]:
    """Starts `maild run` on the world (call it again after a kill to restart)."""
    world.enable_run(sink[1])
    daemons = Daemons(world)
    yield daemons.start
    daemons.kill_all()


def mails(maildir: Path) -> list[bytes]:
    new = maildir / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def to(maildir: Path, address: str) -> list[bytes]:
    return [m for m in mails(maildir) if f"To: {address}".encode() in m]


def receipts(world: World, advisory_id: str) -> list[MessageRecord]:
    store = SqliteStore.open(world.database)
    try:
        return store.messages(advisory_id)
    finally:
        store.close()


def submit(cli: CLI, world: World, disclosure: datetime) -> str:
    path = world.advisory(disclosure=disclosure.replace(microsecond=0).isoformat())
    result = cli("--config", str(world.config), "submit", str(path), "--json")
    assert result.code == 0, result.err
    return str(result.json()["id"])


def decrypts_for(world: World, name: str, data: bytes) -> bytes:
    armored = re.search(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", data, re.S)
    assert armored is not None
    with Keyring(world.keys.home) as keys, temp_keyring() as ring:
        secret = ring.home / "k.asc"
        secret.write_bytes(export_secret(keys, world.keys.fpr[name]))
        raw_gpg(ring, "--import", str(secret))
        plain, _ = ring.decrypt_verify(armored.group(0))
        return plain
