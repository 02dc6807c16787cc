"""`maild orgs check`, `orgs export` and `check-config` on real keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from maild.adapters.gpg import Keyring
from tests.conftest import CLI
from tests.keyfactory import export_secret, temp_keyring
from tests.world import World, org_entry


def check(cli: CLI, world: World) -> tuple[int, str]:
    result = cli("--config", str(world.config), "orgs", "check")
    return result.code, result.out + result.err


def test_good_list_checks_clean(cli: CLI, world: World) -> None:
    """A valid list with usable keys: exit 0, no problems."""
    code, out = check(cli, world)
    assert code == 0, out
    assert "0 problem(s), 0 warning(s)" in out


@pytest.mark.parametrize(
    ("key", "entry_kwargs", "message"),
    [
        ("expired", {}, "key expired on 2020-01-02"),
        ("revoked", {}, "key is revoked"),
        ("signonly", {}, "key cannot encrypt"),
        (None, {}, "is not in"),
    ],
)
def test_unusable_pinned_keys_are_problems(
    cli: CLI, world: World, key: str | None, entry_kwargs: dict[str, str], message: str
) -> None:
    """A pinned key that is missing from the keys folder, expired, revoked or
    sign-only is a problem naming the org and address: exit 2."""
    name = key or "soon"
    if key:
        world.add_key(key)
    world.write_orgs(world.orgs_text + org_entry("bad", "sec@bad.example", world.keys.fpr[name]))
    code, out = check(cli, world)
    assert code == 2
    assert f"PROBLEM org bad: sec@bad.example: {world.keys.fpr[name]}" in out
    assert message in out


def test_key_expiring_within_30_days_is_a_warning(cli: CLI, world: World) -> None:
    """A key that expires within 30 days is a warning, not a failure."""
    world.add_key("soon")
    world.write_orgs(
        world.orgs_text + org_entry("soon", "sec@soon.example", world.keys.fpr["soon"])
    )
    code, out = check(cli, world)
    assert code == 0
    assert "warning org soon: sec@soon.example: key" in out and "within 30 days" in out


def test_every_problem_is_listed_org_by_org(cli: CLI, world: World) -> None:
    """One contact, a short key id, a duplicate address and a revoked key in
    three orgs are all reported in one run."""
    world.add_key("revoked")
    text = (
        world.orgs_text
        + org_entry("one", "one@x.example", "0123456789ABCDEF")
        .replace('"Ben <ben@one.example>"', "")
        .replace('", ]', '"]')
        + org_entry("two", "sec@good.example", world.keys.fpr["good2"])
        + org_entry("three", "three@x.example", world.keys.fpr["revoked"])
    )
    world.write_orgs(text.replace('"Ana <ana@one.example>", ', '"Ana <ana@one.example>"'))
    code, out = check(cli, world)
    assert code == 2
    assert "org one: contacts: needs at least two people" in out
    assert "org one: address[1].key: '0123456789ABCDEF' is a short key id" in out
    assert "org two: address: duplicate address sec@good.example" in out
    assert "org three: three@x.example" in out and "revoked" in out


def test_secret_key_in_keys_folder_is_refused(cli: CLI, world: World) -> None:
    """A secret key dropped into the keys folder is reported and not imported."""
    with temp_keyring() as ring:
        fpr = ring.generate("Oops <oops@x.example>")
        (world.root / "keys" / "oops.asc").write_bytes(export_secret(ring, fpr))
    code, out = check(cli, world)
    assert code == 2 and "oops.asc" in out and "secret" in out.lower()
    with Keyring(world.root / "state" / "gnupg") as keyring:
        assert not keyring.health(fpr, datetime.now(UTC)).has_secret


def test_export_prints_only_the_public_part(cli: CLI, world: World) -> None:
    """`orgs export` shows active orgs' name, basis and joined date: never
    addresses, contacts, keys, or ad hoc and removed orgs."""
    md = cli("--config", str(world.config), "orgs", "export")
    assert md.code == 0
    assert "| Org good | distributor | 2026-01-15 |" in md.out
    assert "adhoc" not in md.out and "@" not in md.out
    js = cli("--config", str(world.config), "orgs", "export", "--format", "json")
    doc = json.loads(js.out)
    assert [o["id"] for o in doc] == ["good", "good2"]
    assert set(doc[0]) == {"id", "name", "basis", "joined"}
    assert "@" not in js.out and world.keys.fpr["good"] not in js.out


def test_export_refuses_a_broken_list(cli: CLI, world: World) -> None:
    """A broken list is not exported: exit 2 naming the first problem."""
    world.write_orgs(world.orgs_text.replace("joined = 2026-01-15", "joined = 'then'", 1))
    result = cli("--config", str(world.config), "orgs", "export")
    assert result.code == 2 and "joined: must be a TOML date" in result.err


def test_check_config_passes_then_names_first_problem(cli: CLI, world: World) -> None:
    """check-config exits 0 on a good setup, and 2 with one line for the
    first problem: here a WG member whose key is not in the keys folder."""
    ok = cli("--config", str(world.config), "check-config")
    assert ok.code == 0 and ok.out.strip().endswith(": ok")
    (world.root / "keys" / "member.asc").unlink()
    bad = cli("--config", str(world.config), "check-config")
    assert bad.code == 2
    assert bad.err.count("\n") == 1 and "intake.members" in bad.err


def test_check_config_requires_the_identity_secret_key(cli: CLI, world: World) -> None:
    """An identity fingerprint without its secret key in gnupg_home is refused."""
    text = world.config.read_text().replace(world.identity, world.keys.fpr["good"])
    world.config.write_text(text)
    bad = cli("--config", str(world.config), "check-config")
    assert bad.code == 2 and "identity.signing_key" in bad.err and "no secret key" in bad.err
    sub = cli("--config", str(world.config), "submit", str(world.advisory()))
    assert sub.code == 2 and "identity.signing_key" in sub.err


def test_orgs_without_action_shows_help(cli: CLI, world: World) -> None:
    """`maild orgs` alone explains its actions and exits 2."""
    result = cli("--config", str(world.config), "orgs")
    assert result.code == 2 and "check" in result.err and "export" in result.err


def test_check_config_refuses_a_member_key_that_cannot_encrypt(cli: CLI, world: World) -> None:
    """Alerts and replies are encrypted to member keys: a sign-only one is a problem."""
    world.add_key("signonly")
    text = world.config.read_text().replace(world.keys.fpr["member"], world.keys.fpr["signonly"])
    world.config.write_text(text)
    bad = cli("--config", str(world.config), "check-config")
    assert bad.code == 2 and "intake.members" in bad.err and "cannot encrypt" in bad.err


def test_member_and_identity_keys_expiring_within_30_days_are_warnings(
    cli: CLI, world: World
) -> None:
    """`orgs check` warns, one line each, of a member key and of maild's
    identity key expiring within 30 days, and still exits 0."""
    world.add_key("soon")
    world.members = ("member", "soon")
    with Keyring(world.root / "state" / "gnupg") as ring:
        world.identity = ring.generate("maild <security@maild.example>", expire="20d")
    world.write_config()
    code, out = check(cli, world)
    assert code == 0, out
    lines = out.splitlines()
    soon = world.keys.fpr["soon"]
    assert any(
        line.startswith(f"warning intake.members {soon}: key expires on ")
        and line.endswith("(within 30 days): ask the member for an extended key")
        for line in lines
    ), out
    assert any(
        line.startswith(f"warning identity.signing_key {world.identity}: key expires on ")
        and "gpg --quick-set-expire" in line
        for line in lines
    ), out
    assert "0 problem(s), 2 warning(s)" in out


def test_recipients_blocked_at_a_pending_notice_time_are_warnings(cli: CLI, world: World) -> None:
    """For an advisory still waiting for its notice time, `orgs check` warns
    of each recipient that would be blocked then (here an org whose key
    expires before it), naming the advisory, the notice time, the org, the
    address and the key; recipients whose keys will do are not listed."""
    world.add_key("soon")
    soon = world.keys.fpr["soon"]
    world.write_orgs(world.orgs_text + org_entry("soon", "sec@soon.example", soon))
    submitted = cli("--config", str(world.config), "submit", str(world.advisory()), "--json")
    assert submitted.code == 0, submitted.err
    advisory_id, notify_at = submitted.json()["id"], submitted.json()["plan"]["notify_at"]
    code, out = check(cli, world)
    assert code == 0, out
    (line,) = [x for x in out.splitlines() if x.startswith("warning advisory ")]
    assert line.startswith(
        f"warning advisory {advisory_id} (notices at {notify_at}): org soon: "
        f"sec@soon.example: key {soon}: would be blocked at the notice time: key expires on "
    )
    assert line.endswith(", before the notice time")
    assert "0 problem(s), 2 warning(s)" in out  # and the key's own expiry warning


def test_orgs_check_does_not_create_the_state_database(cli: CLI, world: World) -> None:
    """On a host where maild has not run yet, `orgs check` reads no advisory
    and leaves no state database behind (it could be owned by the wrong user)."""
    assert not world.database.exists()
    code, out = check(cli, world)
    assert code == 0, out
    assert not world.database.exists()
