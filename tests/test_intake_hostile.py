"""Hostile mail on the real listener and intake (the issue's list, case by case).

Every authentication failure is answered with exactly the same generic
`550 5.7.1 Message refused`, changes nothing (no advisory, no message, no reply,
no audit event but `mail-refused`), sends nothing, and leaves in the audit log
and the logs a reason, never the mail's content. Mail that *is* a member's, but
asks for something maild will not do, is answered 250 with an error reply.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import re
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any

import pytest
from structlog.testing import capture_logs

from maild.adapters.gpg import GpgError
from maild.adapters.smtp_in import Received
from maild.domain.models import AdvisoryState, Event, MessageKind, MessageState
from maild.service import intake as intake_service
from tests.keyfactory import raw_gpg, temp_keyring
from tests.mailfactory import (
    CRLF,
    envelope_headers,
    member_mail,
    mixed,
    payload,
    pgp_mime,
    plain_mail,
    rfc822_part,
    signed_mime,
    signed_then_encrypted,
    text_part,
)
from tests.test_intake import Intake, advisory_text, make_intake
from tests.world import World

REFUSED = (550, "5.7.1 Message refused")  # the one answer to every refusal
SECRETS = ("SECRET-WORDS-42", "frobnicator")  # the advisory's body and title words


# ------------------------------------------------------------------ the harness


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Received]:
    """Every message the listener hands to the intake, in order."""
    seen: list[Received] = []
    original = intake_service.Intake.receive

    async def counting(self: intake_service.Intake, message: Received) -> str:
        seen.append(message)
        return await original(self, message)

    monkeypatch.setattr(intake_service.Intake, "receive", counting)
    return seen


@pytest.fixture
def h(world: World, calls: list[Received]) -> Iterator[Intake]:
    yield from make_intake(world)


def snapshot(h: Intake) -> tuple[object, ...]:
    """Everything mail could change: advisories, every message row (replies that
    concern no advisory too), and every audit event but refusals."""
    store = h.setup.store
    events = [e for e in store.events() if e.kind != "mail-refused"]
    return (store.list_advisories(), store.find_messages(), events)


def refused(h: Intake, mail: bytes) -> tuple[list[Event], list[MutableMapping[str, Any]]]:
    """Send `mail`; assert the generic 550, that nothing changed and nothing was sent
    (the dispatcher ticks before and after), and that neither the new audit events nor
    the logs hold the advisory's words. Returns the new events and the log entries."""
    h.tick()
    before, sent = snapshot(h), len(h.sink.sink.received)
    seen = len(h.setup.store.events())
    with capture_logs() as logs:
        reply = h.send(mail)
    assert reply == REFUSED
    h.tick()
    assert snapshot(h) == before
    assert len(h.sink.sink.received) == sent
    new = h.setup.store.events()[seen:]
    assert [e.kind for e in new] == ["mail-refused"] * len(new)
    shown = repr([(e.actor, e.advisory_id, dict(e.data)) for e in new]) + repr(logs)
    for word in SECRETS:
        assert word not in shown
    assert any(entry["event"] == "refused" and entry.get("reason") for entry in logs)
    return new, logs


def audited(h: Intake, mail: bytes, reason: str, signer: str | None = None) -> None:
    """Refused as `refused` checks, with one `mail-refused` audit event whose data holds
    a reason containing `reason`, the signer, the size and nothing else."""
    (event,) = refused(h, mail)[0]
    assert set(event.data) == {"reason", "signer", "size"}
    assert reason in str(event.data["reason"])
    assert event.data["signer"] == (None if signer is None else h.who.fpr(signer))


def junk(h: Intake, mail: bytes, reason: str) -> None:
    """Refused as `refused` checks; not audited (it is not mail maild could act on),
    only logged with a reason."""
    events, logs = refused(h, mail)
    assert events == []
    (entry,) = [e for e in logs if e["event"] == "refused"]
    assert reason in entry["reason"]


def accepted(h: Intake, mail: bytes) -> None:
    assert h.send(mail)[0] == 250


def advisory(h: Intake, **fields: str) -> str:
    return advisory_text(h.world, **fields)


def submitted(h: Intake) -> str:
    """Submit an advisory as the member; its id."""
    accepted(h, member_mail(h.who, advisory(h)))
    (record,) = h.setup.store.list_advisories()
    return record.id


def state_of(h: Intake, advisory_id: str) -> AdvisoryState:
    record = h.setup.store.get_advisory(advisory_id)
    assert record is not None
    return record.state


def reply_texts(h: Intake) -> list[str]:
    h.tick()
    return [h.read_reply(r) for r in h.replies()]


def armored(mail: bytes) -> bytes:
    found = re.search(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----\r?\n", mail, re.S)
    assert found is not None
    return found.group(0).replace(CRLF, b"\n")


# ------------------------------------------------------------ who signed it


def test_unsigned_encrypted_mail_is_refused(h: Intake) -> None:
    """An advisory encrypted to maild but not signed is refused with the generic
    550: no advisory, no reply; the audit log says why."""
    mail = pgp_mime(h.who.encrypt(payload(advisory(h))))
    audited(h, mail, "no valid signature")


@pytest.mark.parametrize(
    ("signer", "reason"),
    [
        ("good", "no notice token signed by its pinned key"),  # an org's key maild knows
        ("soon", "no valid signature"),  # a key maild does not have at all
    ],
)
def test_a_non_members_signature_is_refused(h: Intake, signer: str, reason: str) -> None:
    """An advisory signed and encrypted by a key that is not a WG member's is refused
    with the same 550, whether or not maild knows the key."""
    mail = member_mail(h.who, advisory(h), sign_as=signer)
    audited(h, mail, reason, signer if signer == "good" else None)


def test_a_members_expired_key_is_refused(world: World) -> None:
    """A member whose key has expired cannot submit: a signature it made while the
    key was valid is refused for the key's expiry (not for the signature's age)."""
    world.members = ("member", "expired")
    world.add_key("expired")
    for h in make_intake(world):
        made = datetime(2020, 1, 1, 12, tzinfo=UTC)  # the key was valid then (1 day)
        mail = signed_then_encrypted(h.who, payload(advisory(h)), "expired", created=made)
        audited(h, mail, "no valid signature")


def test_a_members_revoked_key_is_refused(world: World) -> None:
    """A signature a member made before revoking the key is refused once maild has
    the revocation, though the key is still listed as a member's."""
    with temp_keyring() as ring:
        fpr = ring.generate("Late <late@wg.example>")
        part = payload(advisory_text(world))
        source = ring.home / "part"
        source.write_bytes(part)
        signature = raw_gpg(
            ring, "--armor", "--detach-sign", "--local-user", fpr + "!", "-o", "-", str(source)
        )
        ring.revoke(fpr)  # after signing: the signature was good when it was made
        world.keys = replace(
            world.keys,
            armored={**world.keys.armored, "late": ring.export_public(fpr)},
            fpr={**world.keys.fpr, "late": fpr},
        )
    world.members = ("member", "late")
    world.add_key("late")
    for h in make_intake(world):
        assert h.setup.keyring.health(fpr, h.clock.now).revoked
        mail = pgp_mime(h.who.encrypt(signed_mime(part, signature, [b"MIME-Version: 1.0"])))
        audited(h, mail, "no valid signature")


def test_a_members_from_header_with_an_outsiders_signature_is_refused(h: Intake) -> None:
    """From: the member (outside and in the protected headers) means nothing: the
    signature is an organisation's, so the advisory is refused."""
    inner = b"From: Member <m@wg.example>" + CRLF + payload(advisory(h))
    mail = pgp_mime(h.who.encrypt(inner, sign_as="good"), sender="Member <m@wg.example>")
    audited(h, mail, "no notice token signed by its pinned key", "good")


# --------------------------------------------------- what the signature covers


def test_a_valid_member_mail_beside_an_unsigned_part_is_refused(h: Intake) -> None:
    """A multipart/mixed holding a member's valid encrypted command beside an unsigned
    text/plain is not PGP/MIME: refused, nothing done; the very same member mail on
    its own is then accepted (its signature was not used up)."""
    record_id = submitted(h)
    valid = member_mail(h.who, f"status {record_id}")
    wrapped = mixed([valid, text_part(f"cancel {record_id}\n")], head=envelope_headers())
    junk(h, wrapped, "neither a DSN")
    accepted(h, valid)
    assert state_of(h, record_id) is AdvisoryState.SCHEDULED


@pytest.mark.parametrize("outer_signer", ["good", None])
def test_a_forwarded_member_mail_inside_an_outsiders_mail_is_refused(
    h: Intake, outer_signer: str | None
) -> None:
    """A member's valid signed submission forwarded as a message/rfc822 attachment in
    an outsider's (or an unsigned) encrypted mail does not count as the member's:
    refused; the member's mail itself is then still accepted."""
    valid = member_mail(h.who, advisory(h))
    inner = mixed([text_part("Forwarding this.\n"), rfc822_part(valid)])
    mail = pgp_mime(h.who.encrypt(inner, sign_as=outer_signer))
    if outer_signer is None:
        audited(h, mail, "no valid signature")
    else:
        audited(h, mail, "no notice token", outer_signer)
    accepted(h, valid)
    assert len(h.setup.store.list_advisories()) == 1


def test_a_forwarded_message_inside_a_members_own_mail_gets_an_error_reply(h: Intake) -> None:
    """A member's signed payload holding an advisory *and* a forwarded message
    (message/rfc822) is authenticated, so it is answered 250 with an error reply,
    and nothing is submitted."""
    forwarded = member_mail(h.who, advisory(h))
    inner = mixed([text_part(advisory(h)), rfc822_part(forwarded)])
    accepted(h, pgp_mime(h.who.encrypt(inner, sign_as="member")))
    assert h.setup.store.list_advisories() == []
    (text,) = reply_texts(h)
    assert "forwarded messages are not accepted" in text


def test_an_unsigned_subject_on_the_signed_wrapper_is_not_read(h: Intake) -> None:
    """In the signed-then-encrypted form, only the signed part counts: a Subject added
    to the multipart/signed wrapper (outside the signature) is not a command."""
    record_id = submitted(h)
    part = payload(f"status {record_id}")
    signature = h.who.detach_sign(part, "member")
    head = [b"MIME-Version: 1.0", b"Subject: cancel " + record_id.encode()]
    accepted(h, pgp_mime(h.who.encrypt(signed_mime(part, signature, head))))
    assert state_of(h, record_id) is AdvisoryState.SCHEDULED
    assert not [e for e in h.setup.store.events(record_id) if e.kind == "cancelled"]


# ------------------------------------------------------------ how it is sealed


def test_a_members_signed_but_unencrypted_advisory_is_refused(h: Intake) -> None:
    """A member's valid multipart/signed advisory, not encrypted, is not acted on."""
    part = payload(advisory(h))
    mail = signed_mime(part, h.who.detach_sign(part, "member"))
    audited(h, mail, "a member's mail must be encrypted", "member")


def test_a_members_clearsigned_advisory_is_refused(h: Intake) -> None:
    """A member's valid clearsigned advisory, not encrypted, is not acted on."""
    mail = plain_mail(h.who.clearsign(advisory(h).encode(), "member"))
    audited(h, mail, "a member's mail must be encrypted", "member")


def test_mail_encrypted_to_another_key_is_refused(h: Intake) -> None:
    """A member's advisory encrypted to an org's key instead of maild's is refused."""
    mail = pgp_mime(h.who.encrypt(payload(advisory(h)), to=h.who.fpr("good"), sign_as="member"))
    audited(h, mail, "cannot decrypt")


def test_ciphertext_without_integrity_protection_is_refused(h: Intake) -> None:
    """A member-signed advisory in a Symmetrically Encrypted Data packet (tag 9, no
    MDC: malleable ciphertext) is refused, though gpg would show a good signature
    over it; Keyring.decrypt_signed raises GpgError for it."""
    legacy = h.who.encrypt(
        payload(advisory(h)), sign_as="member", extra=["--rfc2440", "--cipher-algo", "CAST5"]
    )
    packets = h.who.gpg(["--list-only", "--list-packets"], legacy).decode()
    assert " tag=9 " in packets and " tag=18 " not in packets
    with pytest.raises(GpgError):
        h.setup.keyring.decrypt_signed(legacy)
    audited(h, pgp_mime(legacy), "cannot decrypt")


@pytest.mark.parametrize("signed_first", [False, True])
def test_a_members_signed_message_beside_unsigned_ciphertext_is_refused(
    h: Intake, signed_first: bool
) -> None:
    """One OpenPGP packet stream holding an outsider's unsigned ciphertext to maild
    and, before or after it, a member's valid signed (not encrypted) message, as a
    member may have sent to a public list: the member's signature does not vouch for
    the ciphertext's plaintext, so the mail is refused."""
    record_id = submitted(h)
    unsigned = h.who.gpg(["--dearmor"], h.who.encrypt(payload(f"cancel {record_id}")))
    signed = h.who.gpg(
        ["--dearmor"],
        h.who.gpg(
            ["--sign", "--armor", "--local-user", h.who.fpr("member") + "!"], b"Hello, list.\n"
        ),
    )
    stream = signed + unsigned if signed_first else unsigned + signed
    audited(h, pgp_mime(armor(stream)), "cannot decrypt")
    assert state_of(h, record_id) is AdvisoryState.SCHEDULED


def test_tampered_ciphertext_is_refused(h: Intake) -> None:
    """A member's signed and encrypted advisory with one ciphertext byte changed fails
    its integrity check and is refused."""
    good = h.who.encrypt(payload(advisory(h)), sign_as="member")
    binary = bytearray(h.who.gpg(["--dearmor"], good))
    binary[len(binary) // 2] ^= 0x01
    audited(h, pgp_mime(armor(bytes(binary))), "cannot decrypt")


def armor(binary: bytes) -> bytes:
    """ASCII armor (RFC 4880 section 6) around an OpenPGP message."""
    crc = 0xB704CE
    for byte in binary:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    body = base64.encodebytes(binary)
    check = b"=" + base64.b64encode((crc & 0xFFFFFF).to_bytes(3, "big")) + b"\n"
    return b"-----BEGIN PGP MESSAGE-----\n\n" + body + check + b"-----END PGP MESSAGE-----\n"


def test_a_compression_bomb_is_refused_without_expanding_it(h: Intake) -> None:
    """An unsigned encrypted mail of about 140 KB that decompresses to 80 MiB is
    refused as undecryptable: gpg stops at the plaintext limit (64 MiB) instead of
    handing maild the whole expansion (a 10 MB mail could expand to terabytes)."""
    ciphertext = h.who.encrypt(
        b"\0" * (80 * 1024 * 1024), extra=["--compress-algo", "zlib", "--compress-level", "9"]
    )
    assert len(ciphertext) < 1024 * 1024
    with pytest.raises(GpgError):
        h.setup.keyring.decrypt_signed(ciphertext)
    audited(h, pgp_mime(ciphertext), "cannot decrypt")


def test_status_text_in_the_literal_filename_does_not_sign_the_mail(h: Intake) -> None:
    """An unsigned message whose literal-data file name carries gpg status lines
    claiming a good signature by the member is refused: gpg's status output is read
    from its own pipe, where the name arrives escaped."""
    fpr, now = h.who.fpr("member"), int(h.clock.now.timestamp())
    day = h.clock.now.date().isoformat()
    fake = (
        "x\n[GNUPG:] NEWSIG\n"
        f"[GNUPG:] SIG_ID fakeSignatureId0123456789 {day} {now}\n"
        f"[GNUPG:] GOODSIG {fpr[-16:]} Member <m@wg.example>\n"
        f"[GNUPG:] VALIDSIG {fpr} {day} {now} 0 4 0 22 8 00 {fpr}\n"
    )
    ciphertext = h.who.encrypt(payload(advisory(h)), extra=["--set-filename", fake])
    status = raw_gpg(h.setup.keyring, "--status-fd", "1", "--decrypt", write(h, ciphertext))
    assert b"PLAINTEXT 62 " in status and b"%0A[GNUPG:]%20GOODSIG" in status
    audited(h, pgp_mime(ciphertext), "no valid signature")


def write(h: Intake, data: bytes) -> str:
    path = h.world.root / "message.asc"
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------------- when


def test_the_same_signature_in_a_new_outer_message_is_a_replay(h: Intake) -> None:
    """The ciphertext of an accepted submission, re-sent in a new outer message (new
    From, Subject and Message-ID), is refused as a replay and changes nothing."""
    mail = member_mail(h.who, advisory(h))
    accepted(h, mail)
    again = pgp_mime(armored(mail), subject="Re: fresh", sender="someone@else.example")
    assert again != mail
    audited(h, again, "replay: this signature was seen before", "member")


def test_the_same_detached_signature_re_encrypted_is_a_replay(h: Intake) -> None:
    """A member's signed-then-encrypted command, re-encrypted (new ciphertext) and
    re-wrapped with other headers on the multipart/signed, is still a replay."""
    part = payload("list")
    signature = h.who.detach_sign(part, "member")
    accepted(h, pgp_mime(h.who.encrypt(signed_mime(part, signature, [b"MIME-Version: 1.0"]))))
    head = [b"MIME-Version: 1.0", b"Subject: help"]
    again = pgp_mime(h.who.encrypt(signed_mime(part, signature, head)), subject="again")
    audited(h, again, "replay: this signature was seen before", "member")


def test_a_future_dated_signature_is_refused(h: Intake) -> None:
    """A submission whose signature is a day ahead of maild's clock is refused."""
    mail = member_mail(h.who, advisory(h))
    h.clock.now -= timedelta(days=1)  # maild reads it a day before it was signed
    audited(h, mail, "the signature is dated in the future", "member")


def test_a_signature_a_few_minutes_ahead_is_accepted(h: Intake) -> None:
    """Clocks differ a little: a signature 3 minutes ahead of maild's clock is taken
    (the bound is FUTURE_SKEW, 5 minutes)."""
    mail = member_mail(h.who, advisory(h))
    h.clock.now -= timedelta(minutes=3)
    accepted(h, mail)
    assert len(h.setup.store.list_advisories()) == 1


# ---------------------------------------------------------------------- SMTP


def converse(h: Intake, steps: Sequence[bytes]) -> list[str]:
    """Raw SMTP: the banner, then one reply per step (multi-line replies joined)."""

    async def go() -> list[str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            replies = [await one_reply(reader)]
            for step in steps:
                writer.write(step)
                await writer.drain()
                replies.append(await one_reply(reader))
            return replies
        finally:
            writer.close()

    return h.loop.run_until_complete(asyncio.wait_for(go(), 30))


async def one_reply(reader: asyncio.StreamReader) -> str:
    lines = []
    while True:
        line = (await reader.readline()).decode()
        assert line, "connection closed"
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return "\n".join(lines)


def dot_stuffed(data: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", data)


HELLO = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<m@wg.example>\r\n"
RCPT = b"RCPT TO:<embargo@maild.example>\r\n"


@pytest.fixture
def small(world: World, calls: list[Received]) -> Iterator[Intake]:
    yield from make_intake(world, "max_size = 4096")


def test_rcpt_to_a_foreign_domain_is_relaying_denied(small: Intake, calls: list[Received]) -> None:
    """maild is never a relay: RCPT to any other address gets 550 5.7.1 Relaying
    denied, and DATA without a recipient reaches no intake."""
    replies = converse(
        small,
        [
            HELLO,
            MAIL,
            b"RCPT TO:<victim@elsewhere.example>\r\n",
            b"RCPT TO:<embargo@x.example>\r\n",
        ],
    )
    assert replies[3:] == ["550 5.7.1 Relaying denied"] * 2
    assert calls == [] and snapshot(small) == ([], [], [])


def test_a_size_over_the_limit_is_refused_at_mail(small: Intake, calls: list[Received]) -> None:
    """MAIL FROM with SIZE= over max_size is refused with 552; no message is taken."""
    replies = converse(small, [HELLO, b"MAIL FROM:<m@wg.example> SIZE=5000\r\n"])
    assert replies[2].startswith("552 ")
    assert calls == []


def test_a_line_over_the_smtp_limit_never_reaches_the_intake(
    h: Intake, calls: list[Received]
) -> None:
    """One 200 KB line in DATA (SMTP allows 1000 octets) is refused by the listener
    (500) and the intake is never called; the session goes on."""
    mail = top(b"X-Big: " + b"a" * 200_000)
    replies = converse(h, [HELLO, MAIL, RCPT, b"DATA\r\n", mail + b".\r\n", b"NOOP\r\n"])
    assert replies[5].startswith("500 ") and replies[6].startswith("250 ")
    assert calls == []


def test_data_growing_past_the_limit_is_refused(small: Intake, calls: list[Received]) -> None:
    """DATA that grows past max_size (SIZE announced small, or not at all) is refused
    with 552 and never reaches the intake; the session goes on."""
    big = plain_mail(b"x" * 80 + b"\n") * 60  # about 6 KB
    for mail in (b"MAIL FROM:<m@wg.example> SIZE=100\r\n", MAIL):
        replies = converse(small, [HELLO, mail, RCPT, b"DATA\r\n", dot_stuffed(big) + b".\r\n"])
        assert replies[4].startswith("354") and replies[5].startswith("552 ")
    assert calls == [] and snapshot(small) == ([], [], [])


@pytest.mark.parametrize("ending", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r"])
@pytest.mark.parametrize("first_valid", [False, True])
def test_a_bare_lf_end_of_data_cannot_smuggle_a_second_message(
    h: Intake, calls: list[Received], ending: bytes, first_valid: bool
) -> None:
    """A bare-LF (or bare-CR) end of data followed by a second transaction whose
    message is a member's valid `cancel` is one message: exactly one reaches the
    intake, the cancel never runs, and the next command gets its own reply."""
    record_id = submitted(h)
    taken = len(calls)
    first = member_mail(h.who, "list") if first_valid else plain_mail(b"Hello.\n")
    second = member_mail(h.who, f"cancel {record_id}")
    smuggled = first.rstrip(b"\r\n") + ending + MAIL + RCPT + b"DATA\r\n" + second + b".\r\n"
    replies = converse(
        h, [HELLO, MAIL, RCPT, b"DATA\r\n", dot_stuffed(smuggled) + b".\r\n", b"QUIT\r\n"]
    )
    # A valid first message may be taken (the rest is its epilogue) or not (the rest
    # broke its last delimiter); junk first is refused. Either way: one reply.
    answers = ["550 5.7.1 Message refused", "250 2.0.0 Ok: accepted"][: 1 + first_valid]
    assert len(replies) == 7 and replies[5] in answers and replies[6].startswith("221 ")
    assert len(calls) == taken + 1
    assert state_of(h, record_id) is AdvisoryState.SCHEDULED
    assert not [e for e in h.setup.store.events(record_id) if e.kind == "cancelled"]


# ----------------------------------------------------------------- structure


def nested(depth: int) -> bytes:
    """`depth` multiparts, each holding the next, around one text/plain part."""
    entity = b"Content-Type: text/plain\r\n\r\ncancel WG-1\r\n"
    for level in range(depth):
        bnd = b"n%d" % level
        entity = (
            (b'Content-Type: multipart/mixed; boundary="' + bnd + b'"\r\n\r\n--' + bnd + b"\r\n")
            + entity
            + b"\r\n--"
            + bnd
            + b"--\r\n"
        )
    return entity


def top(*fields: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    return CRLF.join([*envelope_headers(), *fields]) + CRLF + CRLF + body


def folded(name: bytes, value: bytes) -> bytes:
    """One header field of any length, folded into lines SMTP can carry."""
    chunks = [value[i : i + 900] for i in range(0, len(value), 900)]
    return name + b":" + b"\r\n ".join([b"", *chunks])


@pytest.mark.parametrize(
    ("mail", "reason"),
    [
        (CRLF.join(envelope_headers()) + CRLF + nested(1000), "neither a DSN"),
        (top(folded(b"X-Big", b"a" * 200_000)), "header section is over"),
        (top(folded(b"Content-Type", b"(" * 100_000)), "header section is over"),
        (top(folded(b"Content-Type", b"multipart/encrypted" + b"(" * 60_000)), "neither a DSN"),
        (top(folded(b"Content-Type", b"text/plain; charset=" + b'"' * 60_000)), "neither a DSN"),
        (top(b"Subject: \xff\xfe\xc3\x28", body=b"\xff\xfe\xfd caf\xe9\r\n"), "neither a DSN"),
        (top(b"Content-Type: text/plain; charset=utf-8", body=b"\xc3\x28\r\n"), "neither a DSN"),
        (b"", "neither a DSN"),
        (CRLF.join(envelope_headers()) + CRLF, "neither a DSN"),
    ],
    ids=[
        "1000-nested-multiparts",
        "200KB-header",
        "100000-parens",
        "60000-parens-within-the-limit",
        "60000-quotes",
        "non-utf8-header-and-body",
        "bad-utf8-in-utf8-text",
        "empty",
        "headers-only",
    ],
)
def test_hostile_structure_is_refused_promptly(h: Intake, mail: bytes, reason: str) -> None:
    """Deep nesting, huge headers, pathological comments or quotes, broken UTF-8 and
    empty mail are refused with the generic 550 (not a temporary failure), nothing
    changed. (No timing assertion: a super-linear parser would make this test hang.)"""
    junk(h, mail, reason)


def test_deep_nesting_inside_an_outsiders_mail_is_refused(h: Intake) -> None:
    """1,000 nested multiparts inside an org's signed, encrypted mail are refused
    (the walk stops at the depth limit; no token is read)."""
    inner = b"MIME-Version: 1.0\r\n" + nested(1000)
    audited(h, pgp_mime(h.who.encrypt(inner, sign_as="good")), "no notice token", "good")


@pytest.mark.parametrize(
    ("inner", "problem"),
    [
        (b"MIME-Version: 1.0\r\n" + nested(1000), "nest more than"),
        (text_part(b"cancel WG-1 \xff\xfe\r\n"), "body is not valid utf-8"),
    ],
    ids=["1000-nested-multiparts", "non-utf8-body"],
)
def test_hostile_structure_from_a_member_gets_an_error_reply(
    h: Intake, inner: bytes, problem: str
) -> None:
    """The same structures in a member's authenticated mail are answered 250 with an
    error reply saying what was wrong; nothing is done."""
    accepted(h, pgp_mime(h.who.encrypt(inner, sign_as="member")))
    assert h.setup.store.list_advisories() == []
    (text,) = reply_texts(h)
    assert problem in text


# ---------------------------------------------------------- header injection


def headers_of(data: bytes) -> list[Message]:
    """Every MIME entity of a message, as Python's email package reads it."""
    return list(email.message_from_bytes(data, policy=email.policy.compat32).walk())


def decrypted(h: Intake, data: bytes) -> bytes:
    found = re.search(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", data, re.S)
    assert found is not None
    return h.who.ring.decrypt_verify(found.group(0))[0]


@pytest.mark.parametrize(
    "title",
    [
        pytest.param(r'"Fix\r\nBcc: evil@x.example"', id="crlf"),
        pytest.param(r'"Fix\nBcc: evil@x.example"', id="lf"),
        pytest.param(r'"Fix\rBcc: evil@x.example"', id="cr"),
        pytest.param(r'"Fix Bcc: evil@x.example \u00e9"', id="no-break"),
        pytest.param(r'"Fix\u2028Bcc: evil@x.example"', id="u2028"),
        pytest.param(r'"Fix\u0085Bcc: evil@x.example"', id="nel"),
    ],
)
def test_a_line_break_in_the_title_never_becomes_a_header(h: Intake, title: str) -> None:
    """A member's advisory whose title (TOML escapes) holds a line break and a Bcc
    field is either refused with an error reply naming the title, or accepted; then
    its notices, pre-announcement and reply all go out at the notice time, and none
    of them, outside or inside the encryption, carries an injected header field, and
    nothing goes to evil@."""
    component = title.replace("Fix", "core")
    accepted(h, member_mail(h.who, advisory(h, title=title, component=component)))
    records = h.setup.store.list_advisories()
    if not records:
        (text,) = reply_texts(h)
        assert "title" in text and "control characters" in text
        return
    (record,) = records
    h.tick()
    assert record.plan.notify_at is not None
    h.clock.now = record.plan.notify_at
    h.tick()
    out = h.sink.sink.received
    kinds = {m.kind for m in h.setup.store.find_messages(states=[MessageState.ACCEPTED])}
    assert {MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT, MessageKind.REPLY} <= kinds
    subjects = []
    for message in out:
        assert not any("evil" in rcpt for rcpt in message.rcpt_tos)
        layers = [message.data]
        if b"multipart/encrypted" in message.data:
            layers.append(decrypted(h, message.data))
        for layer in layers:
            for entity in headers_of(layer):
                assert "Bcc" not in entity and "bcc" not in entity
                subjects += entity.get_all("Subject", [])
                for value in entity.values():
                    unfolded = re.sub(r"\r?\n[ \t]", " ", str(value))
                    assert not re.search(r"[\r\n\u2028\u2029\x85]", unfolded)
    assert any("evil@x.example" in str(s) for s in subjects)  # the title was looked at
