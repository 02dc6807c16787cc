"""Mail as WG members, organisations and smarthosts write it to maild, made
with real gpg in a throwaway client keyring (never maild's own)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from maild.adapters.gpg import Keyring
from tests.keyfactory import raw_gpg, temp_keyring
from tests.world import World

CRLF = b"\r\n"


@contextmanager
def correspondent(world: World) -> Iterator[Correspondent]:
    """A client holding every test org/member secret key and maild's public key."""
    with temp_keyring() as ring, Keyring(world.keys.home) as all_keys:
        secrets = ring.home / "all.asc"
        secrets.write_bytes(raw_gpg(all_keys, "--armor", "--export-secret-keys"))
        raw_gpg(ring, "--import", str(secrets))
        with Keyring(world.root / "state" / "gnupg") as identity:
            ring.import_key(identity.export_public(world.identity))
        yield Correspondent(ring, world)


class Correspondent:
    def __init__(self, ring: Keyring, world: World) -> None:
        self.ring = ring
        self.world = world

    def fpr(self, name: str) -> str:
        return self.world.keys.fpr[name]

    def gpg(self, args: Sequence[str], data: bytes, created: datetime | None = None) -> bytes:
        command = ["gpg", "--homedir", str(self.ring.home), "--batch", "--yes", "--no-tty"]
        command += ["--pinentry-mode", "loopback", "--passphrase", "", "--trust-model", "always"]
        if created is not None:
            command += ["--faked-system-time", created.astimezone(UTC).strftime("%Y%m%dT%H%M%S")]
        proc = subprocess.run([*command, *args], input=data, capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"gpg {args[:3]} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout

    def encrypt(
        self,
        data: bytes,
        *,
        to: str | None = None,
        sign_as: str | None = None,
        created: datetime | None = None,
        extra: Sequence[str] = (),
    ) -> bytes:
        """Armored; to maild's identity key unless `to` names another key."""
        args = ["--armor", "--encrypt", "--recipient", to or self.world.identity, *extra]
        if sign_as is not None:
            args += ["--sign", "--local-user", self.fpr(sign_as) + "!"]
        return self.gpg(args, data, created)

    def detach_sign(self, data: bytes, sign_as: str, created: datetime | None = None) -> bytes:
        args = ["--armor", "--detach-sign", "--local-user", self.fpr(sign_as) + "!"]
        return self.gpg(args, data, created)

    def clearsign(self, text: bytes, sign_as: str) -> bytes:
        return self.gpg(["--clearsign", "--local-user", self.fpr(sign_as) + "!"], text)


def payload(
    body: str, *, subject: str | None = None, attachments: Sequence[tuple[str, bytes]] = ()
) -> bytes:
    """The MIME entity a member signs and encrypts (RFC 9788: Subject inside)."""
    head = [b"MIME-Version: 1.0"]
    if subject is not None:
        head.append(b"Subject: " + subject.encode())
    text = body.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    if not attachments:
        head.append(b'Content-Type: text/plain; charset="utf-8"')
        head.append(b"Content-Transfer-Encoding: 8bit")
        return CRLF.join(head) + CRLF + CRLF + text
    boundary = b"inner-boundary-7"
    head.append(b'Content-Type: multipart/mixed; boundary="' + boundary + b'"')
    parts = [b'Content-Type: text/plain; charset="utf-8"' + CRLF + CRLF + text]
    for name, data in attachments:
        encoded = base64.encodebytes(data).replace(b"\n", CRLF)
        parts.append(
            b"Content-Type: text/x-patch"
            + CRLF
            + b'Content-Disposition: attachment; filename="'
            + name.encode()
            + b'"'
            + CRLF
            + b"Content-Transfer-Encoding: base64"
            + CRLF
            + CRLF
            + encoded
        )
    return multipart(head, boundary, parts)


def multipart(head: Sequence[bytes], boundary: bytes, parts: Sequence[bytes]) -> bytes:
    out = CRLF.join(head) + CRLF + CRLF
    for part in parts:
        out += b"--" + boundary + CRLF + part + CRLF
    return out + b"--" + boundary + b"--" + CRLF


def envelope_headers(subject: str = "...", sender: str = "m@wg.example") -> list[bytes]:
    return [
        b"From: " + sender.encode(),
        b"To: embargo@maild.example",
        b"Subject: " + subject.encode(),
        b"Message-ID: <" + base64.b32encode(os.urandom(10)).lower() + b"@wg.example>",
        b"MIME-Version: 1.0",
    ]


def pgp_mime(armored: bytes, **headers: str) -> bytes:
    """RFC 3156 multipart/encrypted around an armored message."""
    boundary = b"outer-enc-1"
    head = [
        *envelope_headers(**headers),
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
        b'boundary="' + boundary + b'"',
    ]
    return multipart(
        head,
        boundary,
        [
            b"Content-Type: application/pgp-encrypted" + CRLF + CRLF + b"Version: 1" + CRLF,
            b"Content-Type: application/octet-stream" + CRLF + CRLF + armored.replace(b"\n", CRLF),
        ],
    )


def signed_mime(part: bytes, signature: bytes, head: Sequence[bytes] | None = None) -> bytes:
    """RFC 3156 multipart/signed: `part` (exact bytes) and its detached signature."""
    boundary = b"signed-bnd-2"
    headers = [
        *(envelope_headers() if head is None else head),
        b'Content-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; '
        b'boundary="' + boundary + b'"',
    ]
    return multipart(
        headers,
        boundary,
        [
            part,
            b"Content-Type: application/pgp-signature"
            + CRLF
            + CRLF
            + signature.replace(b"\n", CRLF),
        ],
    )


def member_mail(
    who: Correspondent,
    body: str,
    *,
    sign_as: str = "member",
    subject: str | None = None,
    attachments: Sequence[tuple[str, bytes]] = (),
    created: datetime | None = None,
) -> bytes:
    """A member's mail as it should be: signed and encrypted in one (RFC 3156 6.2)."""
    inner = payload(body, subject=subject, attachments=attachments)
    return pgp_mime(who.encrypt(inner, sign_as=sign_as, created=created))


# -- building blocks for hostile and unusual mail -------------------------------------


def text_part(body: str | bytes, charset: str = "utf-8") -> bytes:
    """A text/plain MIME part (8bit), its lines made CRLF."""
    raw = body.encode() if isinstance(body, str) else body
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    head = b'Content-Type: text/plain; charset="' + charset.encode() + b'"'
    return head + CRLF + b"Content-Transfer-Encoding: 8bit" + CRLF + CRLF + raw


def rfc822_part(message: bytes) -> bytes:
    """A forwarded message: a message/rfc822 part holding `message` as it is."""
    head = b"Content-Type: message/rfc822" + CRLF + b"Content-Disposition: inline"
    return head + CRLF + CRLF + message


def mixed(
    parts: Sequence[bytes],
    head: Sequence[bytes] = (b"MIME-Version: 1.0",),
    boundary: bytes = b"mixed-bnd-3",
) -> bytes:
    """multipart/mixed of `parts` (each a complete MIME part), after the fields in `head`."""
    fields = [*head, b'Content-Type: multipart/mixed; boundary="' + boundary + b'"']
    return multipart(fields, boundary, parts)


def plain_mail(body: bytes, **headers: str) -> bytes:
    """A complete text/plain mail with ordinary outer headers (no OpenPGP at all)."""
    head = [*envelope_headers(**headers), b'Content-Type: text/plain; charset="utf-8"']
    return CRLF.join(head) + CRLF + CRLF + body.replace(b"\r\n", b"\n").replace(b"\n", CRLF)


def signed_entity(
    who: Correspondent, part: bytes, sign_as: str, created: datetime | None = None
) -> bytes:
    """RFC 3156 multipart/signed entity (no envelope headers) over `part`, as the inner
    payload of the signed-then-encrypted form (RFC 3156 section 6.1)."""
    signature = who.detach_sign(part, sign_as, created)
    return signed_mime(part, signature, head=[b"MIME-Version: 1.0"])


def signed_then_encrypted(
    who: Correspondent,
    part: bytes,
    sign_as: str,
    *,
    created: datetime | None = None,
    **headers: str,
) -> bytes:
    """A member-style mail in the RFC 3156 section 6.1 form: a detached signature made
    at `created` (gpg's faked time), then encrypted now to maild (unsigned outside)."""
    return pgp_mime(who.encrypt(signed_entity(who, part, sign_as, created)), **headers)


# -- OpenPGP packets, as gpg itself lists them ------------------------------------------


@dataclass(frozen=True)
class Packet:
    """One top-level packet of a binary OpenPGP message, from `gpg --list-packets`."""

    tag: int
    start: int
    end: int  # a data packet in partial lengths: the end of its header (gpg lists no length)
    keyid: str | None  # a public-key encrypted session key's recipient (16 hex), else None
    partial: bool = False  # its body is in partial lengths (chunks)


_PACKET_LINE = re.compile(r"# off=(\d+) ctb=\w+ tag=(\d+) hlen=(\d+) plen=(\d+)")
_KEYID = re.compile(r":pubkey enc packet: version \d+, algo \d+, keyid ([0-9A-F]{16})")


def packets(ring: Keyring, binary: bytes) -> list[Packet]:
    """The top-level packets of `binary` as gpg lists them without decrypting anything."""
    command = ["gpg", "--homedir", str(ring.home), "--batch", "--list-only", "--list-packets"]
    proc = subprocess.run(command, input=binary, capture_output=True, timeout=60)
    found: list[Packet] = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        header = _PACKET_LINE.fullmatch(line.split(" partial")[0].split(" new-ctb")[0])
        if header is not None:
            start, tag, hlen, plen = (int(group) for group in header.groups())
            found.append(Packet(tag, start, start + hlen + plen, None, " partial" in line))
        elif (keyid := _KEYID.match(line.strip())) is not None and found:
            found[-1] = replace(found[-1], keyid=keyid.group(1))
    return found


def dearmored(ring: Keyring, armored: bytes) -> bytes:
    return raw_gpg(ring, "--dearmor", data=armored)


def armored(ring: Keyring, binary: bytes) -> bytes:
    """`binary` ASCII-armored as a PGP MESSAGE (gpg --enarmor, its header renamed)."""
    return raw_gpg(ring, "--enarmor", data=binary).replace(b"ARMORED FILE", b"MESSAGE")
