"""A member's mailed advisory, encrypted to maild's identity key (and maybe to
others), is stored as the member sent it, cut down to the identity's session
key (the mail form), instead of being sealed again by a second gpg run; whatever
the form, the notices carry the same advisory text and patches. Real listener,
intake, dispatcher, store and gpg keys."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from email.message import EmailMessage

import pytest

from maild.adapters.gpg import GpgError
from maild.domain.mimeparse import DEFAULT_LIMITS, MimeError, parse
from maild.domain.models import AdvisoryRecord, MessageKind
from maild.service.compose import Draft
from maild.service.embargo import Patch
from maild.service.membermail import MAIL_SEAL, Form, sealed_content
from tests.keyfactory import raw_gpg, subkey_fingerprints
from tests.mailfactory import (
    armored,
    dearmored,
    member_mail,
    packets,
    payload,
    pgp_mime,
    signed_then_encrypted,
)
from tests.test_intake import Intake, advisory_text, make_intake
from tests.world import World

PATCHES = [("fix.patch", b"--- a\n+++ b\n+FIXED\r\n\x00\xff"), ("test.patch", b"+assert 1\n")]


@pytest.fixture
def h(world: World) -> Iterator[Intake]:
    yield from make_intake(world)


@pytest.fixture
def seals(h: Intake, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What the intake seals with gpg (Keyring.encrypt to the identity key)."""
    made: list[bytes] = []
    real = h.setup.keyring.encrypt

    def counting(data: bytes, fingerprint: str, now: datetime) -> bytes:
        made.append(data)
        return real(data, fingerprint, now)

    monkeypatch.setattr(h.setup.keyring, "encrypt", counting)
    return made


def accepted(h: Intake, mail: bytes) -> AdvisoryRecord:
    """Send `mail`; it must be accepted as one new advisory, which is returned."""
    before = {r.id for r in h.setup.store.list_advisories()}
    assert h.send(mail)[0] == 250
    (record,) = [r for r in h.setup.store.list_advisories() if r.id not in before]
    return record


def opened(h: Intake, record: AdvisoryRecord) -> Draft:
    return h.dispatcher.composer.open(record)


def cli_draft(h: Intake, text: str) -> Draft:
    """What `maild submit` of the same text and patches stores (its desk, its seal)."""
    now = h.clock()
    patches = [Patch(name, data) for name, data in PATCHES]
    record = h.setup.desk(now).submit(text, "adv.md", patches, now, "cli:test")
    assert not record.sealed.startswith(MAIL_SEAL)
    return opened(h, record)


def notice_contents(h: Intake, record: AdvisoryRecord) -> tuple[str, list[tuple[str, bytes]]]:
    """The text and attachments of the notice prepared for sec@good.example,
    decrypted with that org's key."""
    h.tick()
    (notice,) = [
        m
        for m in h.setup.store.messages(record.id)
        if m.kind is MessageKind.NOTICE and m.address == "sec@good.example"
    ]
    stored = h.setup.store.payload(notice.message_id)
    assert stored is not None
    armored = re.search(
        rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", stored[1], re.S
    )
    assert armored is not None
    plain, signer = h.who.ring.decrypt_verify(armored.group(0))
    assert signer == h.world.identity
    inner = email.message_from_bytes(plain, policy=email.policy.default)
    assert isinstance(inner, EmailMessage)
    texts: list[str] = []
    files: list[tuple[str, bytes]] = []
    for part in inner.walk():
        name = part.get_filename()
        if name:
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            files.append((name, data))
        elif part.get_content_type() == "text/plain":
            texts.append(str(part.get_content()))
    return "\n".join(texts), files


def body_of(text: str) -> str:
    return text.split("+++\n", 2)[2]


def test_an_advisory_for_the_identity_alone_is_stored_as_sent(
    h: Intake, seals: list[bytes]
) -> None:
    """Signed and encrypted in one (RFC 3156 6.2) to the identity key alone: the
    stored seal is the member's ciphertext behind the mail marker, no seal gpg
    run happens, the member's own key cannot read it, it opens to exactly what
    `maild submit` of the same text and patches gives, and the prepared notice
    carries that text and the patches byte for byte."""
    text = advisory_text(h.world)
    record = accepted(h, member_mail(h.who, text, attachments=PATCHES))
    assert record.sealed.startswith(MAIL_SEAL)
    assert seals == []
    assert b"SECRET-WORDS-42" not in record.sealed
    with pytest.raises(GpgError):
        h.who.ring.decrypt(record.sealed[record.sealed.index(b"\n", len(MAIL_SEAL)) + 1 :])
    draft = opened(h, record)
    crlf = text.replace("\n", "\r\n")  # mailfactory sends the body with CRLF line ends
    assert draft == cli_draft(h, crlf)
    assert draft.patches == tuple(Patch(name, data) for name, data in PATCHES)
    notice_text, files = notice_contents(h, record)
    assert body_of(text) in notice_text.replace("\r\n", "\n")
    assert files == PATCHES


def test_the_signed_then_encrypted_form_is_stored_as_sent_too(
    h: Intake, seals: list[bytes]
) -> None:
    """Signed, then encrypted (RFC 3156 6.1) to the identity key alone: stored as
    sent, no seal gpg run, and it opens to what `maild submit` of the same text
    and patches gives (the signed part, never the signature beside it)."""
    text = advisory_text(h.world)
    inner = payload(text, attachments=PATCHES)
    record = accepted(h, signed_then_encrypted(h.who, inner, "member"))
    assert record.sealed.startswith(MAIL_SEAL)
    assert seals == []
    assert opened(h, record) == cli_draft(h, text.replace("\n", "\r\n"))
    assert notice_contents(h, record)[1] == PATCHES


def stored_packets(record: AdvisoryRecord) -> bytes:
    """The member's OpenPGP packets kept in a mail form."""
    assert record.sealed.startswith(MAIL_SEAL)
    return record.sealed[record.sealed.index(b"\n", len(MAIL_SEAL)) + 1 :]


def identity_subkey(h: Intake) -> str:
    (subkey,) = subkey_fingerprints(h.setup.keyring, h.world.identity)
    return subkey[-16:]


def test_mail_also_encrypted_to_the_member_is_stored_as_sent_for_the_identity(
    h: Intake, seals: list[bytes]
) -> None:
    """Encrypted to the identity key and to the member's own key (encrypt-to-self,
    Thunderbird's default), which could open it as sent: stored in the mail form
    with no seal gpg run, as exactly the identity's session key packet and the data
    packet the member sent; the member's key cannot open it, and it opens to exactly
    what `maild submit` of the same text and patches gives."""
    text = advisory_text(h.world)
    inner = payload(text, attachments=PATCHES)
    self_too = ["--recipient", h.who.fpr("member")]
    sent = h.who.encrypt(inner, sign_as="member", extra=self_too)
    assert h.who.ring.decrypt(sent) == inner
    record = accepted(h, pgp_mime(sent))
    assert record.sealed.startswith(MAIL_SEAL)
    assert seals == []
    binary = dearmored(h.who.ring, sent)
    listed = packets(h.who.ring, binary)
    assert len(listed) == 3
    (mine,) = [packet for packet in listed if packet.keyid == identity_subkey(h)]
    kept = stored_packets(record)
    assert kept == binary[mine.start : mine.end] + binary[listed[-1].start :]
    with pytest.raises(GpgError):
        h.who.ring.decrypt(kept)
    assert opened(h, record) == cli_draft(h, text.replace("\n", "\r\n"))


@pytest.mark.parametrize("how", ["identity-twice", "trailing-spaces"])
def test_mail_whose_ciphertext_is_in_doubt_is_sealed_again(
    h: Intake, seals: list[bytes], how: str
) -> None:
    """The identity's session key packet twice (which one gpg opened the mail with
    is not known), or spaces at the ends of the armor's lines (gpg ignores them;
    maild keeps only plainly armored mail): sealed again as a bundle (no marker),
    which the member's key cannot open, and it opens to exactly what `maild submit`
    of the same text and patches gives."""
    text = advisory_text(h.world)
    inner = payload(text, attachments=PATCHES)
    sent = h.who.encrypt(inner, sign_as="member")
    if how == "identity-twice":
        binary = dearmored(h.who.ring, sent)
        first = packets(h.who.ring, binary)[0]
        assert first.keyid == identity_subkey(h)
        mail = armored(h.who.ring, binary[: first.end] + binary)
    else:
        mail = sent.replace(b"\n", b"  \n")
    record = accepted(h, pgp_mime(mail))
    assert not record.sealed.startswith(MAIL_SEAL)
    assert len(seals) == 1
    with pytest.raises(GpgError):
        h.who.ring.decrypt(record.sealed)
    assert opened(h, record) == cli_draft(h, text.replace("\n", "\r\n"))


def test_a_stored_mail_opens_after_the_members_key_is_gone(h: Intake) -> None:
    """A mailed advisory stored as sent still opens, and its notices are still
    prepared, after the member's key was deleted from maild's keyring (its
    signature inside can no longer be checked, and need not be)."""
    record = accepted(h, member_mail(h.who, advisory_text(h.world), attachments=PATCHES))
    before = opened(h, record)
    raw_gpg(h.setup.keyring, "--delete-keys", h.who.fpr("member"))
    h.setup.keyring.refresh()
    assert not h.setup.keyring.health(h.who.fpr("member"), h.clock()).present
    assert opened(h, record) == before
    assert notice_contents(h, record)[1] == PATCHES


def test_a_damaged_mail_seal_is_a_gpg_error_not_a_crash(h: Intake) -> None:
    """A stored mail form whose form line maild does not know is refused with a
    GpgError naming the advisory (the dispatcher logs it and goes on)."""
    record = accepted(h, member_mail(h.who, advisory_text(h.world)))
    bad = replace(record, sealed=record.sealed.replace(b"\nwhole\n", b"\nsomething\n", 1))
    assert bad.sealed != record.sealed
    with pytest.raises(GpgError, match=record.id):
        opened(h, bad)


def test_unsealing_is_not_bound_by_the_intakes_parse_limits() -> None:
    """A stored mail is read back with limits its own size sets, not the intake's:
    a payload whose header section is over the default limits (which an intake
    configured with larger ones would have taken) still reads back whole."""
    fields = "".join(f"X-Note-{n}: {'n' * 200}\r\n" for n in range(600))
    plaintext = (fields + "Content-Type: text/plain\r\n\r\n+++\r\nbody\r\n").encode()
    with pytest.raises(MimeError):
        parse(plaintext, DEFAULT_LIMITS)
    read = sealed_content(plaintext, Form.WHOLE)
    assert read.body == "+++\r\nbody\r\n" and read.patches == ()
