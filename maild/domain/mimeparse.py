"""A small, bounded MIME reader for incoming mail (pure).

Python's `email` package is not used: on hostile input it recurses once per nested
multipart and some of its header parsing is super-linear. Everything here is one pass
over the bytes, or a bounded number of passes:

* the header section of an entity is measured against `Limits.header_bytes` before
  anything else is done with it, and its fields are counted against `Limits.headers`;
* structured header values (Content-Type, Content-Disposition) are read by a
  character scanner that handles quoted strings and nested comments with a counter,
  so `(` repeated 100,000 times costs 100,000 steps;
* `parts` reads one level of a multipart and `walk` descends iteratively, refusing
  nesting deeper than `Limits.depth` and multiparts with more than `Limits.parts`;
* regular expressions have no nested quantifiers.

Anything malformed or over a limit raises MimeError, whose text is a short reason that
never quotes the message (incoming mail may hold embargoed text).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_LIMITS",
    "Entity",
    "Limits",
    "MimeError",
    "canonical",
    "parse",
    "parts",
    "walk",
]


class MimeError(ValueError):
    """Malformed or over a limit; str() is a short reason without message content."""


@dataclass(frozen=True)
class Limits:
    header_bytes: int = 64 * 1024  # per entity header section
    headers: int = 500  # header fields per entity
    depth: int = 8  # multipart nesting
    parts: int = 200  # parts in one multipart


DEFAULT_LIMITS = Limits()

# The end of the header section: the first empty line (CRLF CRLF, or LF LF).
_BLANK_LINE = re.compile(rb"\n\r?\n")
# RFC 5322 field name: printable ASCII but the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+/[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# RFC 2231 continuation: `name*0`, `name*1*`.
_CONTINUATION = re.compile(r"([^*]+)\*([0-9]{1,3})(\*?)")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_MAX_BOUNDARY = 200  # RFC 2046 says 70; some software is generous

_CHARSETS = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "us-ascii": "ascii",
    "ascii": "ascii",
    "iso-8859-1": "latin-1",
    "iso8859-1": "latin-1",
    "iso_8859-1": "latin-1",
    "latin-1": "latin-1",
    "latin1": "latin-1",
    "windows-1252": "cp1252",
    "cp1252": "cp1252",
}


# ------------------------------------------------------------------ structured values


def _uncomment(value: str) -> str:
    """`value` with RFC 5322 comments replaced by a space; quoted strings kept as they are.

    One pass with a nesting counter; an unclosed comment runs to the end of the value.
    """
    if "(" not in value:
        return value
    out: list[str] = []
    depth = 0
    quoted = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(value[i + 1])
                i += 1
            elif c == '"':
                quoted = False
        elif depth:
            if c == "\\":
                i += 1  # a quoted-pair inside a comment
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if not depth:
                    out.append(" ")
        elif c == "(":
            depth = 1
        else:
            out.append(c)
            quoted = c == '"'
        i += 1
    return "".join(out)


def _split_params(value: str) -> list[str]:
    """`value` split at every `;` that is not inside a quoted string."""
    if '"' not in value:
        return value.split(";")
    pieces: list[str] = []
    start = 0
    quoted = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted and c == "\\":
            i += 1
        elif c == '"':
            quoted = not quoted
        elif c == ";" and not quoted:
            pieces.append(value[start:i])
            start = i + 1
        i += 1
    pieces.append(value[start:])
    return pieces


def _unquote(value: str) -> str:
    """A parameter value without its quotes and backslash escapes; a token as it is."""
    value = value.strip()
    if not value.startswith('"'):
        return value
    out: list[str] = []
    i = 1
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            break
        out.append(c)
        i += 1
    return "".join(out)


def _percent_decode(value: str) -> bytes:
    raw = value.encode("utf-8", "replace")
    return _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _from_charset(data: bytes, charset: str) -> str:
    return data.decode(_CHARSETS.get(charset.strip().lower(), "utf-8"), "replace")


def _extended(value: str) -> str:
    """An RFC 2231 `charset'language'percent-encoded` value, decoded."""
    charset, sep, rest = value.partition("'")
    if not sep:
        return _from_charset(_percent_decode(value), "utf-8")
    _language, sep, encoded = rest.partition("'")
    if not sep:
        return _from_charset(_percent_decode(rest), charset)
    return _from_charset(_percent_decode(encoded), charset)


def _structured(value: str | None) -> tuple[str, dict[str, str]]:
    """(main value lowercased, parameters by lowercase name) of a structured field value."""
    if value is None:
        return "", {}
    pieces = _split_params(_uncomment(value))
    main = pieces[0].strip().lower()
    simple: dict[str, str] = {}
    extended: dict[str, str] = {}
    segments: dict[str, dict[int, tuple[str, bool]]] = {}
    for piece in pieces[1:]:
        name, sep, raw = piece.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        text = _unquote(raw)
        cont = _CONTINUATION.fullmatch(name)
        if cont is not None:
            chunks = segments.setdefault(cont.group(1), {})
            chunks.setdefault(int(cont.group(2)), (text, cont.group(3) == "*"))
        elif name.endswith("*"):
            extended.setdefault(name[:-1], _extended(text))
        else:
            simple.setdefault(name, text)
    params = dict(simple)
    for name, chunks in segments.items():
        params[name] = _join_segments(chunks)
    params.update(extended)
    return main, params


def _join_segments(chunks: dict[int, tuple[str, bool]]) -> str:
    """RFC 2231 continuations `name*0`, `name*1`, ... joined, from 0 while contiguous."""
    charset = "us-ascii"
    data = b""
    index = 0
    while index in chunks:
        text, is_extended = chunks[index]
        if is_extended:
            if index == 0:
                charset, _, rest = text.partition("'")
                _language, _, text = rest.partition("'")
            data += _percent_decode(text)
        else:
            data += text.encode("utf-8", "replace")
        index += 1
    return _from_charset(data, charset)


# ------------------------------------------------------------------------ entities


@dataclass(frozen=True)
class Entity:
    """One MIME entity: its header fields and its still transfer-encoded body.

    The repr shows the content type and sizes only: the bytes may be embargoed text.
    """

    raw: bytes = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"Entity({self.content_type}, {len(self.headers)} header fields, "
            f"{len(self.body)} body bytes)"
        )

    def header(self, name: str) -> str | None:
        """The first field called `name` (any case), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    @property
    def content_type(self) -> str:
        """`type/subtype` lowercased; text/plain when absent or unparsable (RFC 2045)."""
        main, _ = _structured(self.header("Content-Type"))
        return main if _MEDIA_TYPE.fullmatch(main) else "text/plain"

    def _type_params(self) -> dict[str, str]:
        main, params = _structured(self.header("Content-Type"))
        return params if _MEDIA_TYPE.fullmatch(main) else {}

    def param(self, name: str) -> str | None:
        """A Content-Type parameter, quotes removed, RFC 2231 encoding undone."""
        return self._type_params().get(name.lower())

    def disposition_filename(self) -> str | None:
        """The Content-Disposition filename (else the Content-Type name) as a plain base
        name: no folders, no control characters; None when there is none."""
        _, params = _structured(self.header("Content-Disposition"))
        name = params.get("filename")
        if name is None:
            name = self._type_params().get("name")
        if name is None:
            return None
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        base = "".join(c for c in base if c.isprintable()).strip()
        return None if base in ("", ".", "..") else base

    def decoded(self) -> bytes:
        """The body with its Content-Transfer-Encoding undone."""
        encoding = _uncomment(self.header("Content-Transfer-Encoding") or "7bit").strip().lower()
        if encoding in ("7bit", "8bit", "binary", ""):
            return self.body
        if encoding == "base64":
            try:
                return binascii.a2b_base64(self.body)
            except binascii.Error:
                raise MimeError("base64 body is malformed") from None
        if encoding == "quoted-printable":
            return binascii.a2b_qp(self.body)
        raise MimeError("unknown Content-Transfer-Encoding")

    def text(self) -> str:
        """decoded() as text in the charset the Content-Type names.

        Known: utf-8, us-ascii, iso-8859-1 (latin-1) and windows-1252. Without a charset
        the text is read as UTF-8, the superset of RFC 2045's default us-ascii, so that
        unlabelled UTF-8 is not refused.
        """
        label = (self.param("charset") or "utf-8").strip().lower()
        codec = _CHARSETS.get(label)
        if codec is None:
            raise MimeError("unsupported charset (use utf-8)")
        try:
            return self.decoded().decode(codec)
        except UnicodeDecodeError:
            raise MimeError(f"body is not valid {label}") from None


def parse(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Entity:
    """One entity: header fields up to the first empty line, then the body.

    CRLF and bare LF line ends are both read; folded fields are unfolded.
    """
    if raw.startswith(b"\r\n"):
        return Entity(raw=raw, headers=(), body=raw[2:])
    if raw.startswith(b"\n"):
        return Entity(raw=raw, headers=(), body=raw[1:])
    blank = _BLANK_LINE.search(raw, 0, limits.header_bytes + 3)
    if blank is None:
        section, body = raw, b""
    else:
        section, body = raw[: blank.start() + 1], raw[blank.end() :]
    if len(section) > limits.header_bytes:
        raise MimeError(f"header section is over {limits.header_bytes} bytes")
    return Entity(raw=raw, headers=_fields(section, limits), body=body)


def _fields(section: bytes, limits: Limits) -> tuple[tuple[str, str], ...]:
    names: list[str] = []
    values: list[list[bytes]] = []
    for number, line in enumerate(section.split(b"\n"), start=1):
        line = line.removesuffix(b"\r")
        if not line:
            continue  # only the end of the section can be empty
        if line[:1] in (b" ", b"\t"):
            if not values:
                raise MimeError("header section starts with a continuation line")
            values[-1].append(line)
            continue
        name, colon, value = line.partition(b":")
        text_name = name.decode("ascii", "replace").rstrip(" \t")
        if not colon or _FIELD_NAME.fullmatch(text_name) is None:
            raise MimeError(f"header line {number} is not a 'Name: value' field")
        if len(names) >= limits.headers:
            raise MimeError(f"more than {limits.headers} header fields")
        names.append(text_name)
        values.append([value])
    return tuple(
        (name, b"".join(chunks).decode("utf-8", "replace").strip(" \t\r"))
        for name, chunks in zip(names, values, strict=True)
    )


# ---------------------------------------------------------------------- multiparts


def parts(entity: Entity, limits: Limits = DEFAULT_LIMITS) -> list[Entity]:
    """The body parts of one multipart/* entity (RFC 2046 section 5.1.1).

    The line break before a delimiter belongs to the delimiter; preamble and epilogue
    are dropped. Each part is parsed, but not its own parts.
    """
    if not entity.content_type.startswith("multipart/"):
        raise MimeError("not a multipart entity")
    boundary = entity.param("boundary")
    if not boundary:
        raise MimeError("multipart without a boundary parameter")
    if len(boundary) > _MAX_BOUNDARY:
        raise MimeError("multipart boundary is too long")
    body = entity.body
    dash = b"--" + boundary.encode("utf-8", "replace")
    found: list[Entity] = []
    start: int | None = None  # where the current part begins
    pos = 0
    while True:
        at = body.find(dash, pos)
        if at < 0:
            raise MimeError("multipart has no closing delimiter")
        line_end = body.find(b"\n", at)
        next_line = len(body) if line_end < 0 else line_end + 1
        pos = next_line  # nothing later on this line can start a delimiter
        if at and body[at - 1] != 0x0A:
            continue  # not at the start of a line: content
        after = body[at + len(dash) : next_line]
        closing = after.startswith(b"--")
        if (after[2:] if closing else after).strip(b" \t\r\n"):
            continue  # `--boundaryX`: a line of content that only starts like one
        if start is not None:
            end = at
            if body[end - 2 : end] == b"\r\n":
                end -= 2
            elif body[end - 1 : end] == b"\n":
                end -= 1
            if len(found) >= limits.parts:
                raise MimeError(f"multipart has more than {limits.parts} parts")
            found.append(parse(body[start : max(start, end)], limits))
        if closing:
            if start is None:
                raise MimeError("multipart closes before its first part")
            return found
        start = next_line


def walk(entity: Entity, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, Entity]]:
    """Every entity, depth first, as (depth, entity); the root is depth 0.

    Iterative; MimeError when multiparts nest deeper than `limits.depth`. A
    message/rfc822 part is a leaf: its inner message is not opened.
    """
    stack: list[tuple[int, Entity]] = [(0, entity)]
    while stack:
        depth, current = stack.pop()
        yield depth, current
        if current.content_type.startswith("multipart/"):
            if depth + 1 > limits.depth:
                raise MimeError(f"multiparts nest more than {limits.depth} deep")
            children = parts(current, limits)
            stack.extend((depth + 1, child) for child in reversed(children))


def canonical(data: bytes) -> bytes:
    """`data` with every line end (CRLF, bare LF, bare CR) made CRLF (RFC 3156 section 5)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
