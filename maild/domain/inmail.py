"""What incoming mail is (pure): PGP/MIME envelopes, delivery status notifications,
commands from WG members and acknowledgement tokens, read with maild.domain.mimeparse."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from maild.domain.advisory import ADVISORY_ID, FENCE
from maild.domain.mimeparse import Entity, MimeError, canonical, parse, parts

__all__ = [
    "ACK_TOKEN",
    "Command",
    "CommandError",
    "DsnRecipient",
    "DsnReport",
    "Kind",
    "Verb",
    "ack_tokens",
    "classify",
    "find_command",
    "is_advisory",
    "parse_command",
    "parse_dsn",
    "pgp_ciphertext",
    "signed_parts",
]


class Kind(StrEnum):
    DSN = "dsn"  # multipart/report; report-type=delivery-status or global-delivery-status
    ENCRYPTED = "encrypted"  # multipart/encrypted; protocol="application/pgp-encrypted"
    SIGNED = "signed"  # multipart/signed; protocol="application/pgp-signature"
    CLEARSIGNED = "clearsigned"  # text/plain starting with -----BEGIN PGP SIGNED MESSAGE-----
    OTHER = "other"


_REPORT_TYPES = frozenset({"delivery-status", "global-delivery-status"})
_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_RETURNED_TYPES = frozenset(
    {"text/rfc822-headers", "message/rfc822", "message/global", "message/global-headers"}
)
_CLEARSIGN = "-----BEGIN PGP SIGNED MESSAGE-----"
_VERSION_1 = re.compile(rb"^[ \t]*Version:[ \t]*1[ \t]*\r?$", re.MULTILINE)


def classify(entity: Entity) -> Kind:
    """What kind of mail this is, from its content type (and, for text, its first line)."""
    ctype = entity.content_type
    if ctype == "multipart/report":
        report = (entity.param("report-type") or "").strip().lower()
        return Kind.DSN if report in _REPORT_TYPES else Kind.OTHER
    if ctype == "multipart/encrypted":
        protocol = (entity.param("protocol") or "").strip().lower()
        return Kind.ENCRYPTED if protocol == "application/pgp-encrypted" else Kind.OTHER
    if ctype == "multipart/signed":
        protocol = (entity.param("protocol") or "").strip().lower()
        return Kind.SIGNED if protocol == "application/pgp-signature" else Kind.OTHER
    if ctype == "text/plain":
        try:
            text = entity.text()
        except MimeError:
            return Kind.OTHER
        if text.lstrip().startswith(_CLEARSIGN):
            return Kind.CLEARSIGNED
    return Kind.OTHER


def _armored(data: bytes, label: bytes) -> bytes | None:
    """The `-----BEGIN PGP <label>-----` ... `-----END PGP <label>-----` block, whole
    lines, or None. The BEGIN line must start a line."""
    begin = b"-----BEGIN PGP " + label + b"-----"
    end = b"-----END PGP " + label + b"-----"
    at = data.find(begin)
    while at > 0 and data[at - 1] not in b"\r\n":
        at = data.find(begin, at + 1)
    if at < 0:
        return None
    stop = data.find(end, at)
    if stop < 0:
        return None
    line_end = data.find(b"\n", stop)
    return data[at : len(data) if line_end < 0 else line_end + 1]


def pgp_ciphertext(entity: Entity) -> bytes:
    """The ASCII-armored OpenPGP message of a PGP/MIME encrypted mail (RFC 3156 section 4)."""
    if classify(entity) is not Kind.ENCRYPTED:
        raise MimeError('not multipart/encrypted with protocol "application/pgp-encrypted"')
    found = parts(entity)
    if len(found) != 2:
        raise MimeError("multipart/encrypted must have exactly two parts")
    control, payload = found
    if control.content_type != "application/pgp-encrypted":
        raise MimeError("first part of multipart/encrypted must be application/pgp-encrypted")
    if _VERSION_1.search(control.decoded()) is None:
        raise MimeError('application/pgp-encrypted part must say "Version: 1"')
    if payload.content_type != "application/octet-stream":
        raise MimeError("second part of multipart/encrypted must be application/octet-stream")
    armored = _armored(payload.decoded(), b"MESSAGE")
    if armored is None:
        raise MimeError("encrypted part holds no ASCII-armored PGP MESSAGE block")
    return armored


def signed_parts(entity: Entity) -> tuple[bytes, bytes, Entity]:
    """(signed bytes, armored signature, signed part) of a PGP/MIME signed mail.

    The signed bytes are the first part exactly as it came, line ends made CRLF
    (RFC 3156 section 5): what the signer signed.
    """
    if classify(entity) is not Kind.SIGNED:
        raise MimeError('not multipart/signed with protocol "application/pgp-signature"')
    found = parts(entity)
    if len(found) != 2:
        raise MimeError("multipart/signed must have exactly two parts")
    signed, signature = found
    if signature.content_type != "application/pgp-signature":
        raise MimeError("second part of multipart/signed must be application/pgp-signature")
    armored = _armored(signature.decoded(), b"SIGNATURE")
    if armored is None:
        raise MimeError("signature part holds no ASCII-armored PGP SIGNATURE block")
    return canonical(signed.raw), armored, signed


# ---------------------------------------------------------------------------- DSNs

_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_XTEXT = re.compile(rb"\+([0-9A-Fa-f]{2})")
_UNICODE_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_MAX_DIAGNOSTIC = 300


@dataclass(frozen=True)
class DsnRecipient:
    final_recipient: str | None  # address part only: "rfc822; a@b.example" -> "a@b.example"
    original_recipient: str | None
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # e.g. "5.1.1"
    diagnostic: str | None  # Diagnostic-Code text, one line, at most 300 characters


@dataclass(frozen=True)
class DsnReport:
    envid: str | None  # Original-Envelope-Id, xtext-decoded
    message_id: str | None  # Message-ID of the returned message, "<x@y>"
    recipients: tuple[DsnRecipient, ...]


def parse_dsn(entity: Entity) -> DsnReport:
    """A delivery status notification (RFC 3464; RFC 6533 for the global, UTF-8 kind)."""
    if classify(entity) is not Kind.DSN:
        raise MimeError("not a multipart/report of delivery status")
    found = parts(entity)
    index = next((i for i, p in enumerate(found) if p.content_type in _STATUS_TYPES), None)
    if index is None:
        raise MimeError("delivery status notification has no delivery-status part")
    blocks = _blocks(found[index].decoded().decode("utf-8", "replace"))
    per_message = blocks[0] if blocks and not _is_recipient(blocks[0]) else {}
    recipients = tuple(
        DsnRecipient(
            final_recipient=_address(block.get("final-recipient")),
            original_recipient=_address(block.get("original-recipient")),
            action=_first_word(block.get("action")),
            status=_first_word(block.get("status")),
            diagnostic=_diagnostic(block.get("diagnostic-code")),
        )
        for block in blocks
        if _first_word(block.get("action")) in _ACTIONS
    )
    if not recipients:
        raise MimeError("delivery status notification has no recipient with an Action")
    envid = _xtext(per_message.get("original-envelope-id", "").strip())
    returned = next((p for p in found[index + 1 :] if p.content_type in _RETURNED_TYPES), None)
    return DsnReport(
        envid=envid or None,
        message_id=_returned_message_id(returned),
        recipients=recipients,
    )


def _blocks(text: str) -> list[dict[str, str]]:
    """Groups of `Name: value` fields separated by empty lines; names lowercased, folded
    lines joined with a space, the first field of a name kept, other lines ignored."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                current[last] += " " + line.strip()
        else:
            name, colon, value = line.partition(":")
            name = name.strip().lower()
            if colon and name and name not in current:
                current[name] = value.strip()
                last = name
            else:
                last = None
    if current:
        blocks.append(current)
    return blocks


def _is_recipient(block: dict[str, str]) -> bool:
    return "action" in block or "final-recipient" in block


def _first_word(value: str | None) -> str:
    words = (value or "").split(None, 1)
    return words[0].lower() if words else ""


def _xtext(value: str) -> str:
    """xtext (RFC 3461 section 4): `+2B` is `+`."""
    raw = value.encode("utf-8", "replace")
    return _XTEXT.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode("utf-8", "replace")


def _unicode_escapes(value: str) -> str:
    """RFC 6533 `\\x{HEX}` escapes in utf-8 addresses, decoded."""

    def one(match: re.Match[str]) -> str:
        point = int(match.group(1), 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF or point < 0x20:
            return match.group(0)
        return chr(point)

    return _UNICODE_ESCAPE.sub(one, value)


def _address(value: str | None) -> str | None:
    """The address of an `address-type; address` field."""
    if value is None:
        return None
    kind, semicolon, address = value.partition(";")
    if not semicolon:
        address, kind = kind, ""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if kind.strip().lower() == "utf-8":
        address = _unicode_escapes(address)
    return address or None


def _diagnostic(value: str | None) -> str | None:
    """The text of a `diagnostic-type; text` field, one line, at most 300 characters."""
    if value is None:
        return None
    kind, semicolon, text = value.partition(";")
    if not semicolon or " " in kind.strip():
        text = value  # no diagnostic type in front
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:_MAX_DIAGNOSTIC] or None


def _returned_message_id(returned: Entity | None) -> str | None:
    if returned is None:
        return None
    try:
        value = parse(returned.decoded()).header("Message-ID")
    except MimeError:
        return None
    if value is None:
        return None
    start = value.find("<")
    stop = value.find(">", start + 1)
    if start >= 0 and stop > start:
        return value[start : stop + 1]
    return value.strip() or None


# ------------------------------------------------------------------------ commands


class Verb(StrEnum):
    STATUS = "status"
    LIST = "list"
    CANCEL = "cancel"
    RESCHEDULE = "reschedule"
    DISCLOSE_NOW = "disclose-now"
    APPROVE = "approve"
    HELP = "help"


@dataclass(frozen=True)
class Command:
    verb: Verb
    advisory_id: str | None = None
    disclosure: datetime | None = None  # reschedule only, timezone-aware
    reason: str | None = None  # disclose-now only: the rest of the line


class CommandError(ValueError):
    """A known verb with bad or missing arguments; the message says what is expected,
    e.g. "reschedule needs: reschedule ID DISCLOSURE (ISO 8601 with UTC offset, like
    2026-12-08T17:00:00+01:00)"."""


_EXAMPLE = "2026-12-08T17:00:00+01:00"
_USAGE = {
    Verb.STATUS: "status [ID]",
    Verb.LIST: "list (no arguments)",
    Verb.CANCEL: "cancel ID",
    Verb.RESCHEDULE: f"reschedule ID DISCLOSURE (ISO 8601 with UTC offset, like {_EXAMPLE})",
    Verb.DISCLOSE_NOW: "disclose-now ID REASON (the reason is the rest of the line)",
    Verb.APPROVE: "approve ID",
    Verb.HELP: "help (no arguments)",
}
_ID_RULE = (
    "an advisory id is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)


def _refuse(verb: Verb, problem: str) -> CommandError:
    return CommandError(f"{verb.value} needs: {_USAGE[verb]}; {problem}")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def parse_command(line: str) -> Command | None:
    """The command on one line (a Subject or a body line), None when its first word is not
    a verb. Verbs are case-insensitive and must come first: "Re: cancel X" is no command."""
    words = line.split()
    if not words:
        return None
    try:
        verb = Verb(words[0].lower())
    except ValueError:
        return None
    if verb is Verb.DISCLOSE_NOW:
        fields = line.strip().split(None, 2)
        if len(fields) < 3 or not fields[2].strip():
            raise _refuse(verb, "the advisory id and a reason are required")
        return Command(verb, _advisory_id(verb, fields[1]), reason=fields[2].strip())
    args = words[1:]
    wanted = {
        Verb.STATUS: (0, 1),
        Verb.LIST: (0, 0),
        Verb.CANCEL: (1, 1),
        Verb.RESCHEDULE: (2, 2),
        Verb.APPROVE: (1, 1),
        Verb.HELP: (0, 0),
    }[verb]
    if not wanted[0] <= len(args) <= wanted[1]:
        got = f"got {len(args)} argument{'' if len(args) == 1 else 's'}"
        raise _refuse(verb, got)
    if not args:
        return Command(verb)
    advisory_id = _advisory_id(verb, args[0])
    if verb is Verb.RESCHEDULE:
        return Command(verb, advisory_id, disclosure=_disclosure(verb, args[1]))
    return Command(verb, advisory_id)


def _advisory_id(verb: Verb, text: str) -> str:
    if ADVISORY_ID.fullmatch(text) is None:
        raise _refuse(verb, f"{_shown(text)} is not an advisory id ({_ID_RULE})")
    return text


def _disclosure(verb: Verb, text: str) -> datetime:
    """Like the CLI's --disclosure: ISO 8601 and a UTC offset (or Z)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _refuse(verb, f"{_shown(text)} is not an ISO 8601 date and time") from None
    if parsed.tzinfo is None:
        raise _refuse(verb, f"{_shown(text)} has no time zone: add a UTC offset or Z")
    return parsed


def find_command(subject: str | None, body: str) -> Command | None:
    """The command in the Subject, else on the first non-empty line of the body."""
    if subject is not None:
        command = parse_command(subject)
        if command is not None:
            return command
    for line in body.splitlines():
        if line.strip():
            return parse_command(line)
    return None


def is_advisory(body: str) -> bool:
    """True when `body` is an advisory file: its first non-empty line is `+++`."""
    for line in body.removeprefix("\ufeff").splitlines():
        if line.strip():
            return line.strip() == FENCE
    return False


# ------------------------------------------------------------------ acknowledgements

# The line a notice asks its recipients to send back (maild.domain.mailtext.notice).
ACK_TOKEN = re.compile(r"\bACK ([0-9a-f]{32})\b")


def ack_tokens(text: str) -> list[str]:
    """The distinct acknowledgement tokens in `text`, in order; quoted lines count."""
    seen: dict[str, None] = {}
    for match in ACK_TOKEN.finditer(text):
        seen.setdefault(match.group(1), None)
    return list(seen)
