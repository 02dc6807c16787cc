"""PGP/MIME notices and signed mail: built as bytes by maild.adapters.mime, signed and
encrypted by the gpg adapter with real throwaway keyrings, read back the way a recipient's
mail client would (Python's email parser, gpg, and Sequoia's sqop where it is installed)."""

from __future__ import annotations

import base64
import email
import email.policy
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from maild.adapters.gpg import GpgError, Keyring
from maild.adapters.mime import (
    Attachment,
    encrypted_message,
    header_safe,
    protected_part,
    signed_message,
    signed_part,
)
from tests.keyfactory import (
    Keys,
    daemon_and_orgs,
    export_secret,
    raw_gpg,
    recipients,
    subkey_fingerprints,
    temp_keyring,
)

PAST = datetime(2020, 1, 1, tzinfo=UTC)
TITLE = "Embargoed: Frob overflow"
# Words of the advisory that must never show outside the ciphertext. Each holds a character
# that base64 armor cannot produce (space, '-', '.', '_'), so a chance match is impossible.
SECRET_WORDS = (b"Frob overflow", b"CVE-2026-", b"fix.patch", b"parse_header", b"frob.c")
# A patch is carried byte for byte: LF line ends, trailing whitespace, a tab, no final newline.
PATCH = b"--- a/frob.c\n+++ b/frob.c\n@@ -1 +1 @@\n-int n = 1; \n+size_t n = 1;\t\n\\ end"
TEXT = (
    "Heap overflow in parse_header() of frob (CVE-2026-12345).\n"
    "From the WG: this notice is under embargo until 2026-12-01 17:00 UTC.\n"
    ".\n"
    "Trailing space here \n"
    "Ünïcödé and a long line: " + "x" * 150 + "\n"
)
OUTER = [
    ("From", "Disclosure WG <maild@wg.example>"),
    ("To", "security@org-a.example"),
    ("Date", "Tue, 24 Nov 2026 17:00:00 +0000"),
    ("Message-ID", "<notice-1@wg.example>"),
    ("Subject", "Embargoed security notice"),
]
INNER = [
    ("Subject", TITLE),
    ("From", "Disclosure WG <maild@wg.example>"),
    ("To", "security@org-a.example"),
    ("Date", "Tue, 24 Nov 2026 17:00:00 +0000"),
    ("Message-ID", "<notice-1@wg.example>"),
]
ATTACHMENTS = [Attachment("fix.patch", PATCH)]
SQOP = shutil.which("sqop")


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    with daemon_and_orgs() as made:
        yield made


@dataclass(frozen=True)
class Notice:
    inner: bytes
    ciphertext: bytes
    message: bytes


@pytest.fixture(scope="module")
def notice(keys: Keys) -> Notice:
    inner = protected_part(INNER, TEXT, ATTACHMENTS, outer_headers=OUTER)
    ciphertext = keys.daemon.sign_encrypt(inner, keys.a, keys.identity, now())
    return Notice(inner, ciphertext, encrypted_message(OUTER, ciphertext))


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def first_part(raw: bytes) -> bytes:
    """The exact bytes of the first body part of a multipart message (RFC 2046: the CRLF
    in front of each delimiter belongs to the delimiter, not to the part)."""
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    delimiter = b"\r\n--" + boundary.encode("ascii")
    start = raw.index(delimiter + b"\r\n") + len(delimiter) + 2
    return raw[start : raw.index(delimiter, start)]


def assert_wire_safe(raw: bytes) -> None:
    """Every line ends in CRLF, is 7-bit and (no unbreakable words here) at most 78 long."""
    assert raw.isascii()
    assert raw.endswith(b"\r\n")
    lines = raw[:-2].split(b"\r\n")
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    assert all(len(line) <= 998 for line in lines)
    assert max(len(line) for line in lines) <= 78


def payload(part: EmailMessage) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


# ------------------------------------------------------------------------- notices


def test_notice_outside_shows_nothing_of_the_advisory(notice: Notice) -> None:
    """The outer headers and everything outside the ciphertext are generic: no title, CVE
    or component; the message is RFC 3156 multipart/encrypted with the armored ciphertext."""
    message = parse(notice.message)
    assert message["Subject"] == "Embargoed security notice"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/encrypted"
    assert message.get_param("protocol") == "application/pgp-encrypted"
    for word in SECRET_WORDS:
        assert word not in notice.message, word
    outer_text = "\n".join(f"{name}: {value}" for name, value in message.items())
    for word in ("Frob overflow", "CVE", "parse_header", "frob", "patch"):
        assert word.lower() not in outer_text.lower()

    control, body = message.get_payload()
    assert isinstance(control, EmailMessage) and isinstance(body, EmailMessage)
    assert control.get_content_type() == "application/pgp-encrypted"
    assert payload(control).strip() == b"Version: 1"
    assert body.get_content_type() == "application/octet-stream"
    assert body.get_param("name") == "encrypted.asc"
    assert body.get_content_disposition() == "inline"
    assert body.get_filename() == "encrypted.asc"
    assert payload(body).replace(b"\r\n", b"\n") == notice.ciphertext.replace(b"\r\n", b"\n")


def test_notice_decrypts_for_the_org_only_and_names_the_identity(
    keys: Keys, notice: Notice
) -> None:
    """Org A's keyring decrypts the notice to exactly the protected part, signed by the WG
    identity key; org B's cannot; the message holds one session key, for A's subkey."""
    ciphertext = payload(parse(notice.message).get_payload()[1])
    plaintext, signer = keys.org_a.decrypt_verify(ciphertext)
    assert plaintext == notice.inner
    assert signer == keys.identity
    with pytest.raises(GpgError):
        keys.org_b.decrypt_verify(ciphertext)
    used = recipients(keys.daemon, ciphertext)
    assert len(used) == 1
    assert used[0] in {fpr[-16:] for fpr in subkey_fingerprints(keys.daemon, keys.a)}


def test_notice_inside_carries_the_real_headers_and_the_patch(notice: Notice) -> None:
    """Inside the ciphertext: hp="cipher", the real Subject and other protected headers,
    HP-Outer records of the generic outside, the text, and the patch byte for byte."""
    inner = parse(notice.inner)
    assert inner.get_content_type() == "multipart/mixed"
    assert inner.get_param("hp") == "cipher"
    assert inner["Subject"] == TITLE
    assert inner["Message-ID"] == "<notice-1@wg.example>"
    assert inner["To"] == "security@org-a.example"
    assert "Subject: Embargoed security notice" in inner.get_all("HP-Outer", [])
    text, patch = inner.get_payload()
    assert isinstance(text, EmailMessage) and isinstance(patch, EmailMessage)
    assert text.get_content_type() == "text/plain"
    assert text.get_content_charset() == "utf-8"
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert payload(text).decode("utf-8").replace("\r\n", "\n") == TEXT
    assert patch.get_content_type() == "text/x-diff"
    assert patch.get_content_disposition() == "attachment"
    assert patch.get_filename() == "fix.patch"
    assert payload(patch) == PATCH
    assert_wire_safe(notice.inner)
    assert_wire_safe(notice.message)


def test_notice_without_attachments_is_one_text_part(keys: Keys) -> None:
    """With no patches the protected part is a single text/plain entity with hp="cipher"."""
    inner = protected_part(INNER, "short notice", outer_headers=OUTER)
    parsed = parse(inner)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_param("hp") == "cipher"
    assert parsed["Subject"] == TITLE
    assert payload(parsed) == b"short notice\r\n"
    ciphertext = keys.daemon.sign_encrypt(inner, keys.a, keys.identity, now())
    assert keys.org_a.decrypt_verify(ciphertext) == (inner, keys.identity)


def test_notices_can_be_made_from_two_threads_at_once(keys: Keys) -> None:
    """The dispatcher's pool of two threads gets every notice right, each to its own org."""
    jobs = [(f"notice {n}".encode(), keys.a if n % 2 else keys.b) for n in range(8)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        made = list(
            pool.map(
                lambda job: keys.daemon.sign_encrypt(job[0], job[1], keys.identity, now()), jobs
            )
        )
    for (data, fpr), ciphertext in zip(jobs, made, strict=True):
        ring = keys.org_a if fpr == keys.a else keys.org_b
        assert ring.decrypt_verify(ciphertext) == (data, keys.identity)


# ------------------------------------------------------------------ signed mail


def test_signed_message_verifies_over_the_exact_first_part(keys: Keys) -> None:
    """A multipart/signed message carries the signed part byte for byte; its detached
    signature verifies as the identity's, and one flipped byte makes it fail."""
    part = signed_part("Pre-announcement: a fix ships on 2026-12-01 17:00 UTC.\n", ATTACHMENTS)
    signature = keys.daemon.detach_sign(part, keys.identity)
    raw = signed_message(
        [("From", "Disclosure WG <maild@wg.example>"), ("Subject", "Pre-announcement")],
        part,
        signature,
    )
    assert_wire_safe(raw)
    message = parse(raw)
    assert message.get_content_type() == "multipart/signed"
    assert message.get_param("micalg") == "pgp-sha256"
    assert message.get_param("protocol") == "application/pgp-signature"
    signed, sig_part = message.get_payload()
    assert isinstance(signed, EmailMessage) and isinstance(sig_part, EmailMessage)
    assert sig_part.get_content_type() == "application/pgp-signature"
    assert sig_part.get_param("name") == "signature.asc"

    extracted = first_part(raw)
    assert extracted == part
    carried = payload(sig_part)
    assert keys.org_a.verify_detached(extracted, carried) == keys.identity
    flipped = extracted.replace(b"2026-12-01", b"2026-12-02")
    assert flipped != extracted
    assert keys.org_a.verify_detached(flipped, carried) is None
    assert keys.org_a.verify_detached(extracted + b"\r\n", carried) is None


def test_unsigned_or_unknown_signatures_name_no_signer(keys: Keys, tmp_path: Path) -> None:
    """decrypt_verify and verify_detached give None, not a guess, when no known key signed
    exactly this data; a message that is only signed, not encrypted, is refused."""
    unsigned = keys.daemon.encrypt(b"no signature", keys.a, now())
    assert keys.org_a.decrypt_verify(unsigned) == (b"no signature", None)
    by_a = keys.org_a.detach_sign(b"data", keys.a)
    assert keys.org_a.verify_detached(b"data", by_a) == keys.a
    assert keys.org_b.verify_detached(b"data", by_a) is None  # B does not know A's key
    assert keys.org_a.verify_detached(b"data", b"not a signature") is None
    other = tmp_path / "other.txt"
    other.write_bytes(b"other data")
    for mode in ("--sign", "--clearsign"):
        inline = raw_gpg(keys.org_a, "--armor", mode, "-u", keys.a, "--output", "-", str(other))
        assert keys.org_a.verify_detached(b"data", inline) is None  # not a detached signature
        with pytest.raises(GpgError, match="not public-key encrypted"):
            keys.org_a.decrypt_verify(inline)


# ------------------------------------------------------------- refusals by gpg


@pytest.mark.parametrize(
    ("which", "phrase"), [("revoked", "key is revoked"), ("expired", "key expired on 2020-01-02")]
)
def test_sign_encrypt_refuses_an_unusable_recipient(keys: Keys, which: str, phrase: str) -> None:
    """A revoked or expired org key gets nothing: GpgError naming the key and the problem."""
    fpr = getattr(keys, which)
    with pytest.raises(GpgError) as caught:
        keys.daemon.sign_encrypt(b"Frob overflow", fpr, keys.identity, now())
    assert fpr in str(caught.value)
    assert phrase in str(caught.value)
    assert "Frob" not in str(caught.value)


def test_signing_needs_the_secret_of_exactly_that_key(keys: Keys) -> None:
    """A signer whose secret key is absent, or given by short id, fails; nothing returned."""
    with pytest.raises(GpgError, match=r"No secret key|secret"):
        keys.daemon.sign_encrypt(b"x", keys.a, keys.b, now())  # daemon has B's public key only
    with pytest.raises(GpgError):
        keys.daemon.detach_sign(b"x", keys.b)
    with pytest.raises(GpgError, match="full 40-hex fingerprint"):
        keys.daemon.detach_sign(b"x", keys.identity[-16:])


def test_a_hostile_gpg_conf_cannot_add_recipients_or_signers(keys: Keys) -> None:
    """Extra recipients or signers slipped in through gpg.conf make the call fail closed."""
    conf = keys.daemon.home / "gpg.conf"
    for line in (f"recipient {keys.b}", f"hidden-recipient {keys.b}", "throw-keyids"):
        conf.write_text(line + "\n")
        try:
            with pytest.raises(GpgError, match=r"discarded|hidden"):
                keys.daemon.sign_encrypt(b"x", keys.a, keys.identity, now())
        finally:
            conf.unlink()
    with temp_keyring() as ring:
        first = ring.generate("First <first@example.org>")
        second = ring.generate("Second <second@example.org>")
        (ring.home / "gpg.conf").write_text(f"local-user {second}\n")
        with pytest.raises(GpgError, match="2 signatures"):
            ring.detach_sign(b"x", first)
        with pytest.raises(GpgError, match="2 signatures"):
            ring.sign_encrypt(b"x", first, first, now())


def test_a_stuck_gpg_is_stopped() -> None:
    """A gpg run that outlasts the keyring's timeout is killed and reported as timed out."""
    with temp_keyring() as ring:
        hasty = Keyring(ring.home, timeout=1e-6)
        with pytest.raises(GpgError, match="gpg timed out"):
            hasty.detach_sign(b"x", "0123456789ABCDEF0123456789ABCDEF01234567")
        with pytest.raises(GpgError, match="gpg timed out"):
            hasty.decrypt_verify(b"x")
    with pytest.raises(ValueError):
        Keyring(ring.home, timeout=0)


# ------------------------------------------------------------------ header safety


@pytest.mark.parametrize(
    "value", ["a\r\nBcc: x@y", "a\nBcc: x@y", "a\rb", "a\x00b", "a\x1bb", "a\x85b", "a\u2028b"]
)
def test_header_injection_is_refused(value: str) -> None:
    """A title with CR, LF, NUL or another control character can never become a header."""
    with pytest.raises(ValueError):
        header_safe(value)
    with pytest.raises(ValueError):
        protected_part([("Subject", value)], "text")
    with pytest.raises(ValueError):
        encrypted_message([("Subject", value)], b"-----BEGIN PGP MESSAGE-----\n\n=x\n")
    with pytest.raises(ValueError):
        Attachment(value, b"")


def test_encoded_words_hiding_line_breaks_are_refused() -> None:
    """An RFC 2047 word that decodes to CR LF is refused too: it would put a line break
    into what the reader's mail client shows (and into the headers of a reply)."""
    hidden = "=?utf-8?b?" + base64.b64encode(b"x\r\nBcc: x@y").decode() + "?="
    for value in (hidden, f"title {hidden}", "=?utf-8?q?a=0D=0Ab?="):
        with pytest.raises(ValueError):
            header_safe(value)
        with pytest.raises(ValueError):
            protected_part([("Subject", value)], "text")
    with pytest.raises(ValueError):
        protected_part([("From", f"{hidden} <a@example.org>")], "text")


def test_header_safe_can_be_applied_twice() -> None:
    """A value already made safe passes through again unchanged, so callers may pre-encode."""
    for value in ("Frob overflow", "Überlauf in Frob", "ü  ö", "x =?oops y", "a" * 950):
        once = header_safe(value)
        assert header_safe(once) == once
        parsed = parse(protected_part([("Subject", once)], "text"))
        assert parsed["Subject"] == value


def test_structural_and_malformed_headers_are_refused() -> None:
    """Callers cannot set MIME structure headers or use a malformed field name."""
    for name in ("Content-Type", "MIME-Version", "content-transfer-encoding", "Bad Name", ""):
        with pytest.raises(ValueError):
            protected_part([(name, "x")], "text")


def test_non_ascii_headers_are_rfc2047_encoded_and_read_back() -> None:
    """Non-ASCII subjects and names go out as RFC 2047 words and read back as written."""
    subject = "Überlauf in Frob: déjà vu " + "ü" * 60
    assert header_safe("plain ASCII title") == "plain ASCII title"
    encoded = header_safe(subject)
    assert encoded.isascii()
    assert "=?utf-8?b?" in encoded
    raw = protected_part(
        [("Subject", subject), ("From", "Zoë Ünïcode <zoe@example.org>")],
        "text",
        [Attachment("répertoire très long " * 4 + ".patch", b"\x00\xff")],
    )
    assert_wire_safe(raw)
    parsed = parse(raw)
    assert parsed["Subject"] == subject
    assert parsed["From"].addresses[0].display_name == "Zoë Ünïcode"
    assert parsed["From"].addresses[0].addr_spec == "zoe@example.org"
    attachment = parsed.get_payload()[1]
    assert isinstance(attachment, EmailMessage)
    assert attachment.get_filename() == "répertoire très long " * 4 + ".patch"
    assert payload(attachment) == b"\x00\xff"


def test_signed_message_refuses_parts_mail_systems_would_rewrite() -> None:
    """A part with bare LF, 8-bit bytes or trailing whitespace is refused, not sent broken."""
    signature = b"-----BEGIN PGP SIGNATURE-----\n\n=x\n-----END PGP SIGNATURE-----\n"
    for bad in (
        b"Content-Type: text/plain\n\nbare LF\n",
        b"Content-Type: text/plain\r\n\r\n8-bit \xc3\xa9\r\n",
        b"Content-Type: text/plain\r\n\r\ntrailing space \r\n",
        b"no header separator",
    ):
        with pytest.raises(ValueError):
            signed_message([("Subject", "x")], bad, signature)


def test_every_message_is_crlf_7bit_and_within_line_limits(keys: Keys) -> None:
    """All generated entities: CRLF line ends only, 7-bit, every line within 78 characters,
    and every boundary absent from the content it encloses."""
    tricky = "\r\n".join(["--=_ looks like a boundary", "a\rb\nc", "=?utf-8?b?eA==?=", "x" * 500])
    part = signed_part(
        tricky, [Attachment("big.bin", os.urandom(5000), "application/octet-stream")]
    )
    raw = signed_message(OUTER, part, keys.daemon.detach_sign(part, keys.identity))
    inner = protected_part(INNER, tricky, ATTACHMENTS, outer_headers=OUTER)
    sealed = encrypted_message(OUTER, keys.daemon.sign_encrypt(inner, keys.a, keys.identity, now()))
    for message in (part, raw, inner, sealed, signed_part(""), signed_part("x")):
        assert_wire_safe(message)
    for message in (raw, inner, sealed):
        boundary = parse(message).get_boundary()
        assert boundary is not None
        assert message.count(boundary.encode()) == 1 + len(parse(message).get_payload()) + 1


# --------------------------------------------------------------- interoperability


sqop_needed = pytest.mark.skipif(
    SQOP is None and not os.environ.get("CI"),
    reason="sqop (Debian package 'sqop') is not installed; CI installs it",
)


@sqop_needed
def test_sequoia_decrypts_the_notice_and_verifies_the_identity(
    keys: Keys, notice: Notice, tmp_path: Path
) -> None:
    """An independent OpenPGP implementation (sqop) decrypts the notice with org A's key
    and verifies the WG identity's signature inside it."""
    sqop = _sqop()
    key = tmp_path / "org-a.key"
    key.write_bytes(export_secret(keys.org_a, keys.a))
    cert = tmp_path / "identity.cert"
    cert.write_bytes(keys.daemon.export_public(keys.identity))
    verifications = tmp_path / "verifications.txt"
    ciphertext = payload(parse(notice.message).get_payload()[1])
    done = subprocess.run(
        [
            sqop,
            "decrypt",
            f"--verify-with={cert}",
            f"--verifications-out={verifications}",
            str(key),
        ],
        input=ciphertext,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == notice.inner
    assert _verified_primaries(verifications.read_text()) == [keys.identity]


@sqop_needed
def test_sequoia_verifies_the_detached_signature(keys: Keys, tmp_path: Path) -> None:
    """sqop verifies the multipart/signed signature over the first part, and rejects it
    when one byte of that part changes."""
    sqop = _sqop()
    part = signed_part("Pre-announcement: a fix ships on 2026-12-01 17:00 UTC.\n")
    raw = signed_message(
        [("Subject", "Pre-announcement")], part, keys.daemon.detach_sign(part, keys.identity)
    )
    signature = tmp_path / "signature.asc"
    signature.write_bytes(payload(parse(raw).get_payload()[1]))
    cert = tmp_path / "identity.cert"
    cert.write_bytes(keys.daemon.export_public(keys.identity))

    def verify(data: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sqop, "verify", str(signature), str(cert)],
            input=data,
            capture_output=True,
            timeout=30,
            check=False,
        )

    good = verify(first_part(raw))
    assert good.returncode == 0, good.stderr
    assert _verified_primaries(good.stdout.decode()) == [keys.identity]
    bad = verify(first_part(raw).replace(b"2026-12-01", b"2026-12-02"))
    assert bad.returncode != 0
    assert bad.stdout == b""


def _sqop() -> str:
    if SQOP is None:
        pytest.fail("CI is set but sqop is not installed (apt-get install sqop)")
    return SQOP


def _verified_primaries(text: str) -> list[str]:
    """Primary fingerprints of SOP VERIFICATIONS lines: `<when> <signing fpr> <primary fpr> ...`."""
    return [line.split()[2].upper() for line in text.splitlines() if line.strip()]
