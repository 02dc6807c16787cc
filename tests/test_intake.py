"""Mail intake end to end, in one process: a real aiosmtpd listener with
maild's intake behind it, the real dispatcher and store, real gpg keys on
both sides, and a loopback smarthost that receives maild's replies."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import aiosmtplib
import pytest

from maild import config as configuration
from maild.adapters.sink import RunningSink, start_sink
from maild.adapters.smtp_in import Listener, start_listener
from maild.domain.models import AdvisoryState, MessageKind, MessageState
from maild.service import replies
from maild.service.clock import ManualClock
from maild.service.daemon import build, build_intake, listener_config
from maild.service.dispatch import Dispatcher
from maild.service.setup import Setup
from tests.mailfactory import (
    Correspondent,
    correspondent,
    member_mail,
    payload,
    pgp_mime,
    signed_entity,
)
from tests.world import World


@dataclass
class Intake:
    world: World
    who: Correspondent
    clock: ManualClock
    sink: RunningSink
    dispatcher: Dispatcher
    listener: Listener
    setup: Setup
    loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        return int(self.listener.sockets[0].getsockname()[1])

    def send(self, data: bytes, rcpt: str = "embargo@maild.example") -> tuple[int, str]:
        """One SMTP transaction; returns the reply to the end of DATA."""

        async def go() -> tuple[int, str]:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False)
            await client.connect()
            try:
                await client.sendmail("m@wg.example", [rcpt], data)
            except aiosmtplib.SMTPResponseException as exc:
                return exc.code, exc.message
            finally:
                client.close()
            return 250, "ok"

        return self.loop.run_until_complete(go())

    def tick(self) -> None:
        self.loop.run_until_complete(self.dispatcher.tick())

    def replies(self) -> list[bytes]:
        return [r.data for r in self.sink.sink.received if "m@wg.example" in r.rcpt_tos]

    def read_reply(self, data: bytes) -> str:
        """Decrypt a reply as the member; it must be signed by maild's key."""
        armored = re.search(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", data, re.S)
        assert armored is not None
        plain, signer = self.who.ring.decrypt_verify(armored.group(0))
        assert signer == self.world.identity
        return plain.decode()

    def state(self) -> tuple[object, ...]:
        """Everything a refused mail must leave as it was."""
        store = self.setup.store
        advisories = store.list_advisories()
        return (advisories, [store.messages(r.id) for r in advisories])


def make_intake(world: World, extra: str = "") -> Iterator[Intake]:
    loop = asyncio.new_event_loop()
    running = loop.run_until_complete(start_sink(replies=None))
    world.intake_extra = extra
    world.enable_run(running.port)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    setup = Setup(configuration.load(world.config))
    pool = ThreadPoolExecutor(max_workers=2)
    dispatcher = build(setup, clock, pool)
    intake = build_intake(setup, dispatcher, clock, pool, lambda: None)
    assert setup.config.intake is not None
    cfg = listener_config(setup.config.intake)
    listener = loop.run_until_complete(start_listener(replace(cfg, port=0), intake))
    try:
        with correspondent(world) as who:
            yield Intake(world, who, clock, running, dispatcher, listener, setup, loop)
    finally:
        listener.close()
        loop.run_until_complete(listener.wait_closed())
        loop.run_until_complete(dispatcher.aclose())
        loop.run_until_complete(running.close())
        loop.close()
        pool.shutdown()
        setup.__exit__(None, None, None)


@pytest.fixture
def intake(world: World) -> Iterator[Intake]:
    yield from make_intake(world)


def advisory_text(world: World, **fields: str) -> str:
    return world.advisory(**fields).read_text()


def test_a_members_advisory_is_queued_and_the_reply_gives_the_plan(intake: Intake) -> None:
    """A member's signed and encrypted advisory with a patch is accepted
    (250), stored as `maild submit` would, and the member gets a reply,
    signed by maild and encrypted to the member, with the plan and the
    recipients; the reply's outer headers say nothing."""
    mail = member_mail(
        intake.who,
        advisory_text(intake.world),
        attachments=[("fix.patch", b"--- a\n+++ b\n+FIXED\n")],
    )
    assert intake.send(mail)[0] == 250
    (record,) = intake.setup.store.list_advisories()
    assert record.state is AdvisoryState.SCHEDULED and record.patch_names == ("fix.patch",)
    notices = [m for m in intake.setup.store.messages(record.id) if m.kind is MessageKind.NOTICE]
    assert len(notices) == 2
    intake.tick()
    (reply,) = intake.replies()
    assert b"Use-after-free" not in reply and record.id.encode() not in reply
    text = intake.read_reply(reply)
    assert f"Accepted: {record.id}" in text
    assert "advance notice" in text and "sec@good.example" in text
    # The recipients as stored, in the store's order (the reply is built from the
    # rows the submission inserted, not read back).
    assert replies.recipients(notices) in text.replace("\r\n", "\n")


def test_a_command_is_answered_and_audited(intake: Intake) -> None:
    """`cancel ID` by mail cancels as the CLI does, under the member's
    fingerprint in the audit log; the reply confirms it."""
    intake.send(member_mail(intake.who, advisory_text(intake.world)))
    (record,) = intake.setup.store.list_advisories()
    assert intake.send(member_mail(intake.who, f"cancel {record.id}\n"))[0] == 250
    assert intake.setup.store.get_advisory(record.id).state is AdvisoryState.CANCELLED
    (event,) = [e for e in intake.setup.store.events(record.id) if e.kind == "cancelled"]
    assert event.actor == f"mail:{intake.world.keys.fpr['member']}"
    intake.tick()
    texts = [intake.read_reply(r) for r in intake.replies()]
    assert any(f"Done: cancel {record.id}" in t for t in texts)


def test_a_bad_advisory_gets_the_exact_error_and_changes_nothing(intake: Intake) -> None:
    """An advisory with a bad field is answered with the line and field,
    and nothing is queued."""
    text = advisory_text(intake.world, severity='"catastrophic"')
    assert intake.send(member_mail(intake.who, text))[0] == 250
    assert intake.setup.store.list_advisories() == []
    intake.tick()
    (reply,) = intake.replies()
    body = intake.read_reply(reply)
    assert "Refused: submit the advisory" in body and "severity" in body


def test_the_same_signed_mail_twice_is_a_replay(intake: Intake) -> None:
    """Sending the very same signed submission again is refused with the
    generic 550 and changes nothing."""
    mail = member_mail(intake.who, advisory_text(intake.world))
    assert intake.send(mail)[0] == 250
    before = intake.state()
    code, message = intake.send(mail)
    assert (code, message) == (550, "5.7.1 Message refused")
    assert intake.state() == before


def test_a_stale_signature_is_refused(intake: Intake) -> None:
    """A submission signed four days ago (max_signature_age is 3 days) is
    refused as a replay and changes nothing."""
    mail = member_mail(intake.who, advisory_text(intake.world))
    intake.clock.now += timedelta(days=4)  # maild reads it four days after it was signed
    assert intake.send(mail)[0] == 550
    assert intake.setup.store.list_advisories() == []
    refusals = [e for e in intake.setup.store.events() if e.kind == "mail-refused"]
    assert refusals and "older than max_signature_age" in str(refusals[-1].data["reason"])


def test_two_person_rule(world: World) -> None:
    """With approvals = 2 a submission waits; its submitter cannot approve
    it; another member's `approve ID` queues the notices."""
    world.members = ("member", "soon")
    world.add_key("soon")
    for h in make_intake(world, "approvals = 2"):
        h.send(member_mail(h.who, advisory_text(h.world)))
        (record,) = h.setup.store.list_advisories()
        assert record.state is AdvisoryState.AWAITING_APPROVAL
        kinds = {m.kind for m in h.setup.store.messages(record.id)}
        assert kinds == {MessageKind.REPLY}
        h.send(member_mail(h.who, f"approve {record.id}"))
        assert h.setup.store.get_advisory(record.id).state is AdvisoryState.AWAITING_APPROVAL
        h.send(member_mail(h.who, f"approve {record.id}", sign_as="soon"))
        approved = h.setup.store.get_advisory(record.id)
        assert approved.state is AdvisoryState.SCHEDULED
        notices = [m for m in h.setup.store.messages(record.id) if m.kind is MessageKind.NOTICE]
        assert len(notices) == 2
        h.tick()
        texts = [h.read_reply(r) for r in h.replies()]
        assert any("needs a second member, not its submitter" in t for t in texts)


def test_a_failed_dsn_lands_on_the_receipt_and_alerts(intake: Intake) -> None:
    """A delivery status report naming a notice's ENVID marks its receipt
    `failed` and queues an alert to the members."""
    intake.send(member_mail(intake.who, advisory_text(intake.world)))
    (record,) = intake.setup.store.list_advisories()
    notice = next(m for m in intake.setup.store.messages(record.id) if m.kind is MessageKind.NOTICE)
    dsn = dsn_bytes(notice.envid, notice.address, "failed", "5.1.1")
    assert intake.send(dsn)[0] == 250
    (updated,) = intake.setup.store.find_messages(envid=notice.envid)
    assert updated.dsn == "failed"
    intake.tick()
    alerts = [m for m in intake.setup.store.messages(record.id) if m.kind is MessageKind.ALERT]
    assert alerts and all(m.state is not MessageState.CANCELLED for m in alerts)


def dsn_bytes(envid: str, address: str, action: str, status: str) -> bytes:
    return (
        "From: MAILER-DAEMON@smarthost.example\r\n"
        "To: embargo@maild.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain\r\n\r\n"
        "Your message could not be delivered.\r\n"
        "--b1\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; smarthost.example\r\n"
        f"Original-Envelope-Id: {envid}\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {address}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
        "--b1\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        "Message-ID: <x@y>\r\n"
        "--b1--\r\n"
    ).encode()


def test_dsn_states_are_recorded_and_never_downgraded(intake: Intake) -> None:
    """`delayed` is recorded, then `delivered` replaces it; a late `delayed`
    never replaces a final report. A report naming nothing maild sent is
    taken (250, so the smarthost does not bounce it) and changes nothing."""
    intake.send(member_mail(intake.who, advisory_text(intake.world)))
    (record,) = intake.setup.store.list_advisories()
    notice = next(m for m in intake.setup.store.messages(record.id) if m.kind is MessageKind.NOTICE)

    def dsn_now() -> str | None:
        (m,) = intake.setup.store.find_messages(envid=notice.envid)
        return m.dsn

    for action, status, expected in (
        ("delayed", "4.4.1", "delayed"),
        ("delivered", "2.0.0", "delivered"),
        ("delayed", "4.4.1", "delivered"),
    ):
        assert intake.send(dsn_bytes(notice.envid, notice.address, action, status))[0] == 250
        assert dsn_now() == expected
    before = intake.state()
    assert intake.send(dsn_bytes("f" * 32, "x@y.example", "failed", "5.1.1"))[0] == 250
    assert intake.state() == before


def test_a_global_dsn_is_matched_by_message_id(intake: Intake) -> None:
    """A message/global-delivery-status report without an ENVID is matched
    by the returned Message-ID."""
    intake.send(member_mail(intake.who, advisory_text(intake.world)))
    (record,) = intake.setup.store.list_advisories()
    notice = next(m for m in intake.setup.store.messages(record.id) if m.kind is MessageKind.NOTICE)
    report = (
        dsn_bytes("unused", notice.address, "failed", "5.2.2")
        .replace(b"message/delivery-status", b"message/global-delivery-status")
        .replace(b"Original-Envelope-Id: unused\r\n", b"")
        .replace(b"Message-ID: <x@y>", f"Message-ID: {notice.message_id}".encode())
    )
    assert intake.send(report)[0] == 250
    (updated,) = intake.setup.store.find_messages(envid=notice.envid)
    assert updated.dsn == "failed" and "5.2.2" in (updated.detail or "")


def test_an_advisory_by_mail_gets_its_public_mail_on_the_next_tick(intake: Intake) -> None:
    """A running dispatcher skips its sync when nothing changed; mail taken
    in through the daemon's own store must still make the next tick add the
    advisory's pre-announcement and disclosure."""
    intake.tick()  # a first sync, with nothing queued
    intake.send(member_mail(intake.who, advisory_text(intake.world)))
    intake.tick()
    (record,) = intake.setup.store.list_advisories()
    kinds = {m.kind for m in intake.setup.store.messages(record.id)}
    assert {MessageKind.PREANNOUNCEMENT, MessageKind.DISCLOSURE} <= kinds


def test_a_members_mail_seen_in_clear_cannot_be_replayed_encrypted(intake: Intake) -> None:
    """A member's signed but unencrypted command is refused; whoever saw it
    on the wire cannot encrypt that same signed entity to maild and have it
    accepted later: its signature is spent."""
    intake.send(member_mail(intake.who, advisory_text(intake.world)))
    (record,) = intake.setup.store.list_advisories()
    entity = signed_entity(intake.who, payload(f"cancel {record.id}"), "member")
    in_clear = b"From: m@wg.example\r\nTo: embargo@maild.example\r\n" + entity
    assert intake.send(in_clear)[0] == 550
    assert intake.send(pgp_mime(intake.who.encrypt(entity)))[0] == 550
    assert intake.setup.store.get_advisory(record.id).state is AdvisoryState.SCHEDULED
