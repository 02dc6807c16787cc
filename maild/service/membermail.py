"""What maild reads of a WG member's decrypted mail, and the sealed form that
keeps a mailed advisory as the member sent it.

The intake reads a member's mail with `read_payload` and `payload_content`; a mailed
advisory stored in the mail form is read back with `sealed_content`, which
calls those same two functions, so the advisory text and patches the notices
carry are exactly the ones the intake checked and accepted.

The mail form (`MAIL_SEAL`) is the member's own ciphertext without the session
keys of any other key (the member's own, with encrypt-to-self), so that only
maild's identity key can open it (see `Keyring.only_for`): it spares the second
gpg run that sealing the bundle (maild.service.embargo.bundle) costs.
Sealed bundles are binary OpenPGP, whose first byte has its high bit set, so
they never start with the marker (an ASCII 'm').
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from maild.domain import inmail
from maild.domain.inmail import Kind
from maild.domain.mimeparse import DEFAULT_LIMITS, Entity, Limits, MimeError, parse, walk
from maild.service.embargo import Patch

MAIL_SEAL = b"maild-sealed-mail/1\n"


class Form(Enum):
    """Where the member's signature is, which says what part of the mail maild reads."""

    WHOLE = "whole"  # signed and encrypted in one (RFC 3156 6.2): the whole plaintext
    SIGNED_PART = "signed-part"  # signed, then encrypted (6.1): the first signed part


class SignedPartError(MimeError):
    """The payload is a multipart/signed that cannot be read as one."""


@dataclass(frozen=True)
class Payload:
    """A member's decrypted mail, as maild reads it."""

    form: Form
    entity: Entity  # what the member's signature covers: all that maild reads
    # For Form.SIGNED_PART: the signed bytes and the armored detached signature.
    detached: tuple[bytes, bytes] | None = None


@dataclass(frozen=True)
class Content:
    """What a member's signed payload holds: the (protected) Subject, the
    text body, and the attachments as patches."""

    subject: str | None
    body: str
    patches: tuple[Patch, ...]


def read_payload(plaintext: bytes, limits: Limits, *, signed_whole: bool) -> Payload:
    """The part of a decrypted mail that maild reads. `signed_whole`: gpg found
    a signature over the whole plaintext; if it did not, a multipart/signed
    plaintext is the signed-then-encrypted form, and its first part is read
    (once its detached signature is verified). MimeError when malformed
    (SignedPartError when the multipart/signed is)."""
    outer = parse(plaintext, limits)
    if signed_whole or inmail.classify(outer) is not Kind.SIGNED:
        return Payload(Form.WHOLE, outer)
    try:
        data, signature, inner = inmail.signed_parts(outer)
    except MimeError as exc:
        raise SignedPartError(str(exc)) from None
    return Payload(Form.SIGNED_PART, inner, (data, signature))


def payload_content(payload: Entity) -> Content:
    """The body and attachments of a member's payload. Anything that would
    put unsigned or foreign content in reach (a forwarded message, a nested
    signed or encrypted part) is refused."""
    body: str | None = None
    patches: list[Patch] = []
    for _, part in walk(payload):
        kind = part.content_type
        if kind in ("multipart/signed", "multipart/encrypted") and part is not payload:
            raise MimeError("a signed or encrypted part inside the message is not accepted")
        if kind.startswith("multipart/"):
            continue
        if kind.startswith("message/"):
            raise MimeError("forwarded messages are not accepted; send the content itself")
        name = part.disposition_filename()
        if name is None and kind == "text/plain":
            if part.param("hp-legacy-display") is not None:
                continue  # RFC 9788's copy of the headers for old clients
            if body is None:
                body = part.text()
                continue
        if name is None:
            raise MimeError(f"a {kind} part without a file name; attach patches as files")
        patches.append(Patch(name, part.decoded()))
    if body is None:
        raise MimeError("no text/plain body")
    return Content(payload.header("Subject"), body, tuple(patches))


def seal_mail(packets: bytes, form: Form) -> bytes:
    """The stored mail form: the marker, the form, the member's binary OpenPGP packets."""
    return MAIL_SEAL + form.value.encode() + b"\n" + packets


def sealed_mail(sealed: bytes) -> tuple[Form, bytes] | None:
    """(form, packets) of a stored mail form; None for a sealed bundle.
    ValueError when it has the marker but no form maild knows."""
    if not sealed.startswith(MAIL_SEAL):
        return None
    line, newline, packets = sealed[len(MAIL_SEAL) :].partition(b"\n")
    if not newline or line not in _FORMS:
        raise ValueError("sealed mail of an unknown form")
    return _FORMS[line], packets


def sealed_content(plaintext: bytes, form: Form) -> Content:
    """What the intake read of this decrypted mail when it accepted it (MimeError
    if it cannot be read so, which only a damaged store can cause)."""
    payload = read_payload(plaintext, unsealing_limits(plaintext), signed_whole=form is Form.WHOLE)
    if payload.form is not form:
        raise MimeError("sealed mail is not of the form it was stored as")
    return payload_content(payload.entity)


def unsealing_limits(plaintext: bytes) -> Limits:
    """Parse limits no header of `plaintext` can exceed. The intake's limits
    bound only its first parse (the parts below are read with DEFAULT_LIMITS,
    here too), so whatever limits the intake had, and however [intake] is set
    now, a mail it accepted reads back."""
    size = max(len(plaintext), DEFAULT_LIMITS.header_bytes, DEFAULT_LIMITS.headers)
    return Limits(
        header_bytes=size, headers=size, depth=DEFAULT_LIMITS.depth, parts=DEFAULT_LIMITS.parts
    )


_FORMS = {form.value.encode(): form for form in Form}
