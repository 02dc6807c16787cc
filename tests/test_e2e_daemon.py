"""End to end: the real `maild run` process, a loopback smarthost in its own
process, real gpg keys and SQLite. What operators and recipients see."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from maild.adapters.store import SqliteStore
from maild.domain.models import MessageKind, MessageState
from tests.conftest import CLI
from tests.daemonrig import (
    Process,
    Sink,
    daemon,
    decrypts_for,
    mails,
    receipts,
    send_mail,
    sink,
    submit,
    to,
    wait_for,
)
from tests.mailfactory import correspondent, member_mail
from tests.world import World

__all__ = ["daemon", "sink"]  # the fixtures, from the rig


def test_late_advisory_is_sent_now_and_leaks_nothing_to_the_log(
    cli: CLI, world: World, sink: Sink, daemon: Callable[[], Process]
) -> None:
    """An advisory accepted after its notice time is sent at once by the
    running daemon: each org its own notice, the announce list the
    pre-announcement; receipts hold the smarthost's queue ids; the daemon's
    log is one JSON object per line (for journald) and never contains the
    advisory's words, a token or key material; SIGTERM exits 0."""
    proc = daemon()
    adv = submit(cli, world, datetime.now(UTC) + timedelta(days=2))
    maildir = sink[2]
    wait_for("three messages", lambda: len(mails(maildir)) >= 3)
    (good,) = to(maildir, "sec@good.example")
    assert b"SECRET-WORDS-42" in decrypts_for(world, "good", good)
    assert b"SECRET-WORDS-42" not in good
    assert len(to(maildir, "announce@lists.example")) == 1
    assert to(maildir, "sec@adhoc.example") == []
    done = wait_for(
        "receipts",
        lambda: [m for m in receipts(world, adv) if m.state is MessageState.ACCEPTED],
    )
    assert isinstance(done, list) and len(done) == 3
    assert all(re.search(r"queued as [0-9A-F]+", m.smtp_response or "") for m in done)
    assert proc.stop() == 0
    log = proc.text()
    tokens = [m.ack_token for m in done if m.ack_token]
    assert tokens
    for secret in ("SECRET-WORDS-42", "frobnicator", "Use-after-free", "PGP", *tokens):
        assert secret not in log
    entries = [json.loads(line) for line in log.splitlines()]
    assert all({"timestamp", "level", "logger", "event"} <= set(e) for e in entries)
    assert {"started", "listening", "released", "stopping"} <= {e["event"] for e in entries}


def test_nothing_early_then_disclose_now_publishes_at_once(
    cli: CLI, world: World, sink: Sink, daemon: Callable[[], Process]
) -> None:
    """A future advisory is prepared but nothing is sent; `disclose-now`
    makes the running daemon publish the advisory within seconds, and the
    notices that were never sent stay unsent."""
    daemon()
    adv = submit(cli, world, datetime.now(UTC) + timedelta(days=30))
    store_ready = lambda: SqliteStore.open(world.database).payload_versions(adv)  # noqa: E731
    wait_for("the notices to be prepared", lambda: len(store_ready()) >= 2)
    assert mails(sink[2]) == []
    result = cli("--config", str(world.config), "disclose-now", adv, "--reason", "exploit out")
    assert result.code == 0
    (published,) = wait_for("the disclosure", lambda: to(sink[2], "announce@lists.example"))
    assert b"SECRET-WORDS-42" in published
    assert to(sink[2], "sec@good.example") == []
    notices = [m for m in receipts(world, adv) if m.kind is MessageKind.NOTICE]
    assert {m.state for m in notices} == {MessageState.CANCELLED}


def test_kill_9_during_a_release_loses_nothing(
    cli: CLI, world: World, sink: Sink, daemon: Callable[[], Process]
) -> None:
    """maild killed with SIGKILL while notices are on the wire: after a
    restart every notice arrives, resent with the same Message-ID and flagged
    as a possible duplicate; nothing is lost."""
    sink_proc, _, maildir = sink
    first = daemon()
    sink_proc.proc.send_signal(signal.SIGSTOP)  # transactions hang mid-release
    adv = submit(cli, world, datetime.now(UTC) + timedelta(days=2))
    wait_for(
        "a message on the wire",
        lambda: any(m.state is MessageState.SENDING for m in receipts(world, adv)),
    )
    first.stop(signal.SIGKILL)
    sink_proc.proc.send_signal(signal.SIGCONT)
    second = daemon()
    wait_for(
        "every notice accepted",
        lambda: all(
            m.state is MessageState.ACCEPTED
            for m in receipts(world, adv)
            if m.kind in (MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT)
        ),
    )
    flagged = [m for m in receipts(world, adv) if m.possible_duplicate]
    assert 1 <= len(flagged) <= 2  # at most one per open connection ([smtp] connections = 2)
    for address in ("sec@good.example", "sec@good2.example"):
        copies = to(maildir, address)
        assert 1 <= len(copies) <= 2
        ids = {re.search(rb"Message-ID: (<[^>]+>)", c).group(1) for c in copies}  # type: ignore[union-attr]
        assert len(ids) == 1
    assert second.stop() == 0


def test_sigterm_with_a_silent_smarthost_still_exits_0_within_10_seconds(
    cli: CLI, world: World, sink: Sink, daemon: Callable[[], Process]
) -> None:
    """systemd's stop: SIGTERM while the smarthost has gone silent in the
    middle of a transaction. maild exits 0 within 10 s; the message cut off
    is not lost: the next start sends it, flagged as a possible duplicate."""
    sink_proc, _, maildir = sink
    first = daemon()
    sink_proc.proc.send_signal(signal.SIGSTOP)
    adv = submit(cli, world, datetime.now(UTC) + timedelta(days=2))
    wait_for(
        "a message on the wire",
        lambda: any(m.state is MessageState.SENDING for m in receipts(world, adv)),
    )
    asked = time.monotonic()
    assert first.stop() == 0
    assert time.monotonic() - asked < 10
    assert '"event": "stop-cut-short"' in first.text()
    sink_proc.proc.send_signal(signal.SIGCONT)
    daemon()
    wait_for(
        "every notice accepted",
        lambda: all(
            m.state is MessageState.ACCEPTED
            for m in receipts(world, adv)
            if m.kind is MessageKind.NOTICE
        ),
    )
    assert any(m.possible_duplicate for m in receipts(world, adv))
    assert len(to(maildir, "sec@good.example")) >= 1


def test_run_refuses_to_start_without_its_sections(cli: CLI, world: World) -> None:
    """`maild run` without [smtp] says which section is missing: exit 2."""
    result = cli("--config", str(world.config), "run")
    assert result.code == 2 and "[smtp] is missing; 'run' needs it" in result.err


def test_a_member_submits_by_mail_to_the_running_daemon(
    world: World, sink: Sink, daemon: Callable[[], Process]
) -> None:
    """`maild run` listens on [intake] listen: a member's signed, encrypted
    advisory is answered 250, queued, and the member's encrypted reply
    reaches the smarthost; the daemon's log holds none of the advisory's
    words; SIGTERM still exits 0."""
    proc = daemon()
    with correspondent(world) as who:
        mail = member_mail(who, world.advisory().read_text())
        assert "Ok: accepted" in send_mail(world, mail)
        reply = wait_for("the reply", lambda: to(sink[2], "m@wg.example"))
        assert isinstance(reply, list)
        armored = re.search(
            rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", reply[0], re.S
        )
        assert armored is not None
        plain, signer = who.ring.decrypt_verify(armored.group(0))
        assert signer == world.identity and b"is accepted and scheduled" in plain
    assert proc.stop() == 0
    log = proc.text()
    assert "SECRET-WORDS-42" not in log and "frobnicator" not in log
