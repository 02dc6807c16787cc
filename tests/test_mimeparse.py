"""The bounded MIME reader for incoming mail: header fields, multiparts, transfer encodings,
parameters and file names, and hostile input that must end in a clear MimeError (or a
result), never in a crash, a recursion error or a hang.

No test measures wall-clock time: a pathological input that the reader handled in
quadratic time or by recursion would hang or crash the suite instead."""

from __future__ import annotations

import base64

import pytest

from maild.domain.mimeparse import Entity, Limits, MimeError, canonical, parse, parts, walk

SECRET = b"Frob overflow in parse_header"

MIXED = (
    b"From: Ana <ana@distro.example>\r\n"
    b"To: embargo@wg.example\r\n"
    b"Subject: advisory with a patch\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed;\r\n"
    b' boundary="------------mix0123"\r\n'
    b"\r\n"
    b"This is a multi-part message in MIME format.\r\n"
    b"--------------mix0123\r\n"
    b"Content-Type: text/plain; charset=UTF-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, see the patch.\r\n"
    b"\r\n"
    b"--------------mix0123\r\n"
    b'Content-Type: text/x-diff; charset=UTF-8; name="fix.patch"\r\n'
    b'Content-Disposition: attachment; filename="fix.patch"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(b"--- a/frob.c\n+++ b/frob.c\n").replace(b"\n", b"\r\n") + b"\r\n"
    b"--------------mix0123--\r\n"
    b"epilogue that nobody reads\r\n"
)


def nested(levels: int, *, same_boundary: bool = False) -> bytes:
    """`levels` multiparts, each the only part of the one around it."""
    raw = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for level in range(levels):
        boundary = b"b" if same_boundary else f"=_level{level:05d}".encode()
        raw = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
            b"--" + boundary + b"\r\n" + raw + b"\r\n--" + boundary + b"--\r\n"
        )
    return raw


# ----------------------------------------------------------------------- headers


def test_header_fields_are_unfolded_and_found_in_any_case() -> None:
    """Folded fields come back on one line; names are matched case-insensitively and
    repeated fields are all available in order."""
    entity = parse(
        b"Received: from a\r\n\tby b\r\nReceived: from c\r\n"
        b"SUBJECT: status\r\n  WG-2026-007\r\n\r\nbody\r\n"
    )
    assert entity.header("subject") == "status  WG-2026-007"
    assert entity.header_all("RECEIVED") == ["from a\tby b", "from c"]
    assert entity.header("X-Missing") is None
    assert entity.headers[2][0] == "SUBJECT"
    assert entity.body == b"body\r\n"


def test_raw_is_the_exact_input_and_body_is_still_encoded() -> None:
    """The entity keeps its exact bytes and its body as transported (for signatures)."""
    entity = parse(MIXED)
    assert entity.raw == MIXED
    assert entity.body.startswith(b"This is a multi-part message")


def test_bare_lf_message_reads_like_crlf() -> None:
    """Mail with bare LF line ends (from a local pipe) gives the same fields and parts."""
    crlf = parse(MIXED)
    lf = parse(MIXED.replace(b"\r\n", b"\n"))
    assert lf.headers == crlf.headers
    assert lf.content_type == "multipart/mixed"
    assert [p.decoded() for p in parts(lf)] == [
        b"Gr\xc3\xbc\xc3\x9fe, see the patch.\n",
        b"--- a/frob.c\n+++ b/frob.c\n",
    ]


def test_field_without_colon_is_refused_without_quoting_it() -> None:
    """A header line that is not `Name: value` is a MimeError naming the line number, and
    the error text does not repeat the message's content."""
    with pytest.raises(MimeError, match="header line 2") as caught:
        parse(b"Subject: x\r\n" + SECRET + b"\r\n\r\nbody")
    assert SECRET.decode() not in str(caught.value)


def test_continuation_line_first_is_refused() -> None:
    """A header section cannot start with a folded continuation line."""
    with pytest.raises(MimeError, match="continuation"):
        parse(b" Subject: x\r\n\r\nbody")


def test_header_without_body_and_empty_body() -> None:
    """A message with no empty line is all header; one ending at the empty line has an
    empty body; both read as empty text."""
    assert parse(b"Subject: x\r\n").body == b""
    assert parse(b"Subject: x").header("Subject") == "x"
    entity = parse(b"Subject: x\r\n\r\n")
    assert entity.body == b"" and entity.text() == ""


def test_empty_message_is_an_empty_text_entity() -> None:
    """Zero bytes parse to an entity with no fields and no body, read as text/plain."""
    entity = parse(b"")
    assert entity.headers == () and entity.body == b""
    assert entity.content_type == "text/plain" and entity.text() == ""
    assert parse(b"\r\nonly a body").body == b"only a body"


def test_non_utf8_header_and_body_bytes() -> None:
    """Non-UTF-8 header bytes become U+FFFD instead of failing; a body whose bytes do
    not match its utf-8 charset is a MimeError from text(), while decoded() still
    returns the bytes and a latin-1 label reads them."""
    raw = b"Subject: caf\xe9 \xff\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ncaf\xe9\r\n"
    entity = parse(raw)
    assert entity.header("Subject") == "caf\ufffd \ufffd"
    assert entity.decoded() == b"caf\xe9\r\n"
    with pytest.raises(MimeError, match="not valid utf-8"):
        entity.text()
    latin = parse(raw.replace(b"charset=utf-8", b"charset=ISO-8859-1"))
    assert latin.text() == "caf\u00e9\r\n"


def test_non_ascii_field_name_is_refused() -> None:
    """A field name with bytes outside printable ASCII is not a header field."""
    with pytest.raises(MimeError):
        parse(b"Sub\xffject: x\r\n\r\n")


def test_repr_does_not_show_content() -> None:
    """An entity in a log line or traceback shows its type and sizes, not its bytes."""
    shown = repr(parse(b"Subject: " + SECRET + b"\r\n\r\n" + SECRET))
    assert SECRET.decode() not in shown
    assert "text/plain" in shown


# ------------------------------------------------------------------- content type


def test_content_type_defaults_to_text_plain() -> None:
    """Absent or unparsable Content-Type reads as text/plain (RFC 2045)."""
    assert parse(b"Subject: x\r\n\r\n").content_type == "text/plain"
    assert parse(b"Content-Type: garbage\r\n\r\n").content_type == "text/plain"
    assert parse(b"Content-Type: a/b/c\r\n\r\n").content_type == "text/plain"


def test_content_type_parameters_with_comments_and_quotes() -> None:
    """The type is lowercased, comments are dropped and quoted values may hold `;` and
    escaped quotes."""
    entity = parse(
        b"Content-Type: (lead) Multipart/Signed (comment (nested)) ;"
        b' Protocol="application/pgp-signature"; micalg=pgp-sha256 (hash);'
        b' boundary="a;b\\"c"\r\n\r\n'
    )
    assert entity.content_type == "multipart/signed"
    assert entity.param("protocol") == "application/pgp-signature"
    assert entity.param("MICALG") == "pgp-sha256"
    assert entity.param("boundary") == 'a;b"c'
    assert entity.param("charset") is None


def test_rfc2231_file_names() -> None:
    """RFC 2231 encoded and continued file names are decoded (UTF-8, Latin-1)."""
    extended = parse(
        b"Content-Type: text/x-diff\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''%C3%A9t%C3%A9%20fix.patch\r\n\r\n"
    )
    assert extended.disposition_filename() == "\u00e9t\u00e9 fix.patch"
    continued = parse(
        b"Content-Type: text/x-diff\r\n"
        b"Content-Disposition: attachment;\r\n"
        b" filename*0*=iso-8859-1'fr'%E9t%E9;\r\n"
        b' filename*1="-fix.patch"\r\n\r\n'
    )
    assert continued.disposition_filename() == "\u00e9t\u00e9-fix.patch"
    by_name = parse(b"Content-Type: text/x-diff; name*=UTF-8''na%C3%AFve.patch\r\n\r\n")
    assert by_name.param("name") == "na\u00efve.patch"
    assert by_name.disposition_filename() == "na\u00efve.patch"


def test_encoded_name_wins_over_plain_name() -> None:
    """When both `filename` and `filename*` are given, the RFC 2231 one is used."""
    entity = parse(
        b"Content-Disposition: attachment; filename=plain.patch;"
        b" filename*=utf-8''fancy%E2%9C%93.patch\r\n\r\n"
    )
    assert entity.disposition_filename() == "fancy\u2713.patch"


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        (b'attachment; filename="../../etc/passwd"', "passwd"),
        (b'attachment; filename="C:\\\\Users\\\\ana\\\\fix.patch"', "fix.patch"),
        (b'attachment; filename=".."', None),
        (b"attachment; filename*=utf-8''a%0Ab.patch", "ab.patch"),
        (b"attachment", None),
    ],
)
def test_file_names_are_plain_base_names(disposition: bytes, expected: str | None) -> None:
    """A file name never carries folders, `..` or control characters."""
    entity = parse(b"Content-Disposition: " + disposition + b"\r\n\r\n")
    assert entity.disposition_filename() == expected


# ---------------------------------------------------------------- transfer encodings


def test_base64_and_quoted_printable_bodies_are_decoded() -> None:
    """base64 and quoted-printable bodies decode to their bytes; text() uses the charset."""
    b64 = parse(
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: BASE64\r\n\r\n"
        + base64.encodebytes("Ünïcödé advisory\n".encode()).replace(b"\n", b"\r\n")
    )
    assert b64.text() == "Ünïcödé advisory\n"
    qp = parse(
        b"Content-Type: text/plain; charset=windows-1252\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Trailing space=20\r\nsoft =\r\nbreak, euro =80, equals =3D\r\n"
    )
    assert qp.decoded() == b"Trailing space \r\nsoft break, euro \x80, equals =\r\n"
    assert qp.text() == "Trailing space \r\nsoft break, euro \u20ac, equals =\r\n"


def test_malformed_base64_and_unknown_encoding_are_errors() -> None:
    """Broken base64 and an unknown transfer encoding are MimeErrors, not crashes."""
    with pytest.raises(MimeError, match="base64"):
        parse(b"Content-Transfer-Encoding: base64\r\n\r\naGVsb").decoded()
    with pytest.raises(MimeError, match="Content-Transfer-Encoding"):
        parse(b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin").decoded()


def test_unknown_charset_is_an_error() -> None:
    """text() refuses a charset it does not know rather than guessing."""
    with pytest.raises(MimeError, match="charset"):
        parse(b"Content-Type: text/plain; charset=koi8-r\r\n\r\n\xc1").text()


def test_text_without_charset_reads_utf8() -> None:
    """An unlabelled text part is read as UTF-8 (a superset of the us-ascii default)."""
    assert parse(b"Subject: x\r\n\r\nna\xc3\xafve").text() == "na\u00efve"


# ------------------------------------------------------------------------ multiparts


def test_multipart_parts_drop_preamble_and_epilogue() -> None:
    """One level of parts, each with its own fields, no preamble or epilogue."""
    found = parts(parse(MIXED))
    assert [p.content_type for p in found] == ["text/plain", "text/x-diff"]
    assert found[0].text() == "Grüße, see the patch.\r\n"
    assert found[1].disposition_filename() == "fix.patch"
    assert found[1].decoded() == b"--- a/frob.c\n+++ b/frob.c\n"


def test_line_break_before_delimiter_belongs_to_delimiter() -> None:
    """A part's bytes end before the CRLF that precedes the next delimiter; a body
    starting directly with the delimiter has no preamble."""
    entity = parse(
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\n\r\nno final newline\r\n--XX\r\n\r\ntwo\r\n\r\n--XX--"
    )
    assert [p.raw for p in parts(entity)] == [b"\r\nno final newline", b"\r\ntwo\r\n"]


def test_lines_that_only_start_like_a_delimiter_are_content() -> None:
    """`--boundaryX` and a delimiter in mid-line are content, not delimiters."""
    entity = parse(
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\n\r\n--XXY is content\r\nso is this --XX\r\n--XX  \r\n\r\nb\r\n--XX--  \r\n"
    )
    found = parts(entity)
    assert [p.body for p in found] == [b"--XXY is content\r\nso is this --XX", b"b"]


def test_multipart_without_closing_delimiter_is_an_error() -> None:
    """A multipart cut short (no `--boundary--`) is a MimeError."""
    truncated = MIXED[: MIXED.index(b"--------------mix0123--")]
    with pytest.raises(MimeError, match="closing delimiter"):
        parts(parse(truncated))


def test_multipart_without_boundary_is_an_error() -> None:
    """A multipart with no boundary parameter is a MimeError."""
    with pytest.raises(MimeError, match="boundary"):
        parts(parse(b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\na\r\n--x--\r\n"))


def test_parts_of_a_non_multipart_is_an_error() -> None:
    """Asking a text part for its parts is a MimeError."""
    with pytest.raises(MimeError, match="not a multipart"):
        parts(parse(b"Content-Type: text/plain\r\n\r\nx"))


def test_too_many_parts_is_an_error() -> None:
    """More parts than Limits.parts is refused; exactly the limit is fine."""
    body = b"".join(b"--p\r\n\r\npart\r\n" for _ in range(5)) + b"--p--\r\n"
    entity = parse(b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + body)
    assert len(parts(entity, Limits(parts=5))) == 5
    with pytest.raises(MimeError, match="more than 4 parts"):
        parts(entity, Limits(parts=4))


def test_walk_is_depth_first_with_depths() -> None:
    """walk yields every entity depth first, with its nesting depth."""
    inner = (
        b"Content-Type: multipart/alternative; boundary=in\r\n\r\n"
        b"--in\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        b"--in\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--in--\r\n"
    )
    outer = (
        b"Content-Type: multipart/mixed; boundary=out\r\n\r\n"
        b"--out\r\n" + inner + b"\r\n--out\r\nContent-Type: text/x-diff\r\n\r\ndiff\r\n--out--\r\n"
    )
    seen = [(depth, e.content_type) for depth, e in walk(parse(outer))]
    assert seen == [
        (0, "multipart/mixed"),
        (1, "multipart/alternative"),
        (2, "text/plain"),
        (2, "text/html"),
        (1, "text/x-diff"),
    ]


def test_walk_allows_exactly_the_depth_limit() -> None:
    """Limits.depth nested multiparts are read; one more is a MimeError."""
    assert list(walk(parse(nested(3)), Limits(depth=3)))[-1][0] == 3
    with pytest.raises(MimeError, match="nest more than 2 deep"):
        list(walk(parse(nested(3)), Limits(depth=2)))


def test_signed_bytes_canonical_form() -> None:
    """canonical() makes every line end CRLF (bare LF, bare CR, mixed) and keeps
    everything else, trailing spaces included."""
    assert canonical(b"a \nb\r\nc\rd\r\r\n") == b"a \r\nb\r\nc\r\nd\r\n\r\n"
    assert canonical(b"") == b""


# -------------------------------------------------------------------- hostile input


def test_thousand_nested_multiparts_stop_at_the_depth_limit() -> None:
    """1,000 nested multiparts: parsing the top is fine, walking it is a MimeError at the
    depth limit (no recursion, so no RecursionError)."""
    entity = parse(nested(1000))
    assert entity.content_type == "multipart/mixed"
    walked: list[int] = []
    with pytest.raises(MimeError, match="nest more than 8 deep"):
        for depth, _ in walk(entity):
            walked.append(depth)
    assert walked == list(range(9))


def test_thousand_nested_multiparts_sharing_one_boundary() -> None:
    """Nesting that reuses one boundary is read as one flat multipart with too many
    parts: a MimeError, not a crash."""
    with pytest.raises(MimeError, match="more than 200 parts"):
        list(walk(parse(nested(1000, same_boundary=True))))


def test_200_kb_header_is_refused() -> None:
    """A header section over Limits.header_bytes (64 KiB) is refused, whether one long
    field or very many short ones, and whether or not a body follows."""
    with pytest.raises(MimeError, match="header section is over 65536 bytes"):
        parse(b"X-Long: " + b"a" * 200_000 + b"\r\n\r\nbody")
    with pytest.raises(MimeError, match="header section is over"):
        parse(b"X-Long: " + b"a" * 200_000)
    with pytest.raises(MimeError, match="header section is over"):
        parse(b"X: a\r\n" * 40_000 + b"\r\nbody")


def test_too_many_header_fields_are_refused() -> None:
    """More than Limits.headers fields in one entity is a MimeError."""
    raw = b"X: a\r\n" * 501 + b"\r\n"
    with pytest.raises(MimeError, match="more than 500 header fields"):
        parse(raw)
    assert len(parse(raw, Limits(headers=501)).headers) == 501


def test_header_of_100000_open_parens() -> None:
    """A Content-Type of 100,000 `(` is refused by the default size limit; with the limit
    raised it parses (one unclosed comment) to the default type, without recursion."""
    raw = b"Content-Type: " + b"(" * 100_000 + b"\r\n\r\nbody"
    with pytest.raises(MimeError, match="header section is over"):
        parse(raw)
    entity = parse(raw, Limits(header_bytes=1 << 20))
    assert entity.content_type == "text/plain"
    assert entity.param("charset") is None
    assert entity.text() == "body"


@pytest.mark.parametrize(
    "value",
    [
        b"multipart/mixed; boundary=" + b"(" * 100_000,
        b"multipart/mixed; boundary=x" + b")" * 100_000,
        b"multipart/mixed; boundary=x; a=" + b'"' * 100_001,
        b"multipart/mixed; boundary=x (" + b"\\(" * 50_000,
        b"multipart/mixed; boundary=x" + b";" * 100_000,
        b"multipart/mixed; boundary=x; " + b"a*0*=%;" * 15_000,
    ],
)
def test_pathological_structured_values_parse(value: bytes) -> None:
    """Long runs of comment, quote, escape and separator characters in a Content-Type
    are read in one pass (a quadratic reader would hang the suite here)."""
    entity = parse(b"Content-Type: " + value + b"\r\n\r\n", Limits(header_bytes=1 << 20))
    assert entity.content_type == "multipart/mixed"
    assert entity.disposition_filename() is None


def test_long_lines_of_false_delimiters() -> None:
    """A body of a million boundary look-alikes on one line is one part, read in one
    pass."""
    entity = parse(
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
        + b"--b" * 1_000_000
        + b"\r\n--b--\r\n"
    )
    (only,) = parts(entity)
    assert len(only.body) == 3_000_000


def test_errors_are_mime_errors_and_value_errors() -> None:
    """MimeError is a ValueError, so callers that catch bad input catch it too."""
    assert issubclass(MimeError, ValueError)
    assert isinstance(parse(b""), Entity)
