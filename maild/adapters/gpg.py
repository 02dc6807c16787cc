"""OpenPGP adapter: one gnupg home per `Keyring`, driven through python-gnupg and the gpg binary.

Rules this module keeps:

* keys are addressed by their full 40-hex fingerprint only, and every answer from gpg is
  checked against the fingerprint that was asked for;
* gpg's own `valid`/`ok` flags are not trusted as authorisation: revocation and expiry are
  computed here from the --with-colons fields, against the `now` the caller passes in;
* data goes to gpg as bytes, one gpg process per operation; key listings are cached per
  `Keyring` (see its docstring), so in the steady state a check-then-act call such as
  `sign_encrypt` runs exactly one gpg process;
* signing and verifying run the gpg binary with a private --status-fd pipe, and every
  signature made is checked, from gpg's status lines, to come from exactly the key asked for;
* `GpgError` messages are one line and never contain key material or plaintext.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import logging
import os
import re
import selectors
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import gnupg

from maild.adapters.files import make_private_dirs
from maild.domain.orgs import HEX40

__all__ = ["FolderImport", "GpgError", "KeyHealth", "Keyring", "Signature"]

# python-gnupg logs the first 256 bytes of key data it is handed at DEBUG level (scan and
# import). That would put a mistakenly dropped secret key into the logs, so keep it quieter.
logging.getLogger("gnupg").setLevel(logging.INFO)

_PUBLIC_ARMOR_RE = re.compile(rb"^-----BEGIN PGP PUBLIC KEY BLOCK-----\r?$", re.MULTILINE)
_SECRET_ARMOR = b"-----BEGIN PGP PRIVATE KEY BLOCK-----"
_REVOCS_DIR = "openpgp-revocs.d"
_GPG_TIMEOUT = 60.0
_SHA256 = "8"  # OpenPGP hash algorithm id, as gpg's status lines give it
# Status keywords that each close the report on one signature (gpg doc/DETAILS).
_SIG_VERDICTS = frozenset({"GOODSIG", "BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG"})
_GPGCONF_TIMEOUT = 10.0
_MAX_MESSAGE = 200
# The most plaintext decrypt_signed and decrypt let gpg write (--max-output): compressed data
# expands without bound (a few hundred bytes of ciphertext can hold gigabytes of zeros),
# and the whole output is held in memory. Mail is at most [intake] max_size (10 MiB).
_MAX_PLAINTEXT = 64 * 1024 * 1024
# On every gpg run that uses keys (not key making): gpg otherwise reads and rewrites
# `random_seed` in the home under an fcntl lock, and a run that finds it locked sleeps
# before it tries again (0.25 s, then 1.25 s...). Two runs at once (the pool's two
# threads) then took 2.8 to 8.7 ms per notice instead of a steady 2.5-2.7 ms
# (bench/README.md). The seed file only spares gathering entropy at start; gpg takes
# its randomness from the kernel either way.
_RUN_OPTIONS = ("--no-random-seed-file",)
_MIN_CHUNK = 512  # the least a partial body length may give (RFC 9580 section 4.2.1.4)
_BEGIN_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
_END_MESSAGE = b"-----END PGP MESSAGE-----"
_ARMOR_HEADER = re.compile(rb"[!-9;-~]+:(?: [^\x00-\x1f\x7f]*)?")
_ARMOR_CHECKSUM = re.compile(rb"=[A-Za-z0-9+/]{4}")


class GpgError(Exception):
    """A gpg operation failed or was refused; the message is one human-readable line."""


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 3] + "..."


def _normalise_fpr(fingerprint: str) -> str | None:
    """Upper-cased fingerprint if it is a full 40-hex fingerprint, else None."""
    candidate = fingerprint.upper()
    return candidate if HEX40.fullmatch(candidate) else None


def _require_aware(when: datetime, name: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return when.astimezone(UTC)


def _parse_gpg_time(value: object) -> datetime | None:
    """A --with-colons time field: '' means none; epoch seconds or ISO 'YYYYMMDDTHHMMSS'."""
    text = str(value or "").strip()
    if not text or text == "unavailable":
        return None
    try:
        if "T" in text:
            return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        return datetime.fromtimestamp(int(text), UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise GpgError(f"gpg returned an unreadable time field {text[:20]!r}") from exc


@dataclass(frozen=True)
class KeyHealth:
    """What this keyring knows about one fingerprint, judged at a given time."""

    fingerprint: str
    present: bool
    revoked: bool
    expired: bool
    can_encrypt: bool
    expires_at: datetime | None
    uids: tuple[str, ...]
    has_secret: bool

    def problem(self) -> str | None:
        """None when the key is usable for encryption, else one short phrase saying why not."""
        if HEX40.fullmatch(self.fingerprint) is None:
            return "not a full 40-hex fingerprint"
        if not self.present:
            return "no key with this fingerprint in the keys folder"
        if self.revoked:
            return "key is revoked"
        if self.expired:
            if self.expires_at is None:
                return "key expired"
            return f"key expired on {self.expires_at.astimezone(UTC).date().isoformat()}"
        if not self.can_encrypt:
            return "key cannot encrypt (sign-only)"
        return None

    def expires_within(self, now: datetime, days: int) -> bool:
        """True if the key stops being usable no later than `days` days after `now`.

        A key that has already expired counts (it expired "within" the window); a key that
        never expires, or is not present, does not.
        """
        if not self.present or self.expires_at is None:
            return False
        return self.expires_at <= _require_aware(now, "now") + timedelta(days=days)


@dataclass(frozen=True)
class FolderImport:
    """Result of importing every *.asc file of a keys folder."""

    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @cached_property
    def fingerprints(self) -> frozenset[str]:
        # Computed once: asked for every notice of every submission.
        return frozenset(fpr for fprs in self.files.values() for fpr in fprs)


@dataclass(frozen=True)
class _Component:
    """One key or subkey line of a listing."""

    caps: str
    validity: str
    expires: datetime | None


def _component(info: Mapping[str, Any]) -> _Component:
    return _Component(
        caps=str(info.get("cap") or ""),
        validity=str(info.get("trust") or ""),
        expires=_parse_gpg_time(info.get("expires")),
    )


def _latest(expiries: Iterable[datetime | None]) -> datetime | None:
    """Latest of the expiries, None (never) if any of them never expires."""
    latest: datetime | None = None
    for when in expiries:
        if when is None:
            return None
        latest = when if latest is None or when > latest else latest
    return latest


def _assess(fingerprint: str, key: Mapping[str, Any], has_secret: bool, now: datetime) -> KeyHealth:
    """Compute health from one python-gnupg list_keys entry, against `now`."""
    primary = _component(key)
    subkey_info: Mapping[str, Mapping[str, Any]] = key.get("subkey_info") or {}
    subs = [_component(info) for info in subkey_info.values()]

    def is_revoked(c: _Component) -> bool:
        return c.validity == "r"

    def is_expired(c: _Component) -> bool:
        # Fail closed: gpg's own verdict (against the real clock) also counts.
        return c.validity == "e" or (c.expires is not None and c.expires <= now)

    # Lower-case letters in the cap field are that key's own capabilities; the upper-case
    # ones on the primary line are gpg's summary for the whole key, which we do not use.
    encryptors = [c for c in [primary, *subs] if "e" in c.caps]
    live = [c for c in encryptors if not is_revoked(c)]
    usable = [c for c in live if not is_expired(c) and c.validity not in ("i", "d")]

    primary_revoked = is_revoked(primary)
    primary_expired = is_expired(primary)
    revoked = primary_revoked or (bool(encryptors) and not live)
    expired = primary_expired or (bool(live) and all(is_expired(c) for c in live))
    can_encrypt = not primary_revoked and not primary_expired and bool(usable)

    # Effective expiry: the primary's, or earlier if the encryption subkeys run out first.
    expiries = [primary.expires]
    if usable or live:
        expiries.append(_latest(c.expires for c in (usable or live)))
    known = [when for when in expiries if when is not None]
    expires_at = min(known) if known else None

    uids = tuple(str(uid) for uid in key.get("uids") or ())
    return KeyHealth(
        fingerprint=fingerprint,
        present=True,
        revoked=revoked,
        expired=expired,
        can_encrypt=can_encrypt,
        expires_at=expires_at,
        uids=uids,
        has_secret=has_secret,
    )


def _encryption_key_ids(key: Mapping[str, Any]) -> frozenset[str]:
    """Key ids of the encryption-capable (sub)keys of one python-gnupg list_keys entry."""
    ids = set()
    # Lower-case cap letters are the component's own capabilities (see _assess).
    if "e" in str(key.get("cap") or ""):
        ids.add(str(key.get("keyid") or "").upper())
    subkey_info: Mapping[str, Mapping[str, Any]] = key.get("subkey_info") or {}
    for keyid, info in subkey_info.items():
        if "e" in str(info.get("cap") or ""):
            ids.add(str(keyid).upper())
    return frozenset(ids)


def _instants(key: Mapping[str, Any]) -> tuple[datetime, ...]:
    """The instants at which `_assess`'s verdict on this listing can change: the
    expiries of the key and its subkeys (its only use of `now` is `expires <= now`)."""
    subkey_info: Mapping[str, Mapping[str, Any]] = key.get("subkey_info") or {}
    found = {_parse_gpg_time(info.get("expires")) for info in [key, *subkey_info.values()]}
    return tuple(sorted(when for when in found if when is not None))


@dataclass(frozen=True)
class _Listing:
    """What gpg listed for one present fingerprint: its public entry and secret presence.

    Verdicts (expired, revoked...) are judged from it against each call's `now`. As
    `_assess` uses `now` only to compare it with the components' expiries, the verdict
    is the same for every `now` between two consecutive expiry instants: `verdicts`
    keeps one per such interval (keyed by how many of the instants are at or before
    `now`), so a key is assessed once per interval, not once per call. The cache goes
    with the listing (dropped by `refresh()`).
    """

    key: Mapping[str, Any]
    has_secret: bool
    verdicts: dict[int, KeyHealth] = field(default_factory=dict, compare=False)

    @cached_property
    def instants(self) -> tuple[datetime, ...]:
        return _instants(self.key)

    def assess(self, fpr: str, now: datetime) -> KeyHealth:
        """`_assess(fpr, key, has_secret, now)`, computed once per interval of `now`."""
        interval = bisect.bisect_right(self.instants, now)  # instants <= now
        found = self.verdicts.get(interval)
        if found is None:
            found = self.verdicts.setdefault(interval, _assess(fpr, self.key, self.has_secret, now))
        return found


def _absent(fingerprint: str) -> KeyHealth:
    return KeyHealth(
        fingerprint=fingerprint,
        present=False,
        revoked=False,
        expired=False,
        can_encrypt=False,
        expires_at=None,
        uids=(),
        has_secret=False,
    )


def _stderr_reason(stderr: str) -> str:
    """The last human 'gpg: ...' line of gpg's stderr (never data), for error messages."""
    lines = [line for line in stderr.splitlines() if line.startswith("gpg: ")]
    return _one_line(lines[-1][5:]) if lines else "no detail from gpg"


# ------------------------------------------------------------ status and packets


@dataclass(frozen=True)
class _Status:
    """One '[GNUPG:] KEYWORD ARGS...' line of gpg's machine-readable status output."""

    keyword: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class _Outcome:
    """What one gpg run gave back: exit code, output bytes, status lines, stderr text."""

    returncode: int
    output: bytes
    status: tuple[_Status, ...]
    stderr: str

    def lines(self, keyword: str) -> list[tuple[str, ...]]:
        return [line.args for line in self.status if line.keyword == keyword]

    def has(self, keyword: str) -> bool:
        return any(line.keyword == keyword for line in self.status)

    def reason(self) -> str:
        return _stderr_reason(self.stderr)


def _parse_status(raw: bytes) -> tuple[_Status, ...]:
    parsed: list[_Status] = []
    # Split on LF only: gpg ends status lines with LF, and a user id quoted in one may hold
    # other characters str.splitlines() would treat as line breaks (U+2028, NEL...).
    for line in raw.decode("utf-8", "replace").split("\n"):
        if not line.startswith("[GNUPG:] "):
            continue
        keyword, *args = line[len("[GNUPG:] ") :].split(" ")
        parsed.append(_Status(keyword, tuple(args)))
    return tuple(parsed)


_CHUNK = 65536  # bytes per read or write of a gpg pipe


class _TimedOut(Exception):
    pass


def _exchange(
    proc: subprocess.Popen[bytes], data: bytes, status_fd: int, timeout: float
) -> tuple[bytes, bytes, bytes]:
    """Feed `data` to gpg's stdin while reading its stdout, stderr and status pipe
    to their ends, all from the calling thread, then wait for it to exit; returns
    (stdout, stderr, status). _TimedOut if that takes over `timeout` seconds.

    Popen.communicate writes its input 512 bytes at a time (and status lines would
    need a thread of their own beside it); here stdin is non-blocking and every
    pipe moves up to 64 KiB per system call, so a 100 KB message costs a few
    calls, each of which gives the GIL back to the event loop's thread."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    stdin_fd = proc.stdin.fileno()
    chunks: dict[int, list[bytes]] = {
        proc.stdout.fileno(): [],
        proc.stderr.fileno(): [],
        status_fd: [],
    }
    view, offset = memoryview(data), 0
    with selectors.PollSelector() as selector:
        if data:
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        for fd in chunks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _TimedOut
            for key, _ in selector.select(remaining):
                if key.fd == stdin_fd:
                    try:
                        offset += os.write(stdin_fd, view[offset : offset + _CHUNK])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # gpg stopped reading: what it said is read on
                        offset = len(data)
                    if offset >= len(data):
                        selector.unregister(stdin_fd)
                        proc.stdin.close()
                elif chunk := os.read(key.fd, _CHUNK):
                    chunks[key.fd].append(chunk)
                else:
                    selector.unregister(key.fd)
    try:
        proc.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        raise _TimedOut from None
    return (
        b"".join(chunks[proc.stdout.fileno()]),
        b"".join(chunks[proc.stderr.fileno()]),
        b"".join(chunks[status_fd]),
    )


@dataclass(frozen=True)
class Signature:
    """One valid signature as gpg reported it."""

    fingerprint: str  # the signer's primary key
    signed_at: datetime
    sig_id: str  # gpg's SIG_ID: the same for the same signature, for replay detection


def _decrypted(outcome: _Outcome) -> bool:
    """gpg decrypted a public-key encrypted message whole, with its integrity
    check (whatever it said of a signature inside)."""
    return (
        outcome.has("DECRYPTION_OKAY")
        and outcome.has("ENC_TO")
        and not outcome.has("DECRYPTION_FAILED")
        and not outcome.has("BADMDC")
        and not outcome.has("NEED_PASSPHRASE_SYM")
    )


def _signature_of(outcome: _Outcome) -> Signature | None:
    """The one valid signature gpg reported, with its time and id, else None
    (see _signer_of; a good signature without SIG_ID or time is refused too)."""
    fpr = _signer_of(outcome)
    ids = outcome.lines("SIG_ID")
    if fpr is None or len(ids) != 1 or not ids[0]:
        return None
    valid = outcome.lines("VALIDSIG")[0]
    # VALIDSIG <fpr> <sig creation date> <sig timestamp> ...
    signed_at = _parse_gpg_time(valid[2]) if len(valid) > 2 else None
    if signed_at is None:
        return None
    return Signature(fpr, signed_at, ids[0][0])


def _signer_of(outcome: _Outcome) -> str | None:
    """Primary fingerprint of the one valid signature gpg reported, else None.

    Valid means: exactly one signature verdict, and it is GOODSIG (not bad, not by an
    expired or revoked key, not expired itself, not unverifiable), with one VALIDSIG line.
    """
    verdicts = [line.keyword for line in outcome.status if line.keyword in _SIG_VERDICTS]
    if verdicts != ["GOODSIG"]:
        return None
    valid = outcome.lines("VALIDSIG")
    if len(valid) != 1 or not valid[0]:
        return None
    fields = valid[0]
    # VALIDSIG <signing key fpr> <date> <ts> <expire> <ver> <rsvd> <algo> <hash> <class> <primary>
    primary = fields[9] if len(fields) >= 10 else fields[0]
    return _normalise_fpr(primary)


def _packet_header(packets: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, body length, where the body starts) of the packet at `pos`; the length is
    -1 for a partial (new format) or indeterminate (old format) length, which only data
    packets use. A header cut short is a GpgError."""
    if pos >= len(packets):
        raise GpgError("OpenPGP data ends inside a packet header")
    ctb = packets[pos]
    pos += 1
    if not ctb & 0x80:
        raise GpgError("not an OpenPGP message")
    if ctb & 0x40:  # new-format header
        tag = ctb & 0x3F
        length, pos = _new_length(packets, pos)
        return tag, length, pos
    tag = (ctb >> 2) & 0x0F  # old-format header
    size = {0: 1, 1: 2, 2: 4}.get(ctb & 0x03)
    if size is None:
        return tag, -1, pos
    if pos + size > len(packets):
        raise GpgError("OpenPGP data ends inside a packet header")
    return tag, int.from_bytes(packets[pos : pos + size], "big"), pos + size


def _new_length(packets: bytes, pos: int) -> tuple[int, int]:
    """A new-format body length at `pos` and where it ends; -1 for a partial length."""
    if pos >= len(packets):
        raise GpgError("OpenPGP data ends inside a packet header")
    first = packets[pos]
    if first < 192:
        return first, pos + 1
    if first < 224:
        if pos + 1 >= len(packets):
            raise GpgError("OpenPGP data ends inside a packet header")
        return ((first - 192) << 8) + packets[pos + 1] + 192, pos + 2
    if first == 255:
        if pos + 5 > len(packets):
            raise GpgError("OpenPGP data ends inside a packet header")
        return int.from_bytes(packets[pos + 1 : pos + 5], "big"), pos + 5
    return -1, pos  # partial: the caller reads the chunks


_HIDDEN = "0" * 16  # the key id of a hidden ("anonymous") recipient's session key


@dataclass(frozen=True)
class _SessionKey:
    """One session key packet heading a message: where it starts and ends, and the key
    id (16 hex) it is public-key encrypted to; None for a passphrase (SKESK)."""

    start: int
    end: int
    keyid: str | None


def _session_key_recipients(packets: bytes) -> list[str]:
    """Key ids (16 hex) of the public-key encrypted session key packets heading a message.

    Reads packet headers only, up to the encrypted data packet. Anything else in front of
    it (a passphrase-encrypted session key, a hidden recipient, an unknown packet) is an
    error: such a message is not provably for one known key.
    """
    ids: list[str] = []
    for key in _session_keys_and_data(packets)[0]:
        if key.keyid is None:
            raise GpgError("gpg output holds an unexpected OpenPGP packet (tag 3)")
        if key.keyid == _HIDDEN:
            raise GpgError("gpg output has a session key for a hidden or unknown recipient")
        ids.append(key.keyid)
    return ids


def _session_keys_and_data(packets: bytes) -> tuple[list[_SessionKey], int]:
    """The session key packets heading a message (tag 1, public-key encrypted, version 3
    only; tag 3, passphrase-encrypted) and where the header of the encrypted data packet
    that follows them starts. Another packet in front of the data, a session key of
    another version, or a packet cut short is a GpgError."""
    keys: list[_SessionKey] = []
    pos = 0
    while pos < len(packets):
        tag, length, body = _packet_header(packets, pos)
        if tag in (18, 20):  # encrypted data (with MDC / AEAD): the session keys are all read
            return keys, pos
        end = body + length
        if tag not in (1, 3) or length < 1 or end > len(packets):
            raise GpgError(f"gpg output holds an unexpected OpenPGP packet (tag {tag})")
        keyid = None
        if tag == 1:
            if length < 10 or packets[body] != 3:
                raise GpgError("gpg output has a session key packet of another version than 3")
            keyid = packets[body + 1 : body + 9].hex().upper()
        keys.append(_SessionKey(pos, end, keyid))
        pos = end
    raise GpgError("gpg output ends before its encrypted data")


def _ends_with_data(packets: bytes, pos: int) -> bool:
    """True if the encrypted data packet at `pos` ends exactly where `packets` ends.

    Partial body lengths (RFC 9580 section 4.2.1.4) are followed chunk by chunk; a chunk
    under 512 bytes (gpg writes 8 KiB and more) is refused, which bounds the walk.
    """
    ctb = packets[pos]
    if not ctb & 0x40 and ctb & 0x03 == 3:
        return True  # old format, indeterminate length: the data runs to the end
    _, length, pos = _packet_header(packets, pos)
    while length == -1:  # new-format partial length: `pos` is at its octet
        chunk = 1 << (packets[pos] & 0x1F)
        if chunk < _MIN_CHUNK:
            raise GpgError("OpenPGP data in chunks too small")
        length, pos = _new_length(packets, pos + 1 + chunk)
    return pos + length == len(packets)


def _armored_packets(armored: bytes) -> bytes:
    """The packets of one ASCII-armored PGP MESSAGE written the plain way (RFC 9580
    section 6.2): the BEGIN line, armor headers ('Name: value'), an empty line, base64
    lines, an optional '=' checksum line, the END line; LF or CRLF line ends; only empty
    lines around it. So there is one reading of it, the one gpg makes. Anything else is
    a GpgError. (The checksum is not computed: gpg checks it when it decrypts.)"""
    text = armored.replace(b"\r\n", b"\n").strip(b"\n")
    head, blank, rest = text.partition(b"\n\n")  # the headers end at the first empty line
    body, newline, end = rest.rpartition(b"\n")
    headers = head.split(b"\n")
    if not blank or not newline or headers[0] != _BEGIN_MESSAGE or end != _END_MESSAGE:
        raise GpgError("not one plainly ASCII-armored OpenPGP message")
    if not all(_ARMOR_HEADER.fullmatch(line) for line in headers[1:]):
        raise GpgError("ASCII armor with a malformed header line")
    last = body.rfind(b"\n") + 1
    if _ARMOR_CHECKSUM.fullmatch(body, last):
        body = body[: max(last - 1, 0)]
    if not body or body.startswith(b"\n") or b"\n\n" in body:
        raise GpgError("ASCII armor with an empty line in its data")
    try:
        # Strict: only the base64 alphabet (a space, a stray CR, a '-' line are refused),
        # and padding only at the very end.
        return base64.b64decode(body.replace(b"\n", b""), validate=True)
    except ValueError as exc:
        raise GpgError("ASCII armor with damaged base64") from exc


class Keyring:
    """One gnupg home directory and the operations maild needs on it.

    Key listings are cached: the first look at a fingerprint lists its public key (and
    whether its secret key is present) with gpg, and later calls, from any thread, reuse
    that listing, so `health`, `encrypt` and `sign_encrypt` run no listing process in the
    steady state. Expiry and revocation are judged from the listing against each call's
    `now`; the verdict is kept with the listing for the interval of `now` it holds for
    (it can change only at a component's expiry instant), so each key is judged once per
    interval. A fingerprint gpg does not list is not cached (it is looked up again next
    time).

    Every change this Keyring makes to its keyring (import_key, import_folder, revoke,
    generate) drops the whole cache. Changes made to the gnupg home by OTHER processes or
    other Keyring objects (a `gpg --import` on the command line, a second daemon, the CLI)
    are seen only after `refresh()`, or by a new Keyring. gpg itself still refuses to
    encrypt to a key it knows to be revoked or expired (by the real clock), whatever
    the cache says.
    """

    def __init__(self, home: Path, *, timeout: float = _GPG_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self._home = Path(home)
        self._timeout = float(timeout)
        try:
            make_private_dirs(self._home)
            if self._home.stat().st_mode & 0o077:
                self._home.chmod(0o700)
        except OSError as exc:
            raise GpgError(f"cannot prepare gnupg home {self._home}: {exc.strerror}") from exc
        try:
            self._gpg = gnupg.GPG(gnupghome=str(self._home), options=list(_RUN_OPTIONS))
        except (OSError, ValueError) as exc:
            raise GpgError(f"cannot start gpg for {self._home}: {_one_line(str(exc))}") from exc
        self._gpg.encoding = "utf-8"
        # Listing cache: fingerprint -> listing. `_generation` counts invalidations, so a
        # listing started before one is never stored after it.
        self._cache_lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}
        self._generation = 0

    @property
    def home(self) -> Path:
        return self._home

    def __enter__(self) -> Keyring:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- importing

    def import_folder(self, folder: Path) -> FolderImport:
        """Import every *.asc file in `folder` (sorted, one import per file).

        Nothing here raises for a bad file or a missing folder: each becomes a problem line.
        """
        folder = Path(folder)
        if not folder.exists():
            return FolderImport(problems=(f"keys folder {folder} does not exist",))
        if not folder.is_dir():
            return FolderImport(problems=(f"keys folder {folder} is not a directory",))
        files: dict[str, tuple[str, ...]] = {}
        problems: list[str] = []
        try:
            paths = sorted(folder.glob("*.asc"))
        except OSError as exc:
            return FolderImport(problems=(f"keys folder {folder} is unreadable: {exc.strerror}",))
        for path in paths:
            name = path.name
            try:
                data = path.read_bytes()
            except OSError as exc:
                problems.append(f"{name}: unreadable ({exc.strerror or 'error'})")
                continue
            try:
                files[name] = self._import_public(data, require_armor=True)
            except GpgError as exc:
                problems.append(f"{name}: {exc}")
        return FolderImport(files=files, problems=tuple(problems))

    def import_key(self, armored: bytes) -> tuple[str, ...]:
        """Import public key data; returns the primary fingerprints it held.

        Secret key material is refused (GpgError) and nothing is imported.
        """
        return self._import_public(armored, require_armor=False)

    def _import_public(self, data: bytes, *, require_armor: bool) -> tuple[str, ...]:
        if not data.strip():
            raise GpgError("no OpenPGP key in it (empty)")
        secret_refusal = (
            "holds a SECRET key (refused: the keys folder is for public keys only; "
            "do not import it)"
        )
        if _SECRET_ARMOR in data:
            raise GpgError(secret_refusal)
        scanned = self._gpg.scan_keys_mem(data)
        kinds = [str(entry.get("type")) for entry in scanned]
        if any(kind in ("sec", "ssb") for kind in kinds):
            raise GpgError(secret_refusal)
        if require_armor and _PUBLIC_ARMOR_RE.search(data) is None:
            if not kinds:
                raise GpgError("no OpenPGP key in it (not ASCII-armored)")
            raise GpgError("not ASCII-armored (export the key with gpg --armor --export)")
        if not kinds:
            raise GpgError("no OpenPGP key in it")
        try:
            result = self._gpg.import_keys(data)
        finally:
            self.refresh()
        if int(result.sec_read or 0) or int(result.sec_imported or 0):
            # The scan said public only, yet gpg read secret material. Never accept that
            # silently, and do not pretend it was kept out: say so.
            raise GpgError(
                "gpg read SECRET key material the pre-import scan did not show; "
                "check this keyring and remove it"
            )
        fingerprints = tuple(dict.fromkeys(str(fpr) for fpr in result.fingerprints))
        if not fingerprints:
            raise GpgError(f"gpg imported nothing: {_stderr_reason(str(result.stderr or ''))}")
        return fingerprints

    # ------------------------------------------------------------------- health

    @property
    def generation(self) -> int:
        """Changes whenever the cached listings are dropped (see `refresh`)."""
        return self._generation

    def refresh(self) -> None:
        """Forget every cached key listing; the next look at each key asks gpg again.

        Call it when another process may have changed the gnupg home (e.g. on reload).
        """
        with self._cache_lock:
            self._listings.clear()
            self._generation += 1

    def _listing(self, fpr: str) -> _Listing | None:
        """The (cached) listing of the key whose primary fingerprint is exactly `fpr`.

        None if gpg lists no such key. Safe from several threads: the gpg runs happen
        outside the lock, and a listing begun before an invalidation is used by its own
        call only, never stored.
        """
        with self._cache_lock:
            cached = self._listings.get(fpr)
            generation = self._generation
        if cached is not None:
            return cached
        key = self._list_one(fpr, secret=False)
        if key is None:
            return None
        listing = _Listing(key=key, has_secret=self._list_one(fpr, secret=True) is not None)
        with self._cache_lock:
            if self._generation == generation:
                listing = self._listings.setdefault(fpr, listing)
        return listing

    def _list_one(self, fpr: str, *, secret: bool) -> Mapping[str, Any] | None:
        """The listing entry whose primary fingerprint is exactly `fpr`, if any."""
        entries: Sequence[Mapping[str, Any]] = self._gpg.list_keys(secret=secret, keys=[fpr])
        matches = [entry for entry in entries if entry.get("fingerprint") == fpr]
        if len(matches) > 1:
            raise GpgError(f"keyring holds {len(matches)} copies of key {fpr}")
        return matches[0] if matches else None

    def health(self, fingerprint: str, now: datetime) -> KeyHealth:
        """Health of the key with exactly this full fingerprint, judged at `now`.

        Judged from the cached listing (see the class docstring), against this `now`.
        """
        return self._health(fingerprint, now)[0]

    def encryption_subkeys(self, fingerprint: str) -> frozenset[str]:
        """Key ids of the key's encryption-capable (sub)keys, as last listed
        (empty when no such key): a notice prepared for the key is stale
        when they change."""
        fpr = _normalise_fpr(fingerprint)
        listing = self._listing(fpr) if fpr is not None else None
        return _encryption_key_ids(listing.key) if listing is not None else frozenset()

    def _health(self, fingerprint: str, now: datetime) -> tuple[KeyHealth, _Listing | None]:
        """Health at `now`, and the listing it was judged from (None: no such key)."""
        now = _require_aware(now, "now")
        fpr = _normalise_fpr(fingerprint)
        if fpr is None:
            return _absent(fingerprint), None
        listing = self._listing(fpr)
        if listing is None:
            return _absent(fpr), None
        return listing.assess(fpr, now), listing

    # ------------------------------------------------------------ crypto proper

    def encrypt(self, data: bytes, fingerprint: str, now: datetime) -> bytes:
        """Binary OpenPGP message to exactly this one key; GpgError if it is not usable."""
        health = self.health(fingerprint, now)
        problem = health.problem()
        if problem is not None:
            raise GpgError(f"cannot encrypt to {health.fingerprint}: {problem}")
        result = self._gpg.encrypt(
            data,
            [health.fingerprint],
            armor=False,
            always_trust=True,
            sign=None,
            # Fast compression: sealing a 100 KB advisory costs about half the CPU.
            extra_args=["--no-encrypt-to", "--compress-level", "1"],
        )
        if not result.ok or result.returncode != 0 or not result.data:
            raise GpgError(
                f"gpg failed to encrypt to {health.fingerprint}: "
                f"{_one_line(str(result.status or 'no status'))}"
            )
        return bytes(result.data)

    def decrypt(self, data: bytes, *, max_output: int | None = _MAX_PLAINTEXT) -> bytes:
        """Plaintext of a message public-key encrypted to this keyring's (unprotected)
        secret keys: what maild sealed to its identity key.

        Signatures inside are not checked (--skip-verify), so a member's sealed mail
        decrypts whatever became of the member's key since. A message that is not
        public-key encrypted, fails its integrity check, or whose plaintext is over
        `max_output` bytes (None: no limit) is a GpgError.
        """
        args = ["--skip-verify", "--decrypt"]
        if max_output is not None:
            args[:0] = ["--max-output", str(max_output)]
        outcome = self._gpg_io(args, data)
        decrypted = _decrypted(outcome)
        if not decrypted or outcome.returncode != 0:
            raise GpgError(f"gpg failed to decrypt: {outcome.reason()}")
        return outcome.output

    def only_for(
        self, armored: bytes, fingerprint: str, *, opened_with: str | None = None
    ) -> bytes | None:
        """The binary packets of an ASCII-armored OpenPGP message, cut down to what only
        the key `fingerprint` can open, else None.

        The message must be plainly armored (see _armored_packets) and be a run of
        session key packets (public-key encrypted, version 3, or passphrase-encrypted)
        followed by one encrypted data packet that ends the message; exactly one of the
        session keys must be public-key encrypted to an encryption (sub)key of
        `fingerprint` as last listed, named (a hidden recipient's never counts as the
        key's) and ahead of every hidden recipient's. The answer is that one session key
        packet followed by the data packet, each byte for byte as in the message: the
        other session keys (another key's, a hidden recipient's, a passphrase's) are
        dropped.

        Dropping them is safe: what is left opens with the key `fingerprint` or with the
        message's session key. Whoever could open a dropped session key can get that
        session key only from the message as it was sent, so already holds its plaintext.

        The kept session key must be the one gpg opened the message with, or the stored
        message might not open again. gpg (2.2) tries the session keys in order and keeps
        the first it decrypts, trying a hidden recipient's with every secret key it has
        (one it fails to decrypt makes it exit non-zero: decrypt_signed refuses that);
        a passphrase's it cannot use in batch mode. So two for `fingerprint`, or a hidden
        recipient's ahead of its own, are None.

        `opened_with`: the key id gpg says it opened the message with
        (decrypt_signed_by); when given, the kept session key must be for that key, so
        a stored message always opens as it did (whatever other secret keys the
        keyring holds, or however a later gpg orders its tries).

        Nothing is decrypted, no gpg runs (unless the key's listing is not cached yet),
        and nothing is raised: any doubt is None.
        """
        try:
            packets = _armored_packets(armored)
            keys, data = _session_keys_and_data(packets)
            if not _ends_with_data(packets, data):
                return None
            allowed = self.encryption_subkeys(fingerprint)
        except (GpgError, ValueError, IndexError):
            return None
        mine = [n for n, key in enumerate(keys) if key.keyid in allowed]
        if len(mine) != 1 or any(key.keyid == _HIDDEN for key in keys[: mine[0]]):
            return None
        kept = keys[mine[0]]
        if opened_with is not None and kept.keyid != opened_with.upper():
            return None
        if len(keys) == 1:
            return packets  # nothing to drop
        return packets[kept.start : kept.end] + packets[data:]

    def sign_encrypt(self, data: bytes, recipient: str, signer: str, now: datetime) -> bytes:
        """ASCII-armored OpenPGP message signed by `signer` and encrypted to `recipient` only.

        One gpg process makes the combined form of RFC 3156 section 6.2 (the recipient's
        key is judged, and its encryption key ids taken, from the cached listing). Before
        anything is returned, gpg's status must show exactly one SHA-256 signature made by
        the key `signer` itself, and the message must hold exactly one session key, for an
        encryption key of `recipient`; any other outcome is a GpgError.
        """
        health, listing = self._health(recipient, now)
        problem = health.problem()
        if problem is not None or listing is None:
            raise GpgError(f"cannot encrypt to {health.fingerprint}: {problem or 'no key'}")
        fpr = health.fingerprint
        signer_fpr = self._signer(signer)
        outcome = self._gpg_io(
            [
                "--armor",
                "--sign",
                "--encrypt",
                "--trust-model",
                "always",
                "--no-encrypt-to",
                "--recipient",
                fpr,
                "--local-user",
                signer_fpr + "!",
                "--digest-algo",
                "SHA256",
            ],
            data,
        )
        if outcome.returncode != 0 or not outcome.has("END_ENCRYPTION"):
            raise GpgError(
                f"gpg failed to sign by {signer_fpr} and encrypt to {fpr}: {outcome.reason()}"
            )
        self._check_signature_made(outcome, signer_fpr, kind="S")
        used = _session_key_recipients(_armored_packets(outcome.output))
        # The same listing the recipient was judged from: one snapshot for both checks.
        allowed = _encryption_key_ids(listing.key)
        if len(used) != 1 or used[0] not in allowed:
            raise GpgError(
                f"gpg encrypted to {len(used)} keys, not to exactly one encryption key of "
                f"{fpr}; discarded"
            )
        return outcome.output

    def detach_sign(self, data: bytes, signer: str) -> bytes:
        """ASCII-armored detached SHA-256 signature over `data` by exactly the key `signer`."""
        signer_fpr = self._signer(signer)
        outcome = self._gpg_io(
            [
                "--armor",
                "--detach-sign",
                "--local-user",
                signer_fpr + "!",
                "--digest-algo",
                "SHA256",
            ],
            data,
        )
        if outcome.returncode != 0:
            raise GpgError(f"gpg failed to sign by {signer_fpr}: {outcome.reason()}")
        self._check_signature_made(outcome, signer_fpr, kind="D")
        if not outcome.output.startswith(b"-----BEGIN PGP SIGNATURE-----"):
            raise GpgError("gpg did not return an ASCII-armored signature")
        return outcome.output

    def decrypt_verify(self, data: bytes) -> tuple[bytes, str | None]:
        """Plaintext of a public-key encrypted message, and who validly signed it.

        The second item is the primary fingerprint of the one valid signature inside, or
        None when the message is unsigned, badly signed, signed by an unknown, expired or
        revoked key, or carries more than one signature. A message that is not public-key
        encrypted to this keyring, or that fails its integrity check, is a GpgError.
        """
        plaintext, signature = self.decrypt_signed(data)
        return plaintext, None if signature is None else signature.fingerprint

    def decrypt_signed(self, data: bytes) -> tuple[bytes, Signature | None]:
        """As decrypt_verify, with the signature's time and id (for replay checks).

        A plaintext over 64 MiB (_MAX_PLAINTEXT) is a GpgError: gpg stops writing there,
        so a compression bomb is never expanded in memory.
        """
        plaintext, signature, _ = self.decrypt_signed_by(data)
        return plaintext, signature

    def decrypt_signed_by(self, data: bytes) -> tuple[bytes, Signature | None, str | None]:
        """As decrypt_signed, and the key id (16 hex) of the encryption key gpg opened
        the message's session key with (its DECRYPTION_KEY status line), or None when
        gpg did not name exactly one, or failed to open another session key first."""
        outcome = self._gpg_io(
            ["--trust-model", "always", "--max-output", str(_MAX_PLAINTEXT), "--decrypt"], data
        )
        decrypted = _decrypted(outcome)
        # gpg exits non-zero for a bad or unverifiable signature on a message it decrypted
        # fine; that is 'no valid signer', not a decryption failure.
        explained = any(line.keyword in _SIG_VERDICTS - {"GOODSIG"} for line in outcome.status)
        if not decrypted and outcome.returncode == 0:
            raise GpgError("refused: the message is not public-key encrypted")
        if not decrypted or (outcome.returncode != 0 and not explained):
            raise GpgError(f"gpg failed to decrypt: {outcome.reason()}")
        used = outcome.lines("DECRYPTION_KEY")
        failed = any(args[:1] == ("pkdecrypt_failed",) for args in outcome.lines("ERROR"))
        key = used[0][0] if len(used) == 1 and used[0] and not failed else None
        opened = _normalise_fpr(key) if key else None
        return outcome.output, _signature_of(outcome), opened[-16:] if opened else None

    def verify_detached(self, data: bytes, signature: bytes) -> str | None:
        """Primary fingerprint of the key whose valid detached signature covers `data`."""
        found = self.detached_signature(data, signature)
        return None if found is None else found.fingerprint

    def detached_signature(self, data: bytes, signature: bytes) -> Signature | None:
        """The valid detached signature `signature` over `data`, else None."""
        with tempfile.TemporaryDirectory(prefix="maild-sig-") as folder:
            sig_path = Path(folder) / "signature.asc"
            sig_path.write_bytes(signature)
            outcome = self._gpg_io(["--verify", "--", str(sig_path), "-"], data)
        if outcome.returncode != 0:
            return None
        return _signature_of(outcome)

    def clearsigned(self, data: bytes) -> tuple[bytes, Signature | None]:
        """The text of a cleartext-signed message (RFC 4880 section 7) and its
        valid signature (None: unsigned, bad, or by an unknown or unusable key).
        Encrypted input is refused: use decrypt_signed."""
        if not data.lstrip().startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
            raise GpgError("refused: not a cleartext-signed message")
        outcome = self._gpg_io(["--trust-model", "always", "--decrypt"], data)
        if outcome.has("DECRYPTION_OKAY") or outcome.has("ENC_TO"):
            raise GpgError("refused: not a cleartext-signed message")
        signature = _signature_of(outcome) if outcome.returncode == 0 else None
        return outcome.output, signature

    def _signer(self, signer: str) -> str:
        fpr = _normalise_fpr(signer)
        if fpr is None:
            raise GpgError("signing needs the full 40-hex fingerprint of the signing key")
        return fpr

    def _check_signature_made(self, outcome: _Outcome, signer: str, *, kind: str) -> None:
        """Exactly one signature, of the wanted kind, SHA-256, made by the key `signer`."""
        made = outcome.lines("SIG_CREATED")
        if len(made) != 1:
            raise GpgError(f"gpg reported {len(made)} signatures instead of one; discarded")
        # SIG_CREATED <type> <pubkey algo> <hash algo> <class> <timestamp> <key fpr>
        fields = made[0]
        if len(fields) < 6 or _normalise_fpr(fields[5]) != signer:
            raise GpgError(f"gpg signed with another key than {signer}; discarded")
        if fields[0] != kind or fields[2] != _SHA256:
            raise GpgError("gpg made another kind of signature than asked for; discarded")

    def _gpg_io(self, args: Sequence[str], data: bytes) -> _Outcome:
        """One gpg process on this home: `data` on stdin, status lines on a private pipe.

        Safe to call from several threads at once: nothing is shared but the gpg-agent.
        """
        status_read, status_write = os.pipe()
        command = [
            "gpg",
            "--homedir",
            str(self._home),
            "--batch",
            "--no-tty",
            "--utf8-strings",
            "--pinentry-mode",
            "loopback",
            "--no-auto-key-retrieve",
            "--exit-on-status-write-error",
            *_RUN_OPTIONS,
            "--status-fd",
            str(status_write),
            *args,
        ]
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_write,),
            )
        except OSError as exc:
            os.close(status_read)
            raise GpgError(f"cannot run gpg: {exc.strerror}") from exc
        finally:
            os.close(status_write)
        try:
            output, stderr, status = _exchange(proc, data, status_read, self._timeout)
        except BaseException as exc:
            proc.kill()
            proc.wait()
            if isinstance(exc, _TimedOut):
                raise GpgError(f"gpg timed out after {self._timeout:g}s") from None
            raise
        finally:
            os.close(status_read)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        return _Outcome(
            returncode=proc.returncode,
            output=output,
            status=_parse_status(status),
            stderr=stderr.decode("utf-8", "replace"),
        )

    # -------------------------------------------------------------- key making

    def _run_gpg(self, args: Sequence[str], *, created: datetime | None = None) -> str:
        """Run the gpg binary on this home (batch, no passphrase); returns stdout text.

        For key making only: every run counts as a change and drops the listing cache.
        """
        try:
            return self._run_gpg_uncached(args, created=created)
        finally:
            self.refresh()

    def _run_gpg_uncached(self, args: Sequence[str], *, created: datetime | None) -> str:
        command = [
            "gpg",
            "--homedir",
            str(self._home),
            "--batch",
            "--yes",
            "--no-tty",
            "--utf8-strings",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]
        if created is not None:
            # Trailing '!' freezes the faked clock: the key and its subkey (made by two gpg
            # runs) then share one timestamp, so the subkey is never older than its primary.
            stamp = _require_aware(created, "created").strftime("%Y%m%dT%H%M%S")
            command += ["--faked-system-time", stamp + "!"]
        command += list(args)
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                timeout=self._timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise GpgError(f"gpg timed out after {self._timeout:g}s") from exc
        except OSError as exc:
            raise GpgError(f"cannot run gpg: {exc.strerror}") from exc
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise GpgError(f"gpg failed: {_stderr_reason(stderr)}")
        return proc.stdout.decode("utf-8", "replace")

    def generate(
        self,
        uid: str,
        *,
        expire: str = "never",
        sign_only: bool = False,
        created: datetime | None = None,
    ) -> str:
        """Make an unprotected ed25519 key (+ cv25519 encryption subkey); return its fingerprint."""
        if not uid.strip() or "\n" in uid or "\r" in uid:
            raise GpgError("user id must be a single non-empty line")
        if not re.fullmatch(r"[0-9A-Za-z-]+", expire):
            raise GpgError(f"unsupported expiry {expire[:20]!r}")
        out = self._run_gpg(
            ["--status-fd", "1", "--quick-gen-key", "--", uid, "ed25519", "sign,cert", expire],
            created=created,
        )
        created_fprs = [
            line.split()[3]
            for line in out.splitlines()
            if line.startswith("[GNUPG:] KEY_CREATED ") and len(line.split()) >= 4
        ]
        fpr = _normalise_fpr(created_fprs[-1]) if created_fprs else None
        if fpr is None:
            raise GpgError("gpg did not report the fingerprint of the new key")
        if not sign_only:
            self._run_gpg(
                ["--quick-add-key", "--", fpr, "cv25519", "encr", expire], created=created
            )
        return fpr

    def export_public(self, fingerprint: str) -> bytes:
        """ASCII-armored public key with exactly this fingerprint."""
        fpr = _normalise_fpr(fingerprint)
        if fpr is None or self._listing(fpr) is None:
            raise GpgError(f"no public key {fingerprint[:40]} in this keyring")
        exported = self._gpg.export_keys([fpr], armor=True)
        data = exported.encode("ascii") if isinstance(exported, str) else bytes(exported)
        if _PUBLIC_ARMOR_RE.search(data) is None:
            raise GpgError(f"gpg exported nothing for {fpr}")
        return data

    def revoke(self, fingerprint: str) -> None:
        """Revoke a key generated in this keyring, using the certificate gpg stored for it."""
        fpr = _normalise_fpr(fingerprint)
        if fpr is None:
            raise GpgError("revoke needs a full 40-hex fingerprint")
        cert_path = self._home / _REVOCS_DIR / f"{fpr}.rev"
        try:
            raw = cert_path.read_bytes()
        except OSError as exc:
            raise GpgError(f"no revocation certificate for {fpr} in this keyring") from exc
        # gpg guards the stored certificate with a leading ':' so it cannot be imported by
        # accident; taking it off is exactly what the certificate's own text tells you to do.
        cert = b"\n".join(
            line[1:] if line.startswith(b":-----BEGIN PGP") else line for line in raw.split(b"\n")
        )
        try:
            result = self._gpg.import_keys(cert)
        finally:
            self.refresh()
        if result.returncode != 0:
            raise GpgError(f"gpg refused the revocation of {fpr}")
        listing = self._listing(fpr)  # listed afresh: the import just dropped the cache
        if listing is None or str(listing.key.get("trust")) != "r":
            raise GpgError(f"key {fpr} is still not revoked")

    def close(self) -> None:
        """Stop the gpg-agent this home may have started (failures ignored)."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["gpgconf", "--homedir", str(self._home), "--kill", "gpg-agent"],
                capture_output=True,
                timeout=_GPGCONF_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
