"""A small real maild setup for CLI tests: keys made with real gpg, a config,
an orgs list, an advisory. Organisation keys are made once per session."""

from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from maild.adapters.gpg import Keyring
from maild.service.demo import org_toml


@dataclass(frozen=True)
class OrgKeys:
    """Armored public keys by name, and their fingerprints."""

    armored: dict[str, bytes]
    fpr: dict[str, str]
    home: Path  # the keyring holding every one of these secret keys


def make_org_keys(home: Path) -> OrgKeys:
    ring = Keyring(home)
    past = datetime(2020, 1, 1, tzinfo=UTC)
    fpr = {
        "good": ring.generate("Good <sec@good.example>"),
        "good2": ring.generate("Good Two <sec@good2.example>"),
        "adhoc": ring.generate("Adhoc <sec@adhoc.example>"),
        "member": ring.generate("Member <m@wg.example>"),
        "expired": ring.generate("Expired <sec@expired.example>", expire="1d", created=past),
        "revoked": ring.generate("Revoked <sec@revoked.example>"),
        "signonly": ring.generate("Sign Only <sec@signonly.example>", sign_only=True),
        "soon": ring.generate("Soon <sec@soon.example>", expire="10d"),
    }
    ring.revoke(fpr["revoked"])
    armored = {name: ring.export_public(f) for name, f in fpr.items()}
    ring.close()
    return OrgKeys(armored, fpr, home)


def org_entry(org_id: str, email: str, key: str, *, status: str = "active") -> str:
    return org_toml(org_id, email, key, status=status)


@dataclass
class World:
    """One maild installation in a short folder under /tmp."""

    root: Path
    keys: OrgKeys
    identity: str = ""
    orgs_text: str = ""
    intake_extra: str = ""  # more [intake] lines, e.g. "approvals = 2"
    members: tuple[str, ...] = ("member",)  # key names of the WG members
    listen_port: int = field(default_factory=lambda: free_port())

    @property
    def config(self) -> Path:
        return self.root / "maild.toml"

    @property
    def database(self) -> Path:
        return self.root / "state" / "maild.db"

    def build(self, key_names: tuple[str, ...] = ("good", "good2", "adhoc", "member")) -> World:
        ring = Keyring(self.root / "state" / "gnupg")
        self.identity = ring.generate("maild test <security@maild.example>")
        ring.close()
        (self.root / "keys").mkdir(exist_ok=True)
        for name in key_names:
            (self.root / "keys" / f"{name}.asc").write_bytes(self.keys.armored[name])
        self.orgs_text = (
            org_entry("good", "sec@good.example", self.keys.fpr["good"])
            + org_entry("good2", "sec@good2.example", self.keys.fpr["good2"])
            + org_entry("adhoc", "sec@adhoc.example", self.keys.fpr["adhoc"], status="adhoc")
        )
        self.write_orgs(self.orgs_text)
        self.write_config()
        return self

    def enable_run(self, smtp_port: int) -> None:
        """Add what `maild run` needs: a smarthost, intake and announce list."""
        self.write_config(
            f"""
[smtp]
host = "127.0.0.1"
port = {smtp_port}
starttls = "off"
connections = 2

[announce]
addresses = ["announce@lists.example"]
blog_dir = "blog"
"""
        )

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            f"""[daemon]
state_dir = "state"

[identity]
address = "security@maild.example"
signing_key = "{self.identity}"

[keys]
dir = "keys"

[orgs]
file = "orgs.toml"

[intake]
listen = "127.0.0.1:{self.listen_port}"
addresses = ["embargo@maild.example"]
members = [{", ".join(f'"{self.keys.fpr[m]}"' for m in self.members)}]
{self.intake_extra + chr(10) if self.intake_extra else ""}{extra}""",
            encoding="utf-8",
        )

    def write_orgs(self, text: str) -> None:
        (self.root / "orgs.toml").write_text(text, encoding="utf-8")

    def add_key(self, name: str) -> None:
        (self.root / "keys" / f"{name}.asc").write_bytes(self.keys.armored[name])

    def advisory(self, name: str = "adv.md", **fields: str) -> Path:
        disclosure = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
        values = {
            "title": '"Use-after-free in the frobnicator"',
            "disclosure": disclosure.isoformat(),
            "severity": '"high"',
            "component": '"standard library"',
            **fields,
        }
        front = "\n".join(f"{k} = {v}" for k, v in values.items() if v != "")
        path = self.root / name
        path.write_text(f"+++\n{front}\n+++\n# Details\n\nSECRET-WORDS-42 in the body.\n")
        return path

    def close(self) -> None:
        Keyring(self.root / "state" / "gnupg").close()
        shutil.rmtree(self.root, ignore_errors=True)


def free_port() -> int:
    """A loopback port nothing listens on now (for `maild run`'s intake)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="mw-", dir="/tmp"))
