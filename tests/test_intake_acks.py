"""Acknowledgements by mail, end to end: an advisory is submitted by mail, its
notices go out at the notice time, and each organisation acknowledges the token
in its notice, signed by the key pinned for its address (encrypted or not)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from maild.domain.models import AdvisoryRecord, MessageKind, MessageRecord, MessageState
from tests.conftest import CLI
from tests.mailfactory import (
    member_mail,
    payload,
    pgp_mime,
    plain_mail,
    signed_mime,
    signed_then_encrypted,
)
from tests.test_intake import Intake, advisory_text, make_intake
from tests.world import World

REFUSED = (550, "5.7.1 Message refused")
TOKEN = re.compile(rb"^ *ACK ([0-9a-f]{32})\r?$", re.M)


@pytest.fixture
def h(world: World) -> Iterator[Intake]:
    yield from make_intake(world)


def notices_out(h: Intake, advisories: int = 1) -> list[AdvisoryRecord]:
    """Submit `advisories` advisories by mail, then move the clock to the last notice
    time and let the dispatcher send every notice."""
    for n in range(advisories):
        mail = member_mail(h.who, advisory_text(h.world, title=f'"Flaw number {n}"'))
        assert h.send(mail)[0] == 250
    records = h.setup.store.list_advisories()
    assert len(records) == advisories
    h.tick()
    due = [r.plan.notify_at for r in records]
    assert all(due)
    h.clock.now = max(d for d in due if d is not None)
    h.tick()
    notices = h.setup.store.find_messages(kinds=[MessageKind.NOTICE])
    assert len(notices) == 2 * advisories
    assert all(m.state is MessageState.ACCEPTED and m.acked_at is None for m in notices)
    return records


def tokens_received(h: Intake, address: str) -> list[str]:
    """The ACK tokens in the notices `address` received, read from the decrypted
    notices (the correspondent holds every org's secret key)."""
    found = []
    for received in h.sink.sink.received:
        if address not in received.rcpt_tos:
            continue
        armored = re.search(
            rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", received.data, re.S
        )
        assert armored is not None
        plain, signer = h.who.ring.decrypt_verify(armored.group(0))
        assert signer == h.world.identity
        found += [t.decode() for t in TOKEN.findall(plain)]
    return found


def notice(h: Intake, token: str) -> MessageRecord:
    (found,) = h.setup.store.find_messages(kinds=[MessageKind.NOTICE], ack_token=token)
    return found


def acked(h: Intake) -> dict[str, datetime | None]:
    """acked_at of every notice, by token."""
    return {
        str(m.ack_token): m.acked_at
        for m in h.setup.store.find_messages(kinds=[MessageKind.NOTICE])
    }


def ack_events(h: Intake) -> list[dict[str, object]]:
    return [
        {"actor": e.actor, "advisory": e.advisory_id, **e.data}
        for e in h.setup.store.events()
        if e.kind == "acknowledged"
    ]


def ack_mail(h: Intake, form: str, text: str, signer: str | None) -> bytes:
    """An acknowledgement in one of the forms an org's mail client may send."""
    if form == "encrypted":
        return pgp_mime(h.who.encrypt(payload(text), sign_as=signer))
    if form == "signed-then-encrypted":  # RFC 3156 6.1, as mutt sends it
        assert signer is not None
        return signed_then_encrypted(h.who, payload(text), signer)
    if form == "signed":
        assert signer is not None
        part = payload(text)
        return signed_mime(part, h.who.detach_sign(part, signer))
    if form == "clearsigned":
        assert signer is not None
        return plain_mail(h.who.clearsign(text.encode(), signer))
    assert form == "plain" and signer is None
    return plain_mail(text.encode())


@pytest.mark.parametrize("form", ["encrypted", "signed-then-encrypted", "signed", "clearsigned"])
def test_an_ack_signed_by_the_pinned_key_records_acked_at(h: Intake, form: str) -> None:
    """An ack quoting the token of good's notice, signed by good's pinned key (PGP/MIME
    signed and encrypted to maild in either RFC 3156 form, multipart/signed only, or
    clearsigned), is taken
    (250) and sets acked_at, at maild's clock, on exactly that receipt; the audit log
    records it under the org."""
    (record,) = notices_out(h)
    (token,) = tokens_received(h, "sec@good.example")
    (other,) = tokens_received(h, "sec@good2.example")
    assert notice(h, token).address == "sec@good.example"
    h.clock.now += timedelta(hours=2)
    text = f"Thanks, received.\n\nACK {token}\n"
    assert h.send(ack_mail(h, form, text, "good"))[0] == 250
    assert acked(h) == {token: h.clock.now, other: None}
    (event,) = ack_events(h)
    assert event == {
        "actor": "org:good",
        "advisory": record.id,
        "address": "sec@good.example",
        "message_id": notice(h, token).message_id,
    }


def test_receipts_json_shows_the_acknowledgement(
    h: Intake, cli: CLI, capsys: pytest.CaptureFixture[str]
) -> None:
    """`maild receipts ID --json` shows acked_at on the acknowledged notice only."""
    (record,) = notices_out(h)
    (token,) = tokens_received(h, "sec@good.example")
    assert h.send(ack_mail(h, "encrypted", f"> ACK {token}\n", "good"))[0] == 250
    capsys.readouterr()  # the harness's log lines so far
    result = cli("--config", str(h.world.config), "receipts", record.id, "--json")
    assert result.code == 0, result.err
    rows = [row for row in result.json() if row["kind"] == "notice"]
    by_address = {row["address"]: row["acked_at"] for row in rows}
    assert by_address["sec@good2.example"] is None
    acked_at = by_address["sec@good.example"]
    assert acked_at is not None and datetime.fromisoformat(acked_at) == h.clock.now


@pytest.mark.parametrize(
    ("form", "signer"),
    [
        ("encrypted", "good2"),  # another org's key maild knows
        ("signed-then-encrypted", "good2"),
        ("signed", "good2"),
        ("clearsigned", "good2"),
        ("encrypted", "soon"),  # a key maild does not have
        ("encrypted", None),  # unsigned, encrypted to maild
        ("plain", None),  # unsigned text
    ],
)
def test_an_ack_not_signed_by_the_pinned_key_is_refused(
    h: Intake, form: str, signer: str | None
) -> None:
    """An ack quoting good's token but signed by another org's key, by an unknown key,
    or not at all, is refused with the generic 550 and records nothing."""
    notices_out(h)
    (token,) = tokens_received(h, "sec@good.example")
    before = acked(h)
    assert h.send(ack_mail(h, form, f"ACK {token}\n", signer)) == REFUSED
    assert acked(h) == before and all(v is None for v in before.values())
    assert ack_events(h) == []
    refusals = [e.data for e in h.setup.store.events() if e.kind == "mail-refused"]
    assert len(refusals) == (form != "plain")  # unsigned text is junk: only logged
    assert token not in repr(refusals)


def test_a_repeated_ack_keeps_the_first_time(h: Intake) -> None:
    """Acknowledging the same notice again (a new mail, later) is taken but keeps the
    first acked_at, and is audited once."""
    notices_out(h)
    (token,) = tokens_received(h, "sec@good.example")
    assert h.send(ack_mail(h, "encrypted", f"ACK {token}\n", "good"))[0] == 250
    first = h.clock.now
    h.clock.now += timedelta(days=1)
    assert h.send(ack_mail(h, "clearsigned", f"ACK {token}\n", "good"))[0] == 250
    assert notice(h, token).acked_at == first
    assert len(ack_events(h)) == 1


def test_only_tokens_of_notices_pinned_to_the_signer_count(h: Intake) -> None:
    """One ack signed by good quoting good's tokens from two advisories and good2's
    token acknowledges both of good's notices, not good2's."""
    notices_out(h, advisories=2)
    mine = tokens_received(h, "sec@good.example")
    theirs = tokens_received(h, "sec@good2.example")
    assert len(mine) == 2 and len(theirs) == 2
    text = "".join(f"ACK {t}\n" for t in [mine[0], theirs[0], mine[1]])
    assert h.send(ack_mail(h, "encrypted", text, "good"))[0] == 250
    now = h.clock.now
    assert acked(h) == {mine[0]: now, mine[1]: now, theirs[0]: None, theirs[1]: None}
    assert {e["address"] for e in ack_events(h)} == {"sec@good.example"}
    assert len(ack_events(h)) == 2


def test_an_ack_quoting_only_another_orgs_token_is_refused(h: Intake) -> None:
    """good2's token in a mail signed by good acknowledges nothing: refused (550)."""
    notices_out(h)
    (theirs,) = tokens_received(h, "sec@good2.example")
    assert h.send(ack_mail(h, "encrypted", f"ACK {theirs}\n", "good")) == REFUSED
    assert all(v is None for v in acked(h).values())


def test_tokens_outside_the_clearsigned_text_do_not_count(h: Intake) -> None:
    """Unsigned lines after a clearsigned block are not part of the acknowledgement:
    only the token inside the signed text is recorded."""
    notices_out(h, advisories=2)
    signed_token, unsigned_token = tokens_received(h, "sec@good.example")
    signed = h.who.clearsign(f"ACK {signed_token}\n".encode(), "good")
    mail = plain_mail(signed + f"\nACK {unsigned_token}\n".encode())
    assert h.send(mail)[0] == 250
    assert notice(h, signed_token).acked_at == h.clock.now
    assert notice(h, unsigned_token).acked_at is None


def test_an_unsigned_openpgp_message_after_a_clearsigned_ack_spoils_it(h: Intake) -> None:
    """A clearsigned ack followed by an unsigned OpenPGP message (literal data quoting
    another token) is refused (550): gpg sees two plaintexts, so neither counts."""
    notices_out(h, advisories=2)
    signed_token, unsigned_token = tokens_received(h, "sec@good.example")
    signed = h.who.clearsign(f"ACK {signed_token}\n".encode(), "good")
    stored = h.who.gpg(["--store", "--armor"], f"ACK {unsigned_token}\n".encode())
    assert h.send(plain_mail(signed + stored)) == REFUSED
    assert all(v is None for v in acked(h).values())
