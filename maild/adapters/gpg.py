"""OpenPGP adapter: one gnupg home per `Keyring`, driven through python-gnupg and the gpg binary.

Rules this module keeps:

* keys are addressed by their full 40-hex fingerprint only, and every answer from gpg is
  checked against the fingerprint that was asked for;
* gpg's own `valid`/`ok` flags are not trusted as authorisation: revocation and expiry are
  computed here from the --with-colons fields, against the `now` the caller passes in;
* data goes to python-gnupg as bytes, one gpg process per operation;
* `GpgError` messages are one line and never contain key material or plaintext.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import gnupg

__all__ = ["FolderImport", "GpgError", "KeyHealth", "Keyring"]

# python-gnupg logs the first 256 bytes of key data it is handed at DEBUG level (scan and
# import). That would put a mistakenly dropped secret key into the logs, so keep it quieter.
logging.getLogger("gnupg").setLevel(logging.INFO)

_FPR_RE = re.compile(r"[0-9A-F]{40}")
_PUBLIC_ARMOR_RE = re.compile(rb"^-----BEGIN PGP PUBLIC KEY BLOCK-----\r?$", re.MULTILINE)
_SECRET_ARMOR = b"-----BEGIN PGP PRIVATE KEY BLOCK-----"
_REVOCS_DIR = "openpgp-revocs.d"
_GPG_TIMEOUT = 60.0
_GPGCONF_TIMEOUT = 10.0
_MAX_MESSAGE = 200


class GpgError(Exception):
    """A gpg operation failed or was refused; the message is one human-readable line."""


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 3] + "..."


def _normalise_fpr(fingerprint: str) -> str | None:
    """Upper-cased fingerprint if it is a full 40-hex fingerprint, else None."""
    candidate = fingerprint.upper()
    return candidate if _FPR_RE.fullmatch(candidate) else None


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
        if _FPR_RE.fullmatch(self.fingerprint) is None:
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

    @property
    def fingerprints(self) -> frozenset[str]:
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


class Keyring:
    """One gnupg home directory and the operations maild needs on it."""

    def __init__(self, home: Path) -> None:
        self._home = Path(home)
        try:
            self._home.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._home.stat().st_mode & 0o077:
                self._home.chmod(0o700)
        except OSError as exc:
            raise GpgError(f"cannot prepare gnupg home {self._home}: {exc.strerror}") from exc
        try:
            self._gpg = gnupg.GPG(gnupghome=str(self._home))
        except (OSError, ValueError) as exc:
            raise GpgError(f"cannot start gpg for {self._home}: {_one_line(str(exc))}") from exc
        self._gpg.encoding = "utf-8"

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
        result = self._gpg.import_keys(data)
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

    def _list_one(self, fpr: str, *, secret: bool) -> Mapping[str, Any] | None:
        """The listing entry whose primary fingerprint is exactly `fpr`, if any."""
        entries: Sequence[Mapping[str, Any]] = self._gpg.list_keys(secret=secret, keys=[fpr])
        matches = [entry for entry in entries if entry.get("fingerprint") == fpr]
        if len(matches) > 1:
            raise GpgError(f"keyring holds {len(matches)} copies of key {fpr}")
        return matches[0] if matches else None

    def health(self, fingerprint: str, now: datetime) -> KeyHealth:
        """Health of the key with exactly this full fingerprint, judged at `now`."""
        now = _require_aware(now, "now")
        fpr = _normalise_fpr(fingerprint)
        if fpr is None:
            return _absent(fingerprint)
        key = self._list_one(fpr, secret=False)
        if key is None:
            return _absent(fpr)
        has_secret = self._list_one(fpr, secret=True) is not None
        return _assess(fpr, key, has_secret, now)

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
            extra_args=["--no-encrypt-to"],
        )
        if not result.ok or result.returncode != 0 or not result.data:
            raise GpgError(
                f"gpg failed to encrypt to {health.fingerprint}: "
                f"{_one_line(str(result.status or 'no status'))}"
            )
        return bytes(result.data)

    def decrypt(self, data: bytes) -> bytes:
        """Decrypt with the (unprotected) secret keys of this keyring."""
        result = self._gpg.decrypt(data, extra_args=["--pinentry-mode", "loopback"])
        if not result.ok or result.returncode != 0:
            raise GpgError(f"gpg failed to decrypt: {_one_line(str(result.status or 'no status'))}")
        return bytes(result.data)

    # -------------------------------------------------------------- key making

    def _run_gpg(self, args: Sequence[str], *, created: datetime | None = None) -> str:
        """Run the gpg binary on this home (batch, no passphrase); returns stdout text."""
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
                timeout=_GPG_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise GpgError(f"gpg timed out after {_GPG_TIMEOUT:.0f}s") from exc
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
        if fpr is None or self._list_one(fpr, secret=False) is None:
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
        result = self._gpg.import_keys(cert)
        if result.returncode != 0:
            raise GpgError(f"gpg refused the revocation of {fpr}")
        key = self._list_one(fpr, secret=False)
        if key is None or str(key.get("trust")) != "r":
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
