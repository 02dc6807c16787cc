"""Integration: Debian's real Postfix as maild's `[smtp]` smarthost.

A private Postfix instance (tests/postfix.py) takes maild's mail on loopback,
delivers it to Maildirs, and sends the DSNs it generates back to maild's
intake listener, as an operator's smarthost would. The real `maild run`
daemon, real gpg keys and SQLite."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from maild.adapters.store import SqliteStore
from tests.conftest import CLI
from tests.daemonrig import Daemons, Process, decrypts_for, submit, wait_for
from tests.postfix import Postfix, available, running
from tests.world import World

NOT_HERE = available()  # why a private Postfix cannot run here, if it cannot
pytestmark = pytest.mark.skipif(
    NOT_HERE is not None and not os.environ.get("CI"), reason=f"{NOT_HERE}; CI installs it"
)

WAIT = 60.0  # seconds: an upper bound for Postfix and maild to react
DOMAINS = ("good.example", "good2.example", "lists.example", "wg.example")
EVERYONE = ("sec@good.example", "sec@good2.example", "announce@lists.example", "m@wg.example")
QUEUED_AS = re.compile(r"queued as ([0-9A-F]+)")
FLUSH_EVERY = 2.0  # seconds between `postqueue -f` while waiting
T = TypeVar("T")


@pytest.fixture
def postfix(world: World) -> Iterator[Callable[[Sequence[str]], Postfix]]:
    """Starts a private Postfix with these mailboxes that relays maild.example
    to this world's intake listener; stopped at the end of the test."""
    with ExitStack() as stack:

        def start(mailboxes: Sequence[str]) -> Postfix:
            return stack.enter_context(
                running(
                    mailboxes=mailboxes,
                    domains=DOMAINS,
                    relay_domain="maild.example",
                    relay_port=world.listen_port,
                )
            )

        yield start


@pytest.fixture
def daemon(world: World) -> Iterator[Callable[[Postfix], Process]]:
    """Starts `maild run` with the given Postfix as its smarthost."""
    daemons = Daemons(world)

    def start(smarthost: Postfix) -> Process:
        world.enable_run(smarthost.port)
        return daemons.start()

    yield start
    daemons.kill_all()


def receipts_json(cli: CLI, world: World, advisory_id: str) -> list[dict[str, Any]]:
    """What an operator sees: `maild receipts ID --json`."""
    result = cli("--config", str(world.config), "receipts", advisory_id, "--json")
    assert result.code == 0, result.err
    rows = result.json()
    assert isinstance(rows, list)
    return rows


def dsns(world: World, advisory_id: str) -> dict[str, str | None]:
    """address -> dsn of the advisory's notices and pre-announcements."""
    store = SqliteStore.open(world.database)
    try:
        return {
            m.address: m.dsn
            for m in store.messages(advisory_id)
            if m.kind.value in ("notice", "preannouncement")
        }
    finally:
        store.close()


def settled(smarthost: Postfix, check: Callable[[], T]) -> Callable[[], T]:
    """`check`, asking Postfix to retry its deferred mail (e.g. a DSN that
    met a busy intake) every FLUSH_EVERY seconds while it is still false."""
    last = [time.monotonic()]

    def poll() -> T:
        result = check()
        if not result and time.monotonic() - last[0] > FLUSH_EVERY:
            smarthost.flush()
            last[0] = time.monotonic()
        return result

    return poll


def test_notices_through_postfix_hold_its_queue_ids_and_come_back_delivered(
    cli: CLI,
    world: World,
    postfix: Callable[[Sequence[str]], Postfix],
    daemon: Callable[[Postfix], Process],
) -> None:
    """With Postfix as the smarthost, each notice is accepted by Postfix and
    its receipt's smtp_response holds the queue id Postfix really gave it
    (the one in Postfix's log and in the Received header of the delivered
    copy); the org's Maildir holds the encrypted notice, which only the org's
    key opens; Postfix's success DSNs come back to maild's intake and every
    receipt shows dsn = delivered. SIGTERM still exits 0."""
    smarthost = postfix(EVERYONE)
    proc = daemon(smarthost)
    adv = submit(cli, world, datetime.now(UTC) + timedelta(days=2))
    wait_for(
        "Postfix's delivery DSNs on every receipt",
        settled(
            smarthost,
            lambda: (
                dsns(world, adv)
                == {
                    "sec@good.example": "delivered",
                    "sec@good2.example": "delivered",
                    "announce@lists.example": "delivered",
                }
            ),
        ),
        WAIT,
    )
    rows = receipts_json(cli, world, adv)
    notices = [r for r in rows if r["kind"] == "notice" and r["state"] == "accepted"]
    assert {r["address"] for r in notices} == {"sec@good.example", "sec@good2.example"}
    logged = smarthost.received_ids()
    for row in notices:
        assert row["dsn"] == "delivered" and row["smtp_code"] == 250
        found = QUEUED_AS.search(row["smtp_response"] or "")
        assert found is not None, row["smtp_response"]
        queue_id = found.group(1)
        assert queue_id in logged
        (copy,) = smarthost.delivered(row["address"])
        assert re.search(rf"with ESMTP id {queue_id}\s+for <{row['address']}>".encode(), copy)
        assert row["message_id"].encode() in copy
        assert b"SECRET-WORDS-42" not in copy
        org = row["address"].split("@")[1].split(".")[0]
        assert b"SECRET-WORDS-42" in decrypts_for(world, org, copy)
    assert proc.stop() == 0
    assert "SECRET-WORDS-42" not in proc.text()


def test_a_notice_postfix_bounces_gets_its_failure_dsn_and_an_alert(
    cli: CLI,
    world: World,
    postfix: Callable[[Sequence[str]], Postfix],
    daemon: Callable[[Postfix], Process],
) -> None:
    """Postfix accepts a notice for an org address it has no mailbox for,
    then bounces it: its failure DSN comes back to maild's intake, the
    receipt shows dsn = failed with Postfix's status in the detail, the other
    org's receipt still shows delivered, and the WG member is alerted by an
    encrypted mail that Postfix delivers."""
    smarthost = postfix([a for a in EVERYONE if a != "sec@good2.example"])
    daemon(smarthost)
    adv = submit(cli, world, datetime.now(UTC) + timedelta(days=2))
    wait_for(
        "Postfix's DSNs",
        settled(
            smarthost,
            lambda: (
                dsns(world, adv).get("sec@good2.example") == "failed"
                and dsns(world, adv).get("sec@good.example") == "delivered"
            ),
        ),
        WAIT,
    )
    (bounced,) = [r for r in receipts_json(cli, world, adv) if r["address"] == "sec@good2.example"]
    assert bounced["state"] == "accepted" and QUEUED_AS.search(bounced["smtp_response"] or "")
    assert bounced["dsn"] == "failed"
    assert "5.1.1" in (bounced["detail"] or "")
    alerts = wait_for(
        "the alert delivered by Postfix",
        settled(smarthost, lambda: smarthost.delivered("m@wg.example")),
        WAIT,
    )
    assert isinstance(alerts, list)
    assert b"-----BEGIN PGP MESSAGE-----" in alerts[0]
    rows = receipts_json(cli, world, adv)
    assert [r["address"] for r in rows if r["kind"] == "alert"] == ["m@wg.example"]
