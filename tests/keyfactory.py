"""Thin helpers for tests that need real gnupg keyrings.

Homes live directly under /tmp with a short name: gpg-agent's socket path must stay under
~100 characters, which pytest's tmp_path does not guarantee.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import gnupg

from maild.adapters.gpg import Keyring


def short_home() -> Path:
    """A fresh, short gnupg home directory under /tmp (mode 0700)."""
    return Path(tempfile.mkdtemp(prefix="mk-", dir="/tmp"))


@contextmanager
def temp_keyring() -> Iterator[Keyring]:
    """A Keyring in a throwaway home; its agent is stopped and the home removed afterwards."""
    home = short_home()
    ring = Keyring(home)
    try:
        yield ring
    finally:
        ring.close()
        shutil.rmtree(home, ignore_errors=True)


def raw_gpg(
    ring: Keyring, *args: str, created: datetime | None = None, data: bytes | None = None
) -> bytes:
    """Run gpg on the ring's home for things the adapter deliberately cannot do
    (`data` on its standard input); returns its standard output."""
    command = [
        "gpg",
        "--homedir",
        str(ring.home),
        "--batch",
        "--yes",
        "--no-tty",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]
    if created is not None:
        stamp = created.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
        command += ["--faked-system-time", stamp + "!"]  # frozen, as in Keyring.generate
    stdin = {"stdin": subprocess.DEVNULL} if data is None else {"input": data}
    proc = subprocess.run([*command, *args], capture_output=True, timeout=60, check=False, **stdin)
    if proc.returncode != 0:
        raise RuntimeError(f"gpg {args[:2]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def export_secret(ring: Keyring, fingerprint: str) -> bytes:
    """ASCII-armored SECRET key (only tests need this: the product never exports secrets)."""
    return raw_gpg(ring, "--armor", "--export-secret-keys", fingerprint)


def add_encryption_subkey(
    ring: Keyring, fingerprint: str, *, expire: str, created: datetime | None = None
) -> None:
    """Add a cv25519 encryption subkey with its own expiry (e.g. one that already expired)."""
    raw_gpg(ring, "--quick-add-key", fingerprint, "cv25519", "encr", expire, created=created)


def subkey_fingerprints(ring: Keyring, fingerprint: str) -> tuple[str, ...]:
    """Fingerprints of the subkeys of a key, from gpg's --with-colons listing."""
    out = raw_gpg(
        ring, "--with-colons", "--fingerprint", "--fingerprint", "--list-keys", fingerprint
    )
    fprs = [line.split(":")[9] for line in out.decode().splitlines() if line.startswith("fpr:")]
    return tuple(fpr for fpr in fprs if fpr != fingerprint)


def recipients(ring: Keyring, message: bytes) -> list[str]:
    """Key ids an OpenPGP message is encrypted to (as listed by gpg, no decryption)."""
    ids: list[str] = gnupg.GPG(gnupghome=str(ring.home)).get_recipients(message)
    return ids


@dataclass(frozen=True)
class Keys:
    """A daemon keyring (the identity secret key, two orgs' public keys, an
    expired and a revoked key) and each org's own keyring (its secret key and
    the identity's public key)."""

    daemon: Keyring
    org_a: Keyring
    org_b: Keyring
    identity: str
    a: str
    b: str
    expired: str
    revoked: str


@contextmanager
def daemon_and_orgs() -> Iterator[Keys]:
    with ExitStack() as stack:
        daemon = stack.enter_context(temp_keyring())
        org_a = stack.enter_context(temp_keyring())
        org_b = stack.enter_context(temp_keyring())
        factory = stack.enter_context(temp_keyring())
        identity = daemon.generate("Disclosure WG <maild@wg.example>")
        a = org_a.generate("Org A <security@org-a.example>")
        b = org_b.generate("Org B <security@org-b.example>")
        past = datetime(2020, 1, 1, tzinfo=UTC)
        expired = factory.generate("Old <old@example.org>", expire="1d", created=past)
        revoked = factory.generate("Gone <gone@example.org>")
        factory.revoke(revoked)
        daemon.import_key(org_a.export_public(a))
        daemon.import_key(org_b.export_public(b))
        for fpr in (expired, revoked):
            daemon.import_key(factory.export_public(fpr))
        for ring in (org_a, org_b):
            ring.import_key(daemon.export_public(identity))
        yield Keys(daemon, org_a, org_b, identity, a, b, expired, revoked)
