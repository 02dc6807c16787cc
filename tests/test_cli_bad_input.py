"""The issue's bad-input list, through the real CLI on a queue that already
holds an advisory: each case exits 2 with one line naming the file, key or
line, and the queue stays exactly as it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import CLI
from tests.test_cli_queue import snapshot, submit
from tests.world import World, org_entry

Mutation = Callable[[World], None]


def config_line(text: str) -> Mutation:
    return lambda w: w.write_config(text)


def org_change(build: Callable[[World], str]) -> Mutation:
    return lambda w: w.write_orgs(build(w))


def with_key(name: str, org_id: str) -> Mutation:
    def change(w: World) -> None:
        if name != "missing":
            w.add_key(name)
        fpr = w.keys.fpr["soon" if name == "missing" else name]
        w.write_orgs(w.orgs_text + org_entry(org_id, f"sec@{org_id}.example", fpr))

    return change


CASES: list[tuple[str, Mutation, list[str], str]] = [
    ("misspelt config key", config_line("[calendar]\ntimezon = 'UTC'\n"), ["submit"],
     "maild.toml:19: [calendar] timezon: unknown key"),
    ("unknown time zone", config_line("[calendar]\ntimezone = 'Mars/Olympus'\n"), ["submit"],
     "maild.toml:19: [calendar] timezone: unknown IANA time zone 'Mars/Olympus'"),
    ("weekend names that are not days", config_line("[calendar]\nweekend = ['sat', 'caturday']\n"),
     ["submit"], "maild.toml:19: [calendar] weekend: 'caturday' is not a day name"),
    ("holidays that are not dates", config_line("[calendar]\nholidays = ['christmas']\n"),
     ["submit"], "maild.toml:19: [calendar] holidays: 'christmas' is not a TOML date"),
    ("org with one contact",
     org_change(lambda w: w.orgs_text.replace(', "Ben <ben@good.example>"', "")), ["submit"],
     "orgs.toml:8: org good: contacts: needs at least two people"),
    ("short key id",
     org_change(lambda w: w.orgs_text.replace(w.keys.fpr["good"], "ABCDEF0123456789")),
     ["submit"], "orgs.toml:13: org good: address[1].key: 'ABCDEF0123456789' is a short key id"),
    ("duplicate address",
     org_change(lambda w: w.orgs_text.replace("sec@good2.example", "sec@good.example")),
     ["submit"], "org good2: address: duplicate address sec@good.example"),
    ("missing key", with_key("missing", "nokey"), ["check-config"],
     "org nokey: sec@nokey.example:"),
    ("expired key", with_key("expired", "exp"), ["check-config"], "key expired on 2020-01-02"),
    ("revoked key", with_key("revoked", "rev"), ["check-config"], "key is revoked"),
    ("sign-only key", with_key("signonly", "sgn"), ["check-config"], "key cannot encrypt"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "command", "message"),
    [pytest.param(m, c, msg, id=name) for name, m, c, msg in CASES],
)
def test_bad_setup_exits_2_with_one_line_and_changes_nothing(
    cli: CLI, world: World, mutate: Mutation, command: list[str], message: str
) -> None:
    """Bad config or orgs input: exit 2, one line on stderr naming where, and
    the queue (advisories, messages, events) exactly as before."""
    submit(cli, world)
    before = snapshot(world)
    mutate(world)
    args = [*command, str(world.advisory())] if command == ["submit"] else command
    result = cli("--config", str(world.config), *args)
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1, result.err
    assert message in result.err
    assert snapshot(world) == before
