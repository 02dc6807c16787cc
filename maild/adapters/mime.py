"""PGP/MIME messages (RFC 3156) with header protection (RFC 9788), assembled as bytes.

Nothing here runs gpg: ciphertext and signatures are made by the gpg adapter and passed in.
Nothing here hands a finished message to the `email` package either, which would re-fold,
re-encode and re-wrap it; the message is concatenated bytes, so what was signed or
encrypted is exactly what goes out. Every message made here keeps these rules:

* every line ends in CRLF and no line is longer than 998 octets;
* it is 7-bit: text is quoted-printable, attachments base64, non-ASCII header text RFC 2047
  encoded words and non-ASCII file names RFC 2231 parameters;
* header fields are folded at 78 characters wherever they have whitespace to fold at;
* a header value holding CR, LF, NUL or another control character is refused (ValueError),
  so header injection is impossible whatever text ends up in a header;
* boundaries are random and checked to be absent from everything they enclose.
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import email.utils
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Attachment",
    "encrypted_message",
    "header_safe",
    "protected_part",
    "signed_message",
    "signed_part",
]

CRLF = b"\r\n"
_MAX_LINE = 998  # RFC 5322 section 2.1.1, octets without the CRLF
_FOLD_AT = 78  # RFC 5322 "SHOULD" limit, used wherever a header has whitespace to fold at
_QP_WRAP = 73  # quoted-printable soft-break point; leaves room for '=' and a '=46' fix-up
_WORD_OCTETS = 36  # UTF-8 octets per RFC 2047 word: 48 base64 chars, 60 for the whole word
_PARAM_SEGMENT = 48  # characters of an RFC 2231 parameter value per continuation segment

_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")
_CONTENT_TYPE_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}"
)
_ENCODED_WORD_RE = re.compile(
    r"=\?[A-Za-z0-9_.:-]+(?:\*[A-Za-z0-9-]+)?\?(?:[Bb]\?[A-Za-z0-9+/]*={0,2}|[Qq]\?[!->@-~]*)\?="
)
_TOKEN_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# RFC 2231 attribute-char: what may stay unescaped in an extended parameter value.
_ATTR_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
# C0 controls but TAB, DEL, C1 controls (NEL among them) and the Unicode line/paragraph
# separators: none belongs in a header, and each is a line break to some reader.
_CONTROLS = frozenset(
    [chr(c) for c in range(32) if c != 9]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + ["\u2028", "\u2029"]
)
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender"})

_ENCRYPTED_PREAMBLE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"
_SIGNED_PREAMBLE = b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)"

Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Attachment:
    """A file carried base64-encoded as `Content-Disposition: attachment`."""

    name: str
    data: bytes
    content_type: str = "text/x-diff"

    def __post_init__(self) -> None:
        name = self.name
        if not name or name in (".", "..") or len(name) > 255:
            raise ValueError("attachment name must be a plain file name of 1-255 characters")
        if any(ch in _CONTROLS or ch in "/\\" for ch in name):
            raise ValueError("attachment name must not hold a path separator or control character")
        if not isinstance(self.data, bytes | bytearray):
            raise TypeError("attachment data must be bytes")
        if _CONTENT_TYPE_RE.fullmatch(self.content_type) is None:
            raise ValueError(f"not a MIME content type: {self.content_type[:80]!r}")


# ------------------------------------------------------------------- header text


def _refuse_controls(value: str) -> None:
    for ch in value:
        if ch in _CONTROLS:
            raise ValueError(
                f"header value holds a control character {ch!r} (CR, LF and NUL are never "
                "allowed in a header)"
            )


def _encoded_words(text: str) -> str:
    """RFC 2047 'B' encoded words for `text`, split between characters, space-separated."""
    words: list[str] = []
    chunk = b""
    for ch in text:
        raw = ch.encode("utf-8")
        if chunk and len(chunk) + len(raw) > _WORD_OCTETS:
            words.append(chunk.decode("utf-8"))
            chunk = b""
        chunk += raw
    if chunk or not words:
        words.append(chunk.decode("utf-8"))
    return " ".join(
        "=?utf-8?b?" + base64.b64encode(word.encode("utf-8")).decode("ascii") + "?="
        for word in words
    )


def _is_encoded_word(word: str) -> bool:
    """True for one well-formed RFC 2047 encoded word; ValueError if it decodes to a control
    character (an encoded CR LF must not reach a reader's display, nor a reply's headers)."""
    if _ENCODED_WORD_RE.fullmatch(word) is None:
        return False
    try:
        decoded = "".join(
            chunk.decode(charset or "ascii") if isinstance(chunk, bytes) else chunk
            for chunk, charset in email.header.decode_header(word)
        )
    except (LookupError, UnicodeDecodeError, ValueError, email.errors.HeaderParseError):
        return False  # not decodable: it is encoded again, as the text it is
    _refuse_controls(decoded)
    return True


def header_safe(value: str) -> str:
    """`value` made fit to be a header field value, or ValueError.

    CR, LF, NUL and every other control character except TAB are refused outright: there is
    no "cleaning" them away. Printable ASCII comes back as it is. Runs of words that are not
    (non-ASCII, text that only looks like an encoded word, a word too long to ever fit a
    line) come back as RFC 2047 encoded words, which the folding of this module keeps
    within 78 characters. Well-formed encoded words are kept, so header_safe(header_safe(x))
    == header_safe(x): a value already made safe can be passed in again unchanged.
    """
    _refuse_controls(value)
    words = value.split(" ")
    needs = [
        not w.isascii() or ("=?" in w and not _is_encoded_word(w)) or len(w) > 900 for w in words
    ]
    out: list[str] = []
    index = 0
    while index < len(words):
        if not needs[index]:
            out.append(words[index])
            index += 1
            continue
        # One run of encoded words, across empty words (doubled spaces) too: the space
        # between two encoded words is not displayed, so it has to be encoded inside them.
        last = probe = index
        while probe + 1 < len(words) and (needs[probe + 1] or words[probe + 1] == ""):
            probe += 1
            if needs[probe]:
                last = probe
        run = " ".join(words[index : last + 1])
        if index > 0 and _is_encoded_word(words[index - 1]):
            run = " " + run
        if last + 1 < len(words) and _is_encoded_word(words[last + 1]):
            run += " "
        out.append(_encoded_words(run))
        index = last + 1
    return " ".join(out)


def _address_value(value: str) -> str:
    """An address-list header value with non-ASCII display names encoded (RFC 2047)."""
    _refuse_controls(value)
    if value.isascii():
        for word in value.split():
            _is_encoded_word(word)  # refuses an encoded display name hiding CR, LF or NUL
        return value
    formatted: list[str] = []
    for name, addr in email.utils.getaddresses([value]):
        if not addr or "@" not in addr or not addr.isascii():
            raise ValueError("address headers need ASCII mail addresses (no SMTPUTF8 here)")
        if name and not name.isascii():
            formatted.append(f"{_encoded_words(name)} <{addr}>")
        else:
            formatted.append(email.utils.formataddr((name, addr)))
    if not formatted:
        raise ValueError("address header holds no address")
    return ", ".join(formatted)


def _fold(name: str, value: str) -> bytes:
    """`Name: value` CRLF, folded at spaces to lines of at most 78 characters where possible."""
    if not value.isascii():
        raise ValueError(f"header {name} is not ASCII after encoding")
    _refuse_controls(value)
    head = f"{name}:"
    lines: list[str] = []
    current = head
    for word in value.split(" "):
        piece = " " + word
        if word and current != head and len(current) + len(piece) > _FOLD_AT:
            lines.append(current)
            current = piece
        else:
            current += piece
    lines.append(current)
    if any(len(line) > _MAX_LINE for line in lines):
        raise ValueError(f"header {name} has a word too long for a mail line")
    return "\r\n".join(lines).encode("ascii") + CRLF


def _check_name(name: str) -> str:
    if _HEADER_NAME_RE.fullmatch(name) is None:
        raise ValueError(f"not a header field name: {name[:40]!r}")
    lowered = name.lower()
    if lowered.startswith("content-") or lowered == "mime-version":
        raise ValueError(f"header {name} is set by the MIME structure, not by the caller")
    return name


def _user_header(name: str, value: str) -> tuple[str, str]:
    """A caller-given header field as (name, encoded value), checked."""
    name = _check_name(name)
    if name.lower() in _ADDRESS_HEADERS:
        return name, _address_value(value)
    return name, header_safe(value)


def _user_headers(headers: Headers) -> list[tuple[str, str]]:
    return [_user_header(name, value) for name, value in headers]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _param(key: str, value: str, *, bare: bool = False) -> list[str]:
    """`key="value"`, or RFC 2231 `key*0*=utf-8''...` segments for non-ASCII or long values."""
    _refuse_controls(value)
    if value.isascii() and len(value) <= _PARAM_SEGMENT:
        if bare and _TOKEN_RE.fullmatch(value):
            return [f"{key}={value}"]
        return [f"{key}={_quote(value)}"]
    escaped = [chr(b) if b in _ATTR_CHARS else f"%{b:02X}" for b in value.encode("utf-8")]
    segments: list[str] = []
    current = "utf-8''"
    for piece in escaped:
        if len(current) + len(piece) > _PARAM_SEGMENT:
            segments.append(current)
            current = ""
        current += piece
    segments.append(current)
    return [f"{key}*{index}*={segment}" for index, segment in enumerate(segments)]


def _with_params(main: str, params: Iterable[str]) -> str:
    return "; ".join([main, *params])


# --------------------------------------------------------------------- bodies


def _qp_line(line: bytes) -> list[str]:
    """One text line as quoted-printable physical lines (soft breaks end in '=')."""
    tokens: list[str] = []
    last = len(line) - 1
    for index, byte in enumerate(line):
        if byte in (0x20, 0x09):
            tokens.append(chr(byte) if index < last else f"={byte:02X}")
        elif 33 <= byte <= 126 and byte != 0x3D:
            tokens.append(chr(byte))
        else:
            tokens.append(f"={byte:02X}")
    physical: list[str] = []
    current = ""
    for token in tokens:
        if len(current) + len(token) > _QP_WRAP:
            physical.append(current + "=")
            current = ""
        current += token
    physical.append(current)
    # A line starting "From " may be mangled to ">From " by mbox tools (breaking signatures);
    # a lone "." is SMTP's end of data to careless tools. Encode the first character.
    return [f"={ord(p[0]):02X}{p[1:]}" if p.startswith(("From ", ".")) else p for p in physical]


def _qp_text(text: str) -> bytes:
    """`text` as a quoted-printable body with CRLF line ends (any newline convention in)."""
    lines = re.split(r"\r\n|\r|\n", text)
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    physical = [p for line in lines for p in _qp_line(line.encode("utf-8"))]
    return "\r\n".join(physical).encode("ascii") + CRLF


def _base64_body(data: bytes) -> bytes:
    return base64.encodebytes(bytes(data)).replace(b"\n", CRLF)


def _crlf_ascii(data: bytes, what: str, armor: bytes) -> bytes:
    """ASCII armor normalised to CRLF line ends, ending in CRLF; ValueError if it is not."""
    if not data.isascii():
        raise ValueError(f"{what} is not ASCII-armored")
    normalised = data.replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    if b"\r" in normalised.replace(CRLF, b""):
        raise ValueError(f"{what} holds a bare CR")
    if not normalised.startswith(armor):
        raise ValueError(f"{what} does not start with {armor.decode()}")
    return normalised if normalised.endswith(CRLF) else normalised + CRLF


# -------------------------------------------------------------------- entities


def _entity(headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    return b"".join(_fold(name, value) for name, value in headers) + CRLF + body


def _boundary(contents: Iterable[bytes]) -> str:
    """A random boundary that none of `contents` holds."""
    enclosed = list(contents)
    while True:
        candidate = "=_" + secrets.token_hex(16)
        marker = candidate.encode("ascii")
        if not any(marker in part for part in enclosed):
            return candidate


def _multipart_body(boundary: str, parts: Sequence[bytes], preamble: bytes = b"") -> bytes:
    """Parts between delimiters. The CRLF in front of a delimiter belongs to the delimiter
    (RFC 2046 section 5.1.1), so each part's bytes come back exactly as given."""
    marker = b"--" + boundary.encode("ascii")
    head = preamble + CRLF if preamble else b""
    return head + b"".join(marker + CRLF + part + CRLF for part in parts) + marker + b"--" + CRLF


def _text_headers(extra: Sequence[str] = ()) -> list[tuple[str, str]]:
    return [
        ("Content-Type", _with_params("text/plain", [*_param("charset", "utf-8"), *extra])),
        ("Content-Transfer-Encoding", "quoted-printable"),
    ]


def _attachment_part(attachment: Attachment) -> bytes:
    return _entity(
        [
            (
                "Content-Type",
                _with_params(attachment.content_type, _param("name", attachment.name)),
            ),
            (
                "Content-Disposition",
                _with_params("attachment", _param("filename", attachment.name)),
            ),
            ("Content-Transfer-Encoding", "base64"),
        ],
        _base64_body(attachment.data),
    )


def _body_and_type(
    text: str, attachments: Sequence[Attachment], extra: Sequence[str]
) -> tuple[list[tuple[str, str]], bytes]:
    """Content headers and body: one text/plain part, or multipart/mixed with attachments."""
    if not attachments:
        return _text_headers(extra), _qp_text(text)
    parts = [_entity(_text_headers(), _qp_text(text))]
    parts += [_attachment_part(attachment) for attachment in attachments]
    boundary = _boundary(parts)
    content_type = _with_params("multipart/mixed", [*_param("boundary", boundary), *extra])
    return [("Content-Type", content_type)], _multipart_body(boundary, parts)


def _checked(message: bytes) -> bytes:
    """Guard for every function's output: 7-bit, CRLF only, lines of at most 998 octets."""
    if not message.isascii():
        raise ValueError("internal error: MIME output is not 7-bit")
    if not message.endswith(CRLF):
        raise ValueError("internal error: MIME output does not end in CRLF")
    lines = message[:-2].split(CRLF)
    if any(b"\r" in line or b"\n" in line or len(line) > _MAX_LINE for line in lines):
        raise ValueError("internal error: MIME output has a bare CR/LF or an overlong line")
    return message


# ------------------------------------------------------------------ public API


def protected_part(
    headers: Headers,
    text: str,
    attachments: Sequence[Attachment] = (),
    *,
    outer_headers: Headers = (),
) -> bytes:
    """The Cryptographic Payload of an encrypted message with RFC 9788 header protection.

    `headers` (Subject, From, To, Date, Message-ID, ...) become header fields of this
    top-level entity, whose Content-Type carries `hp="cipher"`: multipart/mixed of the text
    (text/plain, utf-8, quoted-printable) and the attachments (base64), or a single
    text/plain entity when there are none. Each of `outer_headers` (the fields the outside
    of the message will show, e.g. the generic Subject) is recorded as an `HP-Outer` field,
    so a reader can tell which fields were made confidential.
    """
    protected = _user_headers(headers)
    recorded = [("HP-Outer", f"{name}: {value}") for name, value in _user_headers(outer_headers)]
    content, body = _body_and_type(text, attachments, _param("hp", "cipher"))
    # Content-Type first: the entity's structure, then what it protects.
    fields = [content[0], *protected, *recorded, *content[1:]]
    return _checked(_entity(fields, body))


def encrypted_message(outer_headers: Headers, armored_ciphertext: bytes) -> bytes:
    """A complete RFC 3156 multipart/encrypted message around ASCII-armored ciphertext."""
    outer = _user_headers(outer_headers)
    ciphertext = _crlf_ascii(armored_ciphertext, "ciphertext", b"-----BEGIN PGP MESSAGE-----")
    parts = [
        _entity(
            [
                ("Content-Type", "application/pgp-encrypted"),
                ("Content-Description", "PGP/MIME version identification"),
            ],
            b"Version: 1" + CRLF,
        ),
        _entity(
            [
                (
                    "Content-Type",
                    _with_params("application/octet-stream", _param("name", "encrypted.asc")),
                ),
                ("Content-Description", "OpenPGP encrypted message"),
                (
                    "Content-Disposition",
                    _with_params("inline", _param("filename", "encrypted.asc")),
                ),
            ],
            ciphertext,
        ),
    ]
    boundary = _boundary(parts)
    content_type = _with_params(
        "multipart/encrypted",
        [*_param("protocol", "application/pgp-encrypted"), *_param("boundary", boundary)],
    )
    fields = [*outer, ("MIME-Version", "1.0"), ("Content-Type", content_type)]
    return _checked(_entity(fields, _multipart_body(boundary, parts, _ENCRYPTED_PREAMBLE)))


def signed_part(text: str, attachments: Sequence[Attachment] = ()) -> bytes:
    """The MIME entity to sign, in canonical CRLF form: text/plain (utf-8, quoted-printable)
    alone, or multipart/mixed with the attachments (base64). Sign exactly these bytes."""
    content, body = _body_and_type(text, attachments, ())
    return _checked(_entity(content, body))


def signed_message(outer_headers: Headers, part: bytes, armored_signature: bytes) -> bytes:
    """A complete RFC 3156 multipart/signed message: `part` byte for byte, then the signature.

    `part` must already be a 7-bit MIME entity in CRLF form with no trailing whitespace on
    any line (as `signed_part` makes it): anything a mail system might rewrite would break
    the signature, so it is refused here rather than sent.
    """
    outer = _user_headers(outer_headers)
    if not part.isascii():
        raise ValueError("the signed part is not 7-bit")
    if not (part.startswith(CRLF) or CRLF + CRLF in part):
        raise ValueError("the signed part is not a MIME entity (no header/body separator)")
    lines = part.split(CRLF)
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise ValueError("the signed part has a bare CR or LF (it must be CRLF form)")
        if len(line) > _MAX_LINE:
            raise ValueError("the signed part has a line over 998 octets")
        if line.endswith((b" ", b"\t")):
            raise ValueError("the signed part has trailing whitespace (encode it first)")
    signature = _crlf_ascii(armored_signature, "signature", b"-----BEGIN PGP SIGNATURE-----")
    signature_part = _entity(
        [
            (
                "Content-Type",
                _with_params("application/pgp-signature", _param("name", "signature.asc")),
            ),
            ("Content-Description", "OpenPGP digital signature"),
            (
                "Content-Disposition",
                _with_params("attachment", _param("filename", "signature.asc")),
            ),
        ],
        signature,
    )
    boundary = _boundary([part, signature_part])
    content_type = _with_params(
        "multipart/signed",
        [
            *_param("micalg", "pgp-sha256", bare=True),
            *_param("protocol", "application/pgp-signature"),
            *_param("boundary", boundary),
        ],
    )
    fields = [*outer, ("MIME-Version", "1.0"), ("Content-Type", content_type)]
    body = _multipart_body(boundary, [part, signature_part], _SIGNED_PREAMBLE)
    return _checked(_entity(fields, body))
