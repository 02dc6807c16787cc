"""A real maild installation for the benchmarks: throwaway keys made with the real gpg,
a config, an orgs list of N organisations (one address each), advisories submitted
through the real CLI, and the dispatcher wired by the daemon's own `build()`.

Making 1,000 OpenPGP keys is slow, so a small pool of organisation keys (20 by default)
is made once per run and shared: each address is its own organisation, pinned to one of
the pool's keys. gpg still encrypts every copy separately, to that copy's pinned key.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from maild import config as configuration
from maild.adapters.gpg import Keyring
from maild.cli import main as cli_main
from maild.domain.models import AdvisoryRecord, MessageKind, MessageRecord
from maild.service.daemon import build
from maild.service.demo import config_toml, org_toml
from maild.service.dispatch import Dispatcher
from maild.service.setup import Setup

KEY_POOL = 20
CONNECTIONS = 4  # [smtp] connections (maild's default)
ANNOUNCE = "announce@lists.example"
PATCH = b"--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-fn f() {}\n+fn f() { /* fixed */ }\n"
BODY = (
    "# Details\n\nA use-after-free in the frobnicator lets a crafted input write past the end "
    "of a buffer.\n\n## Affected versions\n\nAll versions before 1.2.3.\n\n## Mitigations\n\n"
    "Upgrade; no workaround is known.\n"
)


def short_tmp(prefix: str = "mb-") -> Path:
    """A short folder under /tmp (gpg-agent's socket path must stay short)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class KeyPool:
    """Organisation and WG member keys, made once per run."""

    home: Path
    orgs: list[str]
    member: str
    armored: dict[str, bytes]

    @classmethod
    def make(cls, count: int = KEY_POOL) -> KeyPool:
        home = short_tmp()
        ring = Keyring(home / "g")
        try:
            orgs = [ring.generate(f"Org Key {i} <sec@key{i}.example>") for i in range(count)]
            member = ring.generate("Member <m@wg.example>")
            armored = {fpr: ring.export_public(fpr) for fpr in [*orgs, member]}
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        finally:
            ring.close()
        return cls(home, orgs, member, armored)

    def close(self) -> None:
        Keyring(self.home / "g").close()
        shutil.rmtree(self.home, ignore_errors=True)


def org_id(i: int) -> str:
    return f"o{i:04d}"


@dataclass
class World:
    """One maild installation in a short folder under /tmp."""

    root: Path
    keys: KeyPool
    n: int
    smtp_port: int
    identity: str = ""
    setup: Setup | None = None
    pool: ThreadPoolExecutor | None = None
    dispatcher: Dispatcher | None = None
    submitted: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, keys: KeyPool, n: int, smtp_port: int) -> World:
        world = cls(short_tmp(), keys, n, smtp_port)
        try:
            world._write()
        except BaseException:
            world.close()
            raise
        return world

    def _write(self) -> None:
        world, keys, n, smtp_port = self, self.keys, self.n, self.smtp_port
        ring = Keyring(world.root / "state" / "gnupg")
        try:
            world.identity = ring.generate("maild bench <security@maild.example>")
        finally:
            ring.close()
        folder = world.root / "keys"
        folder.mkdir()
        for i, fpr in enumerate([*keys.orgs, keys.member]):
            (folder / f"k{i:02d}.asc").write_bytes(keys.armored[fpr])
        (world.root / "orgs.toml").write_text(
            "".join(
                org_toml(org_id(i), f"sec@{org_id(i)}.example", keys.orgs[i % len(keys.orgs)])
                for i in range(n)
            ),
            encoding="utf-8",
        )
        world.config.write_text(
            config_toml(
                world.identity,
                keys.member,
                smtp_port,
                domain="maild.example",
                zone="UTC",
                connections=CONNECTIONS,
                announce=ANNOUNCE,
                blog_dir=None,
            ),
            encoding="utf-8",
        )

    @property
    def config(self) -> Path:
        return self.root / "maild.toml"

    @property
    def gnupg_home(self) -> Path:
        return self.root / "state" / "gnupg"

    def submit(self, disclosure: datetime, name: str) -> str:
        """Submit an advisory (with one patch) through the real CLI; returns its id."""
        path = self.root / f"{name}.md"
        path.write_text(
            "+++\n"
            f'title = "Use-after-free in the frobnicator ({name})"\n'
            f"disclosure = {disclosure.astimezone(UTC).isoformat()}\n"
            'severity = "high"\n'
            'component = "standard library"\n'
            'cve = ["CVE-2030-0001"]\n'
            f"+++\n{BODY}",
            encoding="utf-8",
        )
        patch = self.root / f"{name}.patch"
        patch.write_bytes(PATCH)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(
                ["--config", str(self.config), "submit", str(path), "--patch", str(patch)]
            )
        if code != 0:
            raise RuntimeError(f"maild submit failed ({code}): {err.getvalue().strip()}")
        before = set(self.submitted)
        new = [r.id for r in self.store_setup().store.list_advisories() if r.id not in before]
        if len(new) != 1:
            raise RuntimeError(f"expected one new advisory, found {new}")
        self.submitted.append(new[0])
        return new[0]

    def store_setup(self) -> Setup:
        if self.setup is None:
            self.setup = Setup(configuration.load(self.config))
        return self.setup

    def open(self, clock: Callable[[], datetime]) -> Dispatcher:
        """The daemon's dispatcher, built once by `build()` as `maild run` does (with a
        2-thread gpg pool), now reading `clock`."""
        if self.dispatcher is None:
            self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpg")
            self.dispatcher = build(self.store_setup(), clock, self.pool)
        self.dispatcher.clock = clock
        return self.dispatcher

    def record(self, advisory_id: str) -> AdvisoryRecord:
        assert self.setup is not None
        record = self.setup.store.get_advisory(advisory_id)
        assert record is not None
        return record

    def messages(self, advisory_id: str, *kinds: MessageKind) -> list[MessageRecord]:
        assert self.setup is not None
        return [m for m in self.setup.store.messages(advisory_id) if not kinds or m.kind in kinds]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.setup is not None:
            self.setup.__exit__(None, None, None)
        Keyring(self.gnupg_home).close()
        shutil.rmtree(self.root, ignore_errors=True)
