"""SIGHUP on the real `maild run`: the config, the orgs list and the keys
folder are read again without losing or re-sending anything, and a reload
that does not validate changes nothing."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from maild import config
from maild.adapters.store import SqliteStore
from maild.domain.models import MessageKind, MessageRecord, MessageState
from maild.service.demo import org_toml
from maild.service.reload import restart_only
from tests.conftest import CLI
from tests.daemonrig import Process, Sink, daemon, mails, receipts, sink, submit, wait_for
from tests.keyfactory import add_encryption_subkey, temp_keyring
from tests.world import World, org_entry

__all__ = ["daemon", "sink"]  # the real smarthost and `maild run` fixtures, from the rig
Daemon = Callable[[], Process]


def reloads(proc: Process, event: str) -> int:
    return proc.text().count(f'"event": "{event}"')


def last(proc: Process, event: str) -> dict[str, object]:
    """The daemon's latest log entry for `event`."""
    entries = [json.loads(line) for line in proc.text().splitlines()]
    return [e for e in entries if e["event"] == event][-1]


def hup(proc: Process, event: str = "reloaded") -> None:
    """SIGHUP, then wait until the daemon logged one more `event`."""
    seen = reloads(proc, event)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(f"a {event} line", lambda: reloads(proc, event) > seen)


def notices(world: World, advisory_id: str) -> dict[str, MessageRecord]:
    return {
        m.org or "": m
        for m in receipts(world, advisory_id)
        if m.kind is MessageKind.NOTICE and m.state is not MessageState.CANCELLED
    }


def payloads(world: World, advisory_id: str) -> dict[str, bytes]:
    """Prepared bytes of the advisory's live notices, by org id."""
    store = SqliteStore.open(world.database)
    try:
        found = {org: store.payload(m.message_id) for org, m in notices(world, advisory_id).items()}
    finally:
        store.close()
    return {org: p[1] for org, p in found.items() if p is not None}


@pytest.fixture
def fresh_keys(world: World) -> Iterator[tuple[str, str, Callable[[], None]]]:
    """Two keys of the test's own (so their key material can change): one
    pinned from the start, one for a newcomer; the third item adds an
    encryption subkey to the first and re-exports it to the keys folder."""
    with temp_keyring() as ring:
        fresh = ring.generate("Fresh <sec@fresh.example>")
        newcomer = ring.generate("Newcomer <sec@newcomer.example>")
        (world.root / "keys" / "fresh.asc").write_bytes(ring.export_public(fresh))

        def rekey() -> None:
            add_encryption_subkey(ring, fresh, expire="2y")
            (world.root / "keys" / "fresh.asc").write_bytes(ring.export_public(fresh))
            (world.root / "keys" / "newcomer.asc").write_bytes(ring.export_public(newcomer))

        yield fresh, newcomer, rekey


def test_reload_takes_the_new_list_and_keys_and_resends_nothing(
    cli: CLI,
    world: World,
    sink: Sink,
    daemon: Daemon,
    fresh_keys: tuple[str, str, Callable[[], None]],
) -> None:
    """After SIGHUP a removed org's waiting notice is cancelled, a new org
    gets one, a notice is prepared again only where its org's entry or its
    key changed (the others keep their bytes), and nothing already sent
    goes out again."""
    fresh, newcomer, rekey = fresh_keys
    fpr = world.keys.fpr
    base = org_entry("good", "sec@good.example", fpr["good"]) + org_entry(
        "fresh", "sec@fresh.example", fresh
    )
    world.write_orgs(
        base
        + org_entry("good2", "sec@good2.example", fpr["good2"])
        + org_entry("third", "sec@third.example", fpr["member"])
    )
    proc = daemon()
    sent = submit(cli, world, datetime.now(UTC) + timedelta(days=2))
    wait_for(
        "the late advisory's notices to be accepted",
        lambda: {m.state for m in notices(world, sent).values()} == {MessageState.ACCEPTED},
    )
    future = submit(cli, world, datetime.now(UTC) + timedelta(days=30))
    wait_for("four notices prepared", lambda: len(payloads(world, future)) == 4)
    before, delivered = payloads(world, future), len(mails(sink[2]))

    world.write_orgs(
        base
        + org_toml("good2", "sec@good2.example", fpr["good2"], name="Good Two, renamed")
        + org_entry("newcomer", "sec@newcomer.example", newcomer)
    )
    rekey()
    hup(proc)

    wait_for(
        "the newcomer's notice prepared",
        lambda: set(payloads(world, future)) == {"good", "fresh", "good2", "newcomer"},
    )
    after = payloads(world, future)
    assert after["good"] == before["good"]  # nothing changed for it: same bytes
    assert after["good2"] != before["good2"]  # its entry changed
    assert after["fresh"] != before["fresh"]  # its key changed
    (third,) = [m for m in receipts(world, future) if m.org == "third"]
    assert third.state is MessageState.CANCELLED
    assert len(mails(sink[2])) == delivered
    assert all(m.state is MessageState.ACCEPTED for m in notices(world, sent).values())
    assert last(proc, "reloaded")["prepare_again"] == 2
    assert proc.stop() == 0


def test_a_reload_that_does_not_validate_keeps_the_running_config(
    cli: CLI, world: World, sink: Sink, daemon: Daemon
) -> None:
    """A broken orgs list, or a setting only a restart can change, makes
    SIGHUP log why and change nothing: no notice is cancelled, the listener
    stays where it was; once the files are right, SIGHUP takes them."""
    proc = daemon()
    future = submit(cli, world, datetime.now(UTC) + timedelta(days=30))
    wait_for("the notices planned", lambda: len(notices(world, future)) == 2)
    orgs_file, config_text = world.root / "orgs.toml", world.config.read_text()

    good_list = orgs_file.read_text()
    world.write_orgs('[[org]]\nid = "broken"\nname = 3\n')
    hup(proc, "reload-failed")
    reason = str(last(proc, "reload-failed")["reason"])
    assert "orgs.toml" in reason and "name" in reason

    moved = config_text.replace(f":{world.listen_port}", f":{world.listen_port + 1}")
    world.write_orgs(good_list)
    world.config.write_text(moved)
    hup(proc, "reload-failed")
    assert "intake.listen" in str(last(proc, "reload-failed")["reason"])
    with socket.create_connection(("127.0.0.1", world.listen_port), timeout=5):
        pass  # still listening where it was

    assert {m.state for m in notices(world, future).values()} == {MessageState.QUEUED}
    world.config.write_text(config_text)
    hup(proc)
    assert {m.state for m in notices(world, future).values()} == {MessageState.QUEUED}
    assert proc.stop() == 0


def test_only_settings_the_running_daemon_cannot_take_need_a_restart(world: World) -> None:
    """A reload refuses (and names) changes to where the state lives, the
    identity and the listener; the calendar, smarthost, announce list,
    members and approvals are taken live."""
    world.enable_run(2525)
    text = world.config.read_text()
    old = config.parse(text, world.config)

    def changed(new_text: str) -> list[str]:
        return restart_only(old, config.parse(new_text, world.config))

    assert changed(text) == []
    live = text.replace("port = 2525", "port = 2526").replace(
        'addresses = ["announce@lists.example"]', 'addresses = ["news@lists.example"]'
    )
    assert changed(live + '\n[calendar]\ntimezone = "Europe/Berlin"\n') == []
    assert changed(text.replace('state_dir = "state"', 'state_dir = "elsewhere"')) == ["[daemon]"]
    moved = text.replace('addresses = ["embargo@maild.example"]', 'addresses = ["e@maild.example"]')
    assert changed(moved.replace(f":{world.listen_port}", ":1")) == [
        "intake.addresses",
        "intake.listen",
    ]
