"""`maild demo`: the lifecycle so far, on throwaway keys in a temporary folder.

It makes a WG identity and three organisations (one with an expired key),
writes a config and orgs list, then runs the real CLI commands against them:
plan, orgs check, submit (with a patch), queue, show. Nothing leaves the host.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from maild.adapters.gpg import Keyring

ZONE = "Europe/Berlin"
ORGS = [
    ("north-distro", "North Distro", "distributor", "never"),
    ("south-rust", "South Rust Implementation", "alternate-implementation", "never"),
    ("stale-vendor", "Stale Vendor", "distributor", "expired"),
]


def run_demo(folder: Path | None = None, *, keep: bool = False) -> int:
    from maild.cli import main  # the real CLI, in this process

    work = folder or Path(tempfile.mkdtemp(prefix="maild-demo-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    steps = 6
    config = str(work / "maild.toml")

    def step(n: int, text: str) -> None:
        print(f"\n==> [{n}/{steps}] {text}", flush=True)

    def run(*args: str) -> int:
        print(f"$ maild --config {config} {' '.join(args)}", flush=True)
        return main(["--config", config, *args])

    try:
        step(1, f"making throwaway keys and a config in {work}")
        disclosure = _write_setup(work)
        print("    identity key, one WG member, three organisations (stale-vendor's key expired)")
        step(2, "the policy: what a high-severity advisory disclosed then would get")
        run("plan", "--disclosure", disclosure.isoformat(), "--severity", "high")
        step(3, "checking the organisation list and its pinned keys")
        run("orgs", "check")  # reports stale-vendor's expired key: exit 2 is expected
        step(4, "submitting an embargoed advisory with a patch")
        if run("submit", str(work / "advisory.md"), "--patch", str(work / "fix.patch")) != 0:
            return 1
        step(5, "the queue")
        run("queue")
        step(6, "one advisory: plan, recipients (the expired key is blocked), verified history")
        run("show", "WG-DEMO-001")
        print(f"\ndemo complete; folder {'kept at ' + str(work) if keep else 'removed'}")
        return 0
    finally:
        Keyring(work / "state" / "gnupg").close()
        Keyring(work / "orgkeys").close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _write_setup(work: Path) -> datetime:
    """Keys, maild.toml, orgs.toml, an advisory and a patch; returns the disclosure."""
    identity = Keyring(work / "state" / "gnupg")
    wg = identity.generate("maild demo identity <security@demo.example>")
    others = Keyring(work / "orgkeys")
    keys = work / "keys"
    keys.mkdir(exist_ok=True)
    member = others.generate("Wanda WG <wanda@wg.demo.example>")
    (keys / "member-wanda.asc").write_bytes(others.export_public(member))
    org_entries = []
    for org_id, name, basis, expiry in ORGS:
        created = datetime(2020, 1, 1, tzinfo=UTC) if expiry == "expired" else None
        fpr = others.generate(
            f"{name} <security@{org_id}.example>",
            expire="1d" if expiry == "expired" else "never",
            created=created,
        )
        (keys / f"{org_id}.asc").write_bytes(others.export_public(fpr))
        org_entries.append(
            org_toml(org_id, f"security@{org_id}.example", fpr, name=name, basis=basis)
        )
    (work / "orgs.toml").write_text("".join(org_entries), encoding="utf-8")
    (work / "maild.toml").write_text(_config_toml(wg, member), encoding="utf-8")

    zone = ZoneInfo(ZONE)
    day = (datetime.now(zone) + timedelta(days=10)).date()
    day += timedelta(days=(1 - day.weekday()) % 7)  # a Tuesday, 10 to 16 days ahead
    disclosure = datetime(day.year, day.month, day.day, 17, 0, tzinfo=zone)
    (work / "advisory.md").write_text(_advisory(disclosure), encoding="utf-8")
    (work / "fix.patch").write_text(PATCH, encoding="utf-8")
    return disclosure


def org_toml(
    org_id: str,
    email: str,
    fpr: str,
    *,
    name: str | None = None,
    basis: str = "distributor",
    status: str = "active",
    contacts: str | None = None,
    extra: str = "",
) -> str:
    """One `[[org]]` entry of orgs.toml (used by the demo and the tests)."""
    people = contacts or f'["Ana <ana@{org_id}.example>", "Ben <ben@{org_id}.example>"]'
    return f"""
[[org]]
id = "{org_id}"
name = "{name or f"Org {org_id}"}"
basis = "{basis}"
status = "{status}"
joined = 2026-01-15
contacts = {people}
pledge = {{ date = 2026-01-15, by = "Ana" }}
{extra}
  [[org.address]]
  email = "{email}"
  key = "{fpr}"
"""


def _config_toml(identity: str, member: str) -> str:
    return f"""# maild demo configuration (throwaway)
[daemon]
state_dir = "state"

[calendar]
timezone = "{ZONE}"

[identity]
address = "security@demo.example"
signing_key = "{identity}"

[keys]
dir = "keys"

[orgs]
file = "orgs.toml"

[intake]
listen = "127.0.0.1:8025"
addresses = ["embargo@demo.example"]
members = ["{member}"]
"""


def _advisory(disclosure: datetime) -> str:
    return f"""+++
id = "WG-DEMO-001"
title = "Demo: out-of-bounds write in an imaginary API"
disclosure = {disclosure.isoformat()}
severity = "high"
component = "standard library"
cve = ["CVE-2099-0001"]
preannounce = "full"
+++
# Out-of-bounds write in an imaginary API

This is a demonstration advisory. Affected versions: none, it is made up.
"""


PATCH = """--- a/library/demo.rs
+++ b/library/demo.rs
@@ -1 +1 @@
-fn demo() {}
+fn demo() { /* fixed */ }
"""
