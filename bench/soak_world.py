"""The soak's installation: one real key per organisation, an orgs list the soak edits as
the week goes on, a config with a DST-observing calendar, and the daemon's parts opened
and closed the way `maild run` opens them at every start.

Keys are ed25519 + cv25519 (fast to make). The organisations' secret keys live in a
keyring of their own (`orgkeys`), used only to check what they received.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from bench.world import short_tmp
from maild import config as configuration
from maild.adapters.gpg import Keyring
from maild.service.clock import ManualClock
from maild.service.daemon import build
from maild.service.demo import config_toml
from maild.service.dispatch import Dispatcher
from maild.service.setup import Setup

ZONE = "Europe/Berlin"
ANNOUNCE = "announce@lists.example"
MEMBER = "m@wg.example"
IDENTITY = "security@maild.example"


@dataclass
class OrgSpec:
    """One organisation as the soak means it to be listed."""

    id: str
    addresses: list[tuple[str, str]]  # (email, pinned fingerprint)
    status: str = "active"
    removed: date | None = None

    def toml(self) -> str:
        removed = (
            f'removed = {{ date = {self.removed.isoformat()}, reason = "inactive" }}\n'
            if self.removed
            else ""
        )
        out = (
            f'\n[[org]]\nid = "{self.id}"\nname = "Org {self.id}"\nbasis = "distributor"\n'
            f'status = "{self.status}"\njoined = 2026-01-15\n'
            f'contacts = ["Ana <ana@{self.id}.example>", "Ben <ben@{self.id}.example>"]\n'
            f'pledge = {{ date = 2026-01-15, by = "Ana" }}\n{removed}'
        )
        for email, fpr in self.addresses:
            out += f'  [[org.address]]\n  email = "{email}"\n  key = "{fpr}"\n'
        return out


@dataclass
class Installation:
    """A maild installation in a short folder under /tmp, and the daemon's parts while
    it runs (`start` and `stop` are what `maild run` does at its start and end)."""

    root: Path
    orgkeys: Keyring
    member: str
    identity: str = ""
    armored: dict[str, bytes] = field(default_factory=dict)  # fingerprint -> public key
    setup: Setup | None = None
    pool: ThreadPoolExecutor | None = None
    dispatcher: Dispatcher | None = None

    @classmethod
    def create(cls) -> Installation:
        root = short_tmp("ms-")
        ring = Keyring(root / "orgkeys")
        try:
            member = ring.generate(f"Member <{MEMBER}>")
            inst = cls(root, ring, member)
            inst.armored[member] = ring.export_public(member)
            state = Keyring(root / "state" / "gnupg")
            try:
                inst.identity = state.generate(f"maild soak <{IDENTITY}>")
                ring.import_key(state.export_public(inst.identity))  # to verify signatures
            finally:
                state.close()
            (root / "keys").mkdir()
            inst.put_key(member)
        except BaseException:
            ring.close()
            shutil.rmtree(root, ignore_errors=True)
            raise
        return inst

    def new_key(self, uid: str, *, expire: str = "never") -> str:
        """An organisation key (secret part kept in `orgkeys`), not yet in the keys folder."""
        fpr = self.orgkeys.generate(uid, expire=expire)
        self.armored[fpr] = self.orgkeys.export_public(fpr)
        return fpr

    def put_key(self, fpr: str) -> None:
        (self.root / "keys" / f"{fpr}.asc").write_bytes(self.armored[fpr])

    def drop_key(self, fpr: str) -> None:
        (self.root / "keys" / f"{fpr}.asc").unlink()

    def expiry(self, fpr: str, now: datetime) -> datetime | None:
        return self.orgkeys.health(fpr, now).expires_at

    def write_orgs(self, orgs: list[OrgSpec]) -> None:
        path = self.root / "orgs.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(o.toml() for o in orgs), encoding="utf-8")
        tmp.replace(path)

    def write_config(self, smtp_port: int) -> None:
        self.config.write_text(
            config_toml(
                self.identity,
                self.member,
                smtp_port,
                domain=IDENTITY.partition("@")[2],
                zone=ZONE,
                announce=ANNOUNCE,
            ),
            encoding="utf-8",
        )

    @property
    def config(self) -> Path:
        return self.root / "maild.toml"

    @property
    def database(self) -> Path:
        return self.root / "state" / "maild.db"

    def start(self, clock: ManualClock) -> tuple[Dispatcher, int]:
        """What `maild run` does at start: read the config, orgs list and keys folder,
        `build()` the dispatcher (2-thread gpg pool) and `recover()`. Returns the
        dispatcher and how many messages were recovered from `sending`."""
        assert self.setup is None, "already started"
        self.setup = Setup(configuration.load(self.config))
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpg")
        self.dispatcher = build(self.setup, clock, self.pool)
        return self.dispatcher, self.dispatcher.recover()

    def stop(self) -> None:
        """Close the store and keyring and let the gpg pool finish (the caller has
        closed the smarthost connections)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.setup is not None:
            self.setup.__exit__(None, None, None)
        self.setup = self.pool = self.dispatcher = None

    def close(self, *, keep: bool = False) -> None:
        self.stop()
        Keyring(self.root / "state" / "gnupg").close()
        self.orgkeys.close()
        if keep:
            print(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
