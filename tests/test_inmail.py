"""Incoming mail: what kind it is (PGP/MIME encrypted, signed, clearsigned, DSN), the
ciphertext and signed bytes inside it, delivery status notifications as smarthosts
send them, WG members' commands and acknowledgement tokens. Messages are written by
hand the way Thunderbird, Postfix and others write them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from maild.domain.inmail import (
    ACK_TOKEN,
    Command,
    CommandError,
    DsnRecipient,
    Kind,
    Verb,
    ack_tokens,
    classify,
    find_command,
    is_advisory,
    parse_command,
    parse_dsn,
    pgp_ciphertext,
    signed_parts,
)
from maild.domain.mimeparse import MimeError, parse

ARMORED_MESSAGE = (
    b"-----BEGIN PGP MESSAGE-----\r\n"
    b"\r\n"
    b"hF4DyvN0ZUp0fpgSAQdAq1XDGa3yMLK9Wl8rBT3N5NQk3oWvG0eZ8ZXiTQpL3Rcw\r\n"
    b"0sBxAQkCEPm0Jv2m4uQ7t1ejG9cW2yPBfvt0+P0oqfQ2JwVz5sIF3kgQ8mWtTnlH\r\n"
    b"=Vq4L\r\n"
    b"-----END PGP MESSAGE-----\r\n"
)

ENCRYPTED = (
    b"From: Ana <ana@distro.example>\r\n"
    b"To: embargo@wg.example\r\n"
    b"Subject: ...\r\n"
    b"Message-ID: <3f1c9a2e-7d1b@distro.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
    b' boundary="------------n0P8Qm3yVd0XkWq5bCjT1aRz"\r\n'
    b"\r\n"
    b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
    b"--------------n0P8Qm3yVd0XkWq5bCjT1aRz\r\n"
    b"Content-Type: application/pgp-encrypted\r\n"
    b"Content-Description: PGP/MIME version identification\r\n"
    b"\r\n"
    b"Version: 1\r\n"
    b"\r\n"
    b"--------------n0P8Qm3yVd0XkWq5bCjT1aRz\r\n"
    b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
    b"Content-Description: OpenPGP encrypted message\r\n"
    b'Content-Disposition: inline; filename="encrypted.asc"\r\n'
    b"\r\n" + ARMORED_MESSAGE + b"\r\n"
    b"--------------n0P8Qm3yVd0XkWq5bCjT1aRz--\r\n"
)

# The first part of a signed mail, byte for byte, trailing space and all.
SIGNED_FIRST = (
    b"Content-Type: text/plain; charset=UTF-8\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"\r\n"
    b"status WG-2026-007\r\n"
    b"\r\n"
    b"-- \r\n"
    b"Ana"
)
ARMORED_SIGNATURE = (
    b"-----BEGIN PGP SIGNATURE-----\r\n"
    b"\r\n"
    b"wnsEARYIACMWIQTj3X0bS1mvH2M7Zf7g8x8Yx7m9pAUCZ2Jg3QUDAAAAAAAKCRDg\r\n"
    b"=mQ2a\r\n"
    b"-----END PGP SIGNATURE-----\r\n"
)
SIGNED = (
    b"From: Ana <ana@distro.example>\r\n"
    b"To: embargo@wg.example\r\n"
    b"Subject: status WG-2026-007\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/signed; micalg=pgp-sha256;\r\n"
    b' protocol="application/pgp-signature";\r\n'
    b' boundary="------------sIg4Xb0KqZ9"\r\n'
    b"\r\n"
    b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n"
    b"--------------sIg4Xb0KqZ9\r\n" + SIGNED_FIRST + b"\r\n"
    b"--------------sIg4Xb0KqZ9\r\n"
    b'Content-Type: application/pgp-signature; name="OpenPGP_signature.asc"\r\n'
    b"Content-Description: OpenPGP digital signature\r\n"
    b'Content-Disposition: attachment; filename="OpenPGP_signature.asc"\r\n'
    b"\r\n" + ARMORED_SIGNATURE + b"\r\n"
    b"--------------sIg4Xb0KqZ9--\r\n"
)

CLEARSIGNED = (
    b"From: Ana <ana@distro.example>\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"\r\n"
    b"  -----BEGIN PGP SIGNED MESSAGE-----\r\n"
    b"Hash: SHA256\r\n"
    b"\r\n"
    b"ACK 0123456789abcdef0123456789abcdef\r\n"
    b"-----BEGIN PGP SIGNATURE-----\r\n"
    b"\r\n"
    b"wnsEARYIACM=\r\n"
    b"-----END PGP SIGNATURE-----\r\n"
)

BOUNDARY = b"4XyZ1k2Lmnz9sPq.1764003605/mx.wg.example"


def postfix_dsn(action_block: bytes, *, subject: bytes, intro: bytes) -> bytes:
    """A bounce as Postfix writes it: notification text, delivery report, the
    returned message's headers."""
    sep = b"--" + BOUNDARY + b"\r\n"
    return (
        b"Return-Path: <>\r\n"
        b"Received: by mx.wg.example (Postfix)\r\n"
        b"\tid 4XyZ1k2Lmnz9sPq; Tue, 24 Nov 2026 17:00:05 +0000 (UTC)\r\n"
        b"Date: Tue, 24 Nov 2026 17:00:05 +0000 (UTC)\r\n"
        b"From: MAILER-DAEMON@mx.wg.example (Mail Delivery System)\r\n"
        b"Subject: " + subject + b"\r\n"
        b"To: maild@wg.example\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        b'\tboundary="' + BOUNDARY + b'"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"Message-Id: <20261124170005.4XyZ1k2Lmnz9sPq@mx.wg.example>\r\n"
        b"\r\n"
        b"This is a MIME-encapsulated message.\r\n"
        b"\r\n" + sep + b"Content-Description: Notification\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"\r\n"
        b"This is the mail system at host mx.wg.example.\r\n"
        b"\r\n" + intro + b"\r\n"
        b"\r\n"
        b"                   The mail system\r\n"
        b"\r\n" + sep + b"Content-Description: Delivery report\r\n"
        b"Content-Type: message/delivery-status\r\n"
        b"\r\n"
        b"Reporting-MTA: dns; mx.wg.example\r\n"
        b"X-Postfix-Queue-ID: 4XyZ1k2Lmnz9sPq\r\n"
        b"X-Postfix-Sender: rfc822; maild@wg.example\r\n"
        b"Arrival-Date: Tue, 24 Nov 2026 17:00:01 +0000 (UTC)\r\n"
        b"Original-Envelope-Id: 9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c+2Bretry\r\n"
        b"\r\n"
        + action_block
        + b"\r\n"
        + sep
        + b"Content-Description: Undelivered Message Headers\r\n"
        b"Content-Type: text/rfc822-headers\r\n"
        b"\r\n"
        b"Return-Path: <maild@wg.example>\r\n"
        b"Received: from maild.wg.example (localhost [127.0.0.1])\r\n"
        b"\tby mx.wg.example (Postfix) with ESMTP id 4XyZ1k2Lmnz9sPq\r\n"
        b"\tfor <security@org-a.example>; Tue, 24 Nov 2026 17:00:01 +0000 (UTC)\r\n"
        b"From: Disclosure WG <maild@wg.example>\r\n"
        b"To: security@org-a.example\r\n"
        b"Subject: Embargoed security notice\r\n"
        b"Message-ID:\r\n"
        b" <9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c@wg.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"\r\n"
        b"--" + BOUNDARY + b"--\r\n"
    )


FAILED = postfix_dsn(
    b"Final-Recipient: rfc822; security@org-a.example\r\n"
    b"Original-Recipient: rfc822;security@org-a.example\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.1\r\n"
    b"Remote-MTA: dns; mx.org-a.example\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 <security@org-a.example>: Recipient address\r\n"
    b"    rejected: User unknown in virtual mailbox table\r\n",
    subject=b"Undelivered Mail Returned to Sender",
    intro=b"I'm sorry to have to inform you that your message could not\r\n"
    b"be delivered to one or more recipients. It's attached below.",
)

DELAYED = postfix_dsn(
    b"Final-Recipient: rfc822; security@org-a.example\r\n"
    b"Original-Recipient: rfc822;security@org-a.example\r\n"
    b"Action: delayed\r\n"
    b"Status: 4.4.1\r\n"
    b"Diagnostic-Code: X-Postfix; connect to mx.org-a.example[192.0.2.25]:25:\r\n"
    b"    Connection timed out\r\n"
    b"Will-Retry-Until: Tue, 29 Nov 2026 17:00:01 +0000 (UTC)\r\n",
    subject=b"Delayed Mail (still being retried)",
    intro=b"####################################################################\r\n"
    b"# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n"
    b"####################################################################",
)

DELIVERED = postfix_dsn(
    b"Final-Recipient: rfc822; security@org-a.example\r\n"
    b"Original-Recipient: rfc822;security@org-a.example\r\n"
    b"Action: delivered\r\n"
    b"Status: 2.0.0\r\n"
    b"Remote-MTA: dns; mx.org-a.example\r\n"
    b"Diagnostic-Code: smtp; 250 2.0.0 Ok: queued as 4XzQ0r1Tn8z1\r\n",
    subject=b"Successful Mail Delivery Report",
    intro=b"Your message was successfully delivered to the destination(s)\r\nlisted below.",
)

GLOBAL = (
    b"From: Mail Delivery System <MAILER-DAEMON@mx.wg.example>\r\n"
    b"To: maild@wg.example\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/report; report-type=global-delivery-status;\r\n"
    b' boundary="gds"\r\n'
    b"\r\n"
    b"--gds\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Your message could not be delivered.\r\n"
    b"--gds\r\n"
    b"Content-Type: message/global-delivery-status\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; mx.wg.example\r\n"
    b"Original-Envelope-Id: 0a1b2c3d\r\n"
    b"\r\n"
    b"Final-Recipient: utf-8; s\xc3\xa9curit\xc3\xa9@\xc3\xa9xample.org\r\n"
    b"Original-Recipient: utf-8; s\\x{E9}curit\\x{E9}@\\x{E9}xample.org\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.1\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 bo\xc3\xaete inconnue\r\n"
    b"\r\n"
    b"--gds\r\n"
    b"Content-Type: message/global-headers\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"From: Disclosure WG <maild@wg.example>\r\n"
    b"To: s\xc3\xa9curit\xc3\xa9@\xc3\xa9xample.org\r\n"
    b"Message-ID: <0a1b2c3d@wg.example>\r\n"
    b"\r\n"
    b"--gds--\r\n"
)


# ----------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (ENCRYPTED, Kind.ENCRYPTED),
        (SIGNED, Kind.SIGNED),
        (CLEARSIGNED, Kind.CLEARSIGNED),
        (FAILED, Kind.DSN),
        (GLOBAL, Kind.DSN),
        (b"Subject: status\r\n\r\nstatus\r\n", Kind.OTHER),
        (b"", Kind.OTHER),
        (
            b"Content-Type: multipart/report; report-type=disposition-notification\r\n\r\n",
            Kind.OTHER,
        ),
        (
            b"Content-Type: multipart/signed; protocol=application/pkcs7-signature\r\n\r\n",
            Kind.OTHER,
        ),
        (b"Content-Type: multipart/encrypted; protocol=application/pkcs7-mime\r\n\r\n", Kind.OTHER),
        (b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xff-----BEGIN PGP", Kind.OTHER),
    ],
)
def test_classify(raw: bytes, kind: Kind) -> None:
    """Mail is sorted by its content type and protocol: PGP/MIME encrypted and signed,
    inline clearsigned text, delivery reports; everything else (S/MIME, read receipts,
    plain or undecodable text) is OTHER."""
    assert classify(parse(raw)) is kind


def test_classify_survives_bare_lf() -> None:
    """Mail with bare LF line ends is classified the same way."""
    for raw, kind in [(ENCRYPTED, Kind.ENCRYPTED), (SIGNED, Kind.SIGNED), (FAILED, Kind.DSN)]:
        assert classify(parse(raw.replace(b"\r\n", b"\n"))) is kind


# ---------------------------------------------------------------------- encrypted


def test_pgp_ciphertext_returns_the_armored_block() -> None:
    """The armored PGP MESSAGE of an RFC 3156 encrypted mail, BEGIN to END line."""
    assert pgp_ciphertext(parse(ENCRYPTED)) == ARMORED_MESSAGE


def test_pgp_ciphertext_from_base64_payload() -> None:
    """The armored block may itself be base64-encoded (some clients do this)."""
    raw = ENCRYPTED.replace(
        b'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n' + ARMORED_MESSAGE,
        b'Content-Disposition: inline; filename="encrypted.asc"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(ARMORED_MESSAGE),
    )
    assert pgp_ciphertext(parse(raw)) == ARMORED_MESSAGE


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"Version: 1\r\n", b"Version: 2\r\n", "Version: 1"),
        (
            b"Content-Type: application/pgp-encrypted\r\n",
            b"Content-Type: text/plain\r\n",
            "must be application/pgp-encrypted",
        ),
        (
            b'Content-Type: application/octet-stream; name="encrypted.asc"',
            b"Content-Type: text/plain",
            "must be application/octet-stream",
        ),
        (b"-----BEGIN PGP MESSAGE-----", b"-----BEGIN PGP MASSAGE-----", "no ASCII-armored"),
        (b"-----END PGP MESSAGE-----", b"-----END PGP MASSAGE-----", "no ASCII-armored"),
        (b'protocol="application/pgp-encrypted"', b'protocol="x"', "not multipart/encrypted"),
        (
            b"--------------n0P8Qm3yVd0XkWq5bCjT1aRz--\r\n",
            b"--------------n0P8Qm3yVd0XkWq5bCjT1aRz\r\n\r\nthird\r\n"
            b"--------------n0P8Qm3yVd0XkWq5bCjT1aRz--\r\n",
            "exactly two parts",
        ),
    ],
)
def test_malformed_encrypted_mail_is_refused(old: bytes, new: bytes, reason: str) -> None:
    """Anything but the RFC 3156 shape (version part, octet-stream armored message,
    nothing else) is a MimeError saying what is wrong."""
    assert old in ENCRYPTED
    with pytest.raises(MimeError, match=reason):
        pgp_ciphertext(parse(ENCRYPTED.replace(old, new)))


# -------------------------------------------------------------------------- signed


def test_signed_parts_returns_exact_first_part_and_signature() -> None:
    """The signed bytes are the first part exactly (up to, not including, the CRLF before
    the delimiter), the signature is the armored block, and the part is parsed."""
    signed, signature, part = signed_parts(parse(SIGNED))
    assert signed == SIGNED_FIRST
    assert signature == ARMORED_SIGNATURE
    assert part.text() == "status WG-2026-007\r\n\r\n-- \r\nAna"


def test_signed_parts_canonicalises_bare_lf() -> None:
    """A signed mail that arrived with bare LF line ends yields the CRLF bytes the sender
    signed (RFC 3156 section 5), trailing whitespace kept."""
    signed, _, part = signed_parts(parse(SIGNED.replace(b"\r\n", b"\n")))
    assert signed == SIGNED_FIRST
    assert part.text() == "status WG-2026-007\n\n-- \nAna"


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"application/pgp-signature; name", b"application/octet-stream; name", "second part"),
        (b"-----BEGIN PGP SIGNATURE-----", b"BEGIN PGP SIGNATURE", "no ASCII-armored"),
        (b'protocol="application/pgp-signature"', b"protocol=x", "not multipart/signed"),
        (b"--------------sIg4Xb0KqZ9--\r\n", b"", "closing delimiter"),
    ],
)
def test_malformed_signed_mail_is_refused(old: bytes, new: bytes, reason: str) -> None:
    """A signed mail that is not the RFC 3156 shape is a MimeError."""
    assert old in SIGNED
    with pytest.raises(MimeError, match=reason):
        signed_parts(parse(SIGNED.replace(old, new)))


def test_signed_with_one_part_is_refused() -> None:
    """multipart/signed needs the signed part and the signature part."""
    raw = (
        b'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary=s\r\n'
        b"\r\n--s\r\n\r\nunsigned\r\n--s--\r\n"
    )
    with pytest.raises(MimeError, match="exactly two parts"):
        signed_parts(parse(raw))


# ---------------------------------------------------------------------------- DSNs


def test_postfix_failure_dsn() -> None:
    """A Postfix bounce gives the envelope id (xtext decoded), the returned Message-ID
    (folded in the original) and the failed recipient with status and diagnostic."""
    report = parse_dsn(parse(FAILED))
    assert report.envid == "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c+retry"
    assert report.message_id == "<9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c@wg.example>"
    assert report.recipients == (
        DsnRecipient(
            final_recipient="security@org-a.example",
            original_recipient="security@org-a.example",
            action="failed",
            status="5.1.1",
            diagnostic="550 5.1.1 <security@org-a.example>: Recipient address rejected: "
            "User unknown in virtual mailbox table",
        ),
    )


def test_postfix_delayed_dsn() -> None:
    """A delay warning reports action `delayed`, a 4.x.x status and the reason."""
    (recipient,) = parse_dsn(parse(DELAYED)).recipients
    assert (recipient.action, recipient.status) == ("delayed", "4.4.1")
    assert recipient.diagnostic == (
        "connect to mx.org-a.example[192.0.2.25]:25: Connection timed out"
    )


def test_postfix_delivered_dsn() -> None:
    """A success notice reports action `delivered` with status 2.0.0."""
    report = parse_dsn(parse(DELIVERED))
    (recipient,) = report.recipients
    assert (recipient.action, recipient.status) == ("delivered", "2.0.0")
    assert recipient.diagnostic == "250 2.0.0 Ok: queued as 4XzQ0r1Tn8z1"
    assert report.message_id == "<9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c@wg.example>"


def test_dsn_with_bare_lf() -> None:
    """A DSN with bare LF line ends reads the same."""
    assert parse_dsn(parse(FAILED.replace(b"\r\n", b"\n"))) == parse_dsn(parse(FAILED))


def test_global_dsn_with_utf8_addresses() -> None:
    """An RFC 6533 global DSN gives UTF-8 addresses, raw or \\x{..} escaped, and the
    Message-ID from message/global-headers."""
    report = parse_dsn(parse(GLOBAL))
    assert report.envid == "0a1b2c3d"
    assert report.message_id == "<0a1b2c3d@wg.example>"
    (recipient,) = report.recipients
    assert recipient.final_recipient == "sécurité@éxample.org"
    assert recipient.original_recipient == "sécurité@éxample.org"
    assert recipient.diagnostic == "550 5.1.1 boîte inconnue"


def test_dsn_with_several_recipients_and_no_returned_message() -> None:
    """Every recipient block with an Action is reported, in order; a report without
    envelope id or returned headers has None for both."""
    raw = (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n"
        b"--r\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; relay.example\r\n\r\n"
        b"Final-Recipient: rfc822; <a@one.example>\r\nAction: Failed\r\n"
        b"Status: 5.2.2 (mailbox full)\r\n\r\n\r\n"
        b"Final-Recipient: rfc822; b@two.example\r\nAction: relayed\r\nStatus: 2.0.0\r\n"
        b"--r--\r\n"
    )
    report = parse_dsn(parse(raw))
    assert report.envid is None and report.message_id is None
    assert [(r.final_recipient, r.action, r.status) for r in report.recipients] == [
        ("a@one.example", "failed", "5.2.2"),
        ("b@two.example", "relayed", "2.0.0"),
    ]
    assert report.recipients[1].original_recipient is None
    assert report.recipients[1].diagnostic is None


def test_long_diagnostic_is_one_trimmed_line() -> None:
    """A long, multi-line Diagnostic-Code becomes one line of at most 300 characters."""
    long = b"x" * 250
    raw = FAILED.replace(
        b"    rejected: User unknown in virtual mailbox table\r\n",
        b"    " + long + b"\r\n\t" + long + b"\r\n",
    )
    (recipient,) = parse_dsn(parse(raw)).recipients
    assert recipient.diagnostic is not None
    assert len(recipient.diagnostic) == 300 and "\n" not in recipient.diagnostic


def test_dsn_without_status_part_or_action_is_refused() -> None:
    """A report with no delivery-status part, or with no recipient Action, is a
    MimeError; so is mail that is no DSN at all."""
    no_status = FAILED.replace(b"Content-Type: message/delivery-status", b"Content-Type: text/x")
    with pytest.raises(MimeError, match="no delivery-status part"):
        parse_dsn(parse(no_status))
    no_action = FAILED.replace(b"Action: failed\r\n", b"")
    with pytest.raises(MimeError, match="no recipient with an Action"):
        parse_dsn(parse(no_action))
    with pytest.raises(MimeError, match="not a multipart/report"):
        parse_dsn(parse(SIGNED))


def test_dsn_with_unreadable_returned_headers_still_reports() -> None:
    """Returned headers that are not valid header fields lose only the Message-ID."""
    raw = FAILED.replace(b"Return-Path: <maild@wg.example>\r\n", b"garbage line\r\n")
    report = parse_dsn(parse(raw))
    assert report.message_id is None
    assert report.recipients[0].action == "failed"


# ------------------------------------------------------------------------ commands


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("status", Command(Verb.STATUS)),
        ("Status WG-2026-007", Command(Verb.STATUS, "WG-2026-007")),
        ("list", Command(Verb.LIST)),
        ("  LIST  ", Command(Verb.LIST)),
        ("cancel WG-2026-007", Command(Verb.CANCEL, "WG-2026-007")),
        (
            "reschedule WG-2026-007 2026-12-08T17:00:00+01:00",
            Command(
                Verb.RESCHEDULE,
                "WG-2026-007",
                disclosure=datetime(2026, 12, 8, 17, tzinfo=timezone(timedelta(hours=1))),
            ),
        ),
        (
            "reschedule wg.7 2026-12-08T16:00:00Z",
            Command(Verb.RESCHEDULE, "wg.7", disclosure=datetime(2026, 12, 8, 16, tzinfo=UTC)),
        ),
        (
            "disclose-now WG-2026-007 exploit  published on a public list",
            Command(Verb.DISCLOSE_NOW, "WG-2026-007", reason="exploit  published on a public list"),
        ),
        ("Disclose-Now x_1 leaked", Command(Verb.DISCLOSE_NOW, "x_1", reason="leaked")),
        ("approve WG-2026-007", Command(Verb.APPROVE, "WG-2026-007")),
        ("help", Command(Verb.HELP)),
        ("HELP", Command(Verb.HELP)),
    ],
)
def test_every_verb_parses(line: str, command: Command) -> None:
    """Each verb of the command grammar, case-insensitive, with its arguments."""
    assert parse_command(line) == command


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cancel", "cancel needs: cancel ID; got 0 arguments"),
        ("cancel A B", "cancel needs: cancel ID; got 2 arguments"),
        ("approve", "approve needs: approve ID"),
        ("status A B", "status needs: status [ID]"),
        ("list all", "list needs: list (no arguments); got 1 argument"),
        ("help me", "help needs: help (no arguments)"),
        (
            "reschedule WG-1",
            "reschedule needs: reschedule ID DISCLOSURE (ISO 8601 with UTC offset, "
            "like 2026-12-08T17:00:00+01:00)",
        ),
        ("reschedule WG-1 2026-12-08T17:00:00", "has no time zone"),
        ("reschedule WG-1 next-tuesday", "is not an ISO 8601 date and time"),
        ("reschedule WG-1 2026-12-08T17:00:00Z later", "got 3 arguments"),
        ("disclose-now WG-1", "disclose-now needs: disclose-now ID REASON"),
        ("disclose-now", "the advisory id and a reason are required"),
        ("cancel ../etc", "is not an advisory id"),
        ("cancel -rf", "is not an advisory id"),
        ("approve " + "a" * 65, "is not an advisory id"),
        ("disclose-now WG/1 leaked", "is not an advisory id"),
    ],
)
def test_bad_arguments_say_what_is_expected(line: str, expected: str) -> None:
    """A known verb with wrong, missing or extra arguments is a CommandError whose text
    shows the expected form."""
    with pytest.raises(CommandError) as caught:
        parse_command(line)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "line",
    ["", "   ", "Re: cancel WG-1", "Fwd: status", "statuses", "please cancel WG-1", "+++"],
)
def test_non_commands_are_none(line: str) -> None:
    """A line whose first word is not a verb is no command (Re:/Fwd: are not stripped)."""
    assert parse_command(line) is None


def test_subject_command_comes_first() -> None:
    """A command in the Subject wins over one in the body."""
    assert find_command("cancel WG-1", "status WG-2\n") == Command(Verb.CANCEL, "WG-1")


def test_body_first_line_when_subject_is_no_command() -> None:
    """Without a command in the Subject, the body's first non-empty line is read; later
    lines are not."""
    assert find_command("Re: my advisory", "\n  \napprove WG-1\ncancel WG-1\n") == Command(
        Verb.APPROVE, "WG-1"
    )
    assert find_command(None, "list\n") == Command(Verb.LIST)
    assert find_command("hello", "Hi all,\ncancel WG-1\n") is None
    assert find_command(None, "") is None


def test_bad_command_in_subject_is_an_error() -> None:
    """A malformed command in the Subject is reported, not skipped in favour of the body."""
    with pytest.raises(CommandError, match="cancel needs"):
        find_command("cancel", "status\n")


def test_is_advisory() -> None:
    """A body is an advisory file when its first non-empty line is `+++`."""
    assert is_advisory('+++\ntitle = "x"\n+++\nbody\n')
    assert is_advisory("\ufeff\n\n  +++  \r\nid = 1\n")
    assert not is_advisory("status\n+++\n")
    assert not is_advisory("")
    assert not is_advisory("++++\n")


# ------------------------------------------------------------------ acknowledgements

TOKEN = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def test_ack_tokens_in_quoted_replies() -> None:
    """Tokens are found on their own line and in quoted reply lines, each once, in order."""
    text = f"ACK {OTHER}\n\nOn Tue, maild wrote:\n> Please acknowledge\n>     ACK {TOKEN}\n"
    assert ack_tokens(text + f"> > ACK {OTHER}\n") == [OTHER, TOKEN]


@pytest.mark.parametrize(
    "text",
    [
        f"ACK {TOKEN[:-1]}",  # 31 hex digits
        f"ACK {TOKEN}0",  # 33
        f"ACK {TOKEN.upper()}",
        f"ack {TOKEN}",
        f"ACK  {TOKEN}",
        f"NACK {TOKEN}",
        f"ACK {TOKEN[:-1]}g",
    ],
)
def test_malformed_ack_tokens_are_not_found(text: str) -> None:
    """Only `ACK ` and exactly 32 lowercase hex digits, as the notice prints it, count."""
    assert ack_tokens(text) == []
    assert ACK_TOKEN.search(text) is None
