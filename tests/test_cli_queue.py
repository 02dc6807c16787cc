"""The queue commands on a real installation: real gpg keys, a real SQLite
file, the real CLI. Bad input exits 2 with one line and changes nothing."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from maild.adapters.store import SqliteStore
from tests.conftest import CLI
from tests.world import World, org_entry


def snapshot(world: World) -> Any:
    """Everything the queue holds, to prove a refused command changed nothing."""
    if not world.database.exists():
        return None
    store = SqliteStore.open(world.database)
    try:
        records = store.list_advisories()
        return (records, [store.messages(r.id) for r in records], store.events())
    finally:
        store.close()


def submit(cli: CLI, world: World, *extra: str, **fields: str) -> Any:
    result = cli(
        "--config", str(world.config), "submit", str(world.advisory(**fields)), *extra, "--json"
    )
    assert result.code == 0, result.err
    return result.json()


def test_submit_queues_with_plan_and_recipients(cli: CLI, world: World) -> None:
    """A valid advisory is accepted: id, plan, one notice per active org
    address (ad hoc orgs not named are left out), all queued."""
    doc = submit(cli, world)
    assert doc["id"].startswith(f"WG-{datetime.now(UTC).year}-")
    assert doc["plan"]["business_days"] == 5
    assert sorted(r["org"] for r in doc["recipients"]) == ["good", "good2"]
    assert {r["state"] for r in doc["recipients"]} == {"queued"}
    queue = cli("--config", str(world.config), "queue", "--json").json()
    assert [(q["id"], q["state"], q["next_action"], q["notices"]) for q in queue] == [
        (doc["id"], "scheduled", "send notices", {"queued": 2})
    ]
    text = cli("--config", str(world.config), "queue").out
    assert "2 queued" in text and "send notices at" in text


def test_ids_are_assigned_in_sequence_and_duplicates_refused(cli: CLI, world: World) -> None:
    """Advisories without an id get WG-YEAR-NNN in order; a given id that is
    already queued is refused and the queue is unchanged."""
    first = submit(cli, world)["id"]
    second = submit(cli, world)["id"]
    assert int(second[-3:]) == int(first[-3:]) + 1
    before = snapshot(world)
    path = world.advisory(id=f'"{first}"')
    result = cli("--config", str(world.config), "submit", str(path))
    assert result.code == 2 and f"id {first} is already queued" in result.err
    assert snapshot(world) == before


def test_extra_recipients_and_blocked_keys(cli: CLI, world: World) -> None:
    """extra_recipients adds an ad hoc org; an org whose key is expired,
    revoked or sign-only is blocked with the reason, never dropped silently."""
    for name in ("expired", "revoked", "signonly"):
        world.add_key(name)
    fpr = world.keys.fpr
    world.write_orgs(
        world.orgs_text
        + org_entry("exp", "sec@expired.example", fpr["expired"])
        + org_entry("rev", "sec@revoked.example", fpr["revoked"])
        + org_entry("sgn", "sec@signonly.example", fpr["signonly"])
        + org_entry("nokey", "sec@nokey.example", fpr["soon"])
    )
    doc = submit(cli, world, extra_recipients='["adhoc"]')
    states = {r["org"]: (r["state"], r["detail"]) for r in doc["recipients"]}
    assert states["adhoc"] == ("queued", None)
    assert states["good"] == ("queued", None)
    assert states["exp"][0] == "blocked" and "expired" in states["exp"][1]
    assert states["rev"] == ("blocked", "key is revoked")
    assert states["sgn"][0] == "blocked" and "cannot encrypt" in states["sgn"][1]
    assert states["nokey"][0] == "blocked" and "not in the keys folder" in states["nokey"][1]


def test_advisory_text_is_sealed_at_rest(cli: CLI, world: World) -> None:
    """The draft advisory and patches are stored encrypted to the identity
    key: the database never holds them in clear."""
    patch = world.root / "fix.patch"
    patch.write_bytes(b"--- a\n+++ b\nPATCH-WORDS-77\n")
    submit(cli, world, "--patch", str(patch))
    raw = b"".join(p.read_bytes() for p in world.database.parent.glob("maild.db*"))
    assert b"SECRET-WORDS-42" not in raw and b"PATCH-WORDS-77" not in raw
    assert b"frobnicator" in raw  # the title is kept for `maild queue`


def test_show_has_plan_recipients_and_intact_history(cli: CLI, world: World) -> None:
    """`maild show` gives the plan, recipients and a verified history."""
    adv_id = submit(cli, world)["id"]
    doc = cli("--config", str(world.config), "show", adv_id, "--json").json()
    assert doc["plan"]["business_days"] == 5 and len(doc["recipients"]) == 2
    assert [h["kind"] for h in doc["history"]] == ["submitted"]
    assert doc["history_intact"] is True
    text = cli("--config", str(world.config), "show", adv_id)
    assert text.code == 0 and "history: intact" in text.out


def test_show_reports_a_tampered_history(cli: CLI, world: World) -> None:
    """If someone edits the audit log behind maild's back, `show` says the
    history is broken and exits 1."""
    adv_id = submit(cli, world)["id"]
    conn = sqlite3.connect(world.database)
    conn.executescript(
        "DROP TRIGGER IF EXISTS events_no_update;UPDATE events SET actor = 'someone-else';"
    )
    conn.close()
    result = cli("--config", str(world.config), "show", adv_id, "--json")
    assert result.code == 1
    assert result.json()["history_intact"] is False


def test_cancel_reschedule_disclose_now_are_audited(cli: CLI, world: World) -> None:
    """Each embargo change is one event; a cancelled advisory cannot change."""
    cfg = ("--config", str(world.config))
    a = submit(cli, world)["id"]
    b = submit(cli, world)["id"]
    later = (datetime.now(UTC) + timedelta(days=40)).replace(microsecond=0).isoformat()
    assert cli(*cfg, "reschedule", a, "--disclosure", later).code == 0
    assert cli(*cfg, "show", a, "--json").json()["plan"]["disclose_at"] is not None
    assert cli(*cfg, "cancel", a).code == 0
    shown = cli(*cfg, "show", a, "--json").json()
    assert shown["state"] == "cancelled"
    assert {r["state"] for r in shown["recipients"]} == {"cancelled"}
    assert [h["kind"] for h in shown["history"]] == ["submitted", "rescheduled", "cancelled"]
    again = cli(*cfg, "cancel", a)
    assert again.code == 2 and "it is cancelled" in again.err

    assert cli(*cfg, "disclose-now", b, "--reason", "exploit published").code == 0
    shown = cli(*cfg, "show", b, "--json").json()
    assert {r["state"] for r in shown["recipients"]} == {"cancelled"}
    assert shown["history"][-1]["data"]["reason"] == "exploit published"
    assert shown["plan"]["notify_at"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cancel", "WG-0000-999"], "no advisory with id 'WG-0000-999'"),
        (["reschedule", "{id}", "--disclosure", "2020-01-01T00:00:00Z"], "is in the past"),
        (["reschedule", "{id}", "--disclosure", "2030-01-01T00:00:00"], "has no time zone"),
        (["disclose-now", "{id}", "--reason", "  "], "--reason"),
        (["disclose-now", "{id}"], "--reason"),
        (["show", "nope"], "no advisory with id 'nope'"),
        (["receipts", "nope"], "no advisory with id 'nope'"),
    ],
)
def test_bad_changes_exit_2_and_change_nothing(
    cli: CLI, world: World, args: list[str], message: str
) -> None:
    """Changes that cannot be done are refused with one line and no effect."""
    adv_id = submit(cli, world)["id"]
    before = snapshot(world)
    result = cli("--config", str(world.config), *[a.format(id=adv_id) for a in args])
    assert result.code == 2, result.err
    assert message in result.err
    assert "Traceback" not in result.err
    assert snapshot(world) == before


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"disclosure": "2030-01-01T17:00:00"},
            "adv.md:3: disclosure: 2030-01-01T17:00:00 has no ",
        ),
        (
            {"disclosure": "2020-01-01T17:00:00Z"},
            "adv.md:3: disclosure: 2020-01-01T17:00:00+00:00 is in the past",
        ),
        ({"severity": '"urgent"'}, "adv.md:4: severity: must be one of"),
        ({"category": '"crates"'}, "adv.md:6: category: must be one of"),
        ({"notify_days": "7"}, "adv.md:6: notify_days: needs reporter_approval"),
        ({"extra_recipients": '["nobody"]'}, "adv.md:6: extra_recipients: unknown organisation"),
        ({"title": '"broken'}, "adv.md:2: invalid TOML"),
        ({"colour": '"red"'}, "adv.md:6: colour: unknown key"),
    ],
)
def test_bad_advisory_exits_2_and_queue_is_untouched(
    cli: CLI, world: World, fields: dict[str, str], message: str
) -> None:
    """A bad advisory is refused with one line naming file, line and key; the
    queue stays exactly as it was."""
    submit(cli, world)
    before = snapshot(world)
    path = world.advisory(**fields)
    result = cli("--config", str(world.config), "submit", str(path))
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and message in result.err
    assert snapshot(world) == before


def test_broken_orgs_list_blocks_submit(cli: CLI, world: World) -> None:
    """With a broken orgs list nothing is accepted: an org could be missed."""
    world.write_orgs(world.orgs_text.replace('basis = "distributor"', 'basis = "reseller"', 1))
    result = cli("--config", str(world.config), "submit", str(world.advisory()))
    assert result.code == 2 and "basis: must be one of" in result.err
    assert snapshot(world) is None or snapshot(world)[0] == []


def test_misspelt_config_key_blocks_every_command(cli: CLI, world: World) -> None:
    """A misspelt config key is an error for every command, named with its line."""
    world.write_config("\n[smtp]\nprot = 25\n")
    for args in (
        ["queue"],
        ["submit", str(world.advisory())],
        ["check-config"],
        ["plan", "--disclosure", "2030-01-01T00:00:00Z"],
    ):
        result = cli("--config", str(world.config), *args)
        assert result.code == 2
        assert "maild.toml:20: [smtp] prot: unknown key (did you mean 'port'?)" in result.err
    assert snapshot(world) is None


def test_patch_problems_are_refused(cli: CLI, world: World) -> None:
    """A missing, empty or duplicate patch file is refused before anything is stored."""
    empty = world.root / "empty.patch"
    empty.write_bytes(b"")
    for extra, message in (
        (["--patch", str(world.root / "missing.patch")], "cannot read"),
        (["--patch", str(empty)], "the file is empty"),
    ):
        result = cli("--config", str(world.config), "submit", str(world.advisory()), *extra)
        assert result.code == 2 and message in result.err
    assert snapshot(world) is None or snapshot(world)[0] == []


def test_receipts_lists_one_row_per_message(cli: CLI, world: World) -> None:
    """`maild receipts ID --json` has the receipt fields of DESIGN.md 6."""
    adv_id = submit(cli, world)["id"]
    rows = cli("--config", str(world.config), "receipts", adv_id, "--json").json()
    assert len(rows) == 2
    assert set(rows[0]) == {
        "kind",
        "org",
        "address",
        "fingerprint",
        "message_id",
        "state",
        "detail",
        "attempts",
        "smtp_code",
        "smtp_response",
        "sent_at",
        "dsn",
        "acked_at",
        "possible_duplicate",
        "purpose",
    }
    assert rows[0]["kind"] == "notice" and rows[0]["message_id"].endswith("@maild.example>")


def test_commands_without_a_config_say_how_to_give_one(cli: CLI) -> None:
    """Every command but plan needs a config, and says how to give it."""
    result = cli("--config", "/nonexistent/maild.toml", "queue")
    assert result.code == 2 and "no such config file" in result.err


def test_ending_an_embargo_never_waits_on_a_broken_orgs_list(cli: CLI, world: World) -> None:
    """cancel and disclose-now work even while orgs.toml has a problem;
    submit and reschedule, which plan notices, are refused."""
    cfg = ("--config", str(world.config))
    a = submit(cli, world)["id"]
    b = submit(cli, world)["id"]
    world.write_orgs(world.orgs_text.replace('basis = "distributor"', 'basis = "vendor"', 1))
    assert cli(*cfg, "cancel", a).code == 0
    assert cli(*cfg, "disclose-now", b, "--reason", "leaked").code == 0
    later = (datetime.now(UTC) + timedelta(days=40)).replace(microsecond=0).isoformat()
    refused = cli(*cfg, "reschedule", b, "--disclosure", later)
    assert refused.code == 2 and "basis" in refused.err


def test_state_folders_are_owner_only(cli: CLI, world: World) -> None:
    """A state_dir or gnupg_home that does not exist yet is created 0700 with
    its parents, and the database 0600."""
    world.write_config()
    text = world.config.read_text().replace('state_dir = "state"', 'state_dir = "new/state"')
    world.config.write_text(text.replace("[identity]", 'gnupg_home = "fresh/gpg"\n\n[identity]'))
    assert cli("--config", str(world.config), "queue").code == 0
    assert cli("--config", str(world.config), "orgs", "check").code == 0
    for folder in ("new", "new/state", "fresh", "fresh/gpg"):
        assert (world.root / folder).stat().st_mode & 0o777 == 0o700, folder
    assert (world.root / "new" / "state" / "maild.db").stat().st_mode & 0o777 == 0o600
