"""The gpg adapter against real, throwaway gnupg keyrings made in the test."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gnupg
import pytest

from maild.adapters.gpg import GpgError, Keyring
from tests.keyfactory import (
    Keys,
    add_encryption_subkey,
    daemon_and_orgs,
    export_secret,
    raw_gpg,
    recipients,
    short_home,
    subkey_fingerprints,
    temp_keyring,
)
from tests.mailfactory import armored, dearmored, packets

PAST = datetime(2020, 1, 1, tzinfo=UTC)
MISSING = "0123456789ABCDEF0123456789ABCDEF01234567"
MESSAGE = b"Subject: CVE draft\r\n\r\nheap overflow in parse_header(), PoC attached\r\n"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class World:
    """Keyrings and fingerprints shared by the tests of this module."""

    factory: Keyring  # made the odd keys below; holds their secrets
    alice_ring: Keyring  # holds only Alice's key, with its secret
    bob_ring: Keyring  # holds only Bob's key, with its secret
    sender: Keyring  # public keys only, as the daemon would have them
    alice: str
    bob: str
    expired: str
    revoked: str
    sign_only: str
    soon: str
    subkey_expired: str
    zoe: str
    mallory: str  # secret-only test key, never imported into `sender`


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with ExitStack() as stack:
        factory = stack.enter_context(temp_keyring())
        alice_ring = stack.enter_context(temp_keyring())
        bob_ring = stack.enter_context(temp_keyring())
        sender = stack.enter_context(temp_keyring())

        alice = alice_ring.generate("Alice <alice@example.org>", expire="2y")
        bob = bob_ring.generate("Bob <bob@example.org>", expire="2y")
        expired = factory.generate("Old <old@example.org>", expire="1d", created=PAST)
        revoked = factory.generate("Gone <gone@example.org>")
        factory.revoke(revoked)
        sign_only = factory.generate("Signer <signer@example.org>", sign_only=True)
        soon = factory.generate("Soon <soon@example.org>", expire="10d")
        subkey_expired = factory.generate("Half <half@example.org>", sign_only=True, created=PAST)
        add_encryption_subkey(factory, subkey_expired, expire="1d", created=PAST)
        zoe = factory.generate("Zoë Ünïcode <zoe@example.org>")
        mallory = factory.generate("Mallory <mallory@example.org>")

        sender.import_key(alice_ring.export_public(alice))
        sender.import_key(bob_ring.export_public(bob))
        for fpr in (expired, revoked, sign_only, soon, subkey_expired, zoe):
            sender.import_key(factory.export_public(fpr))

        yield World(
            factory=factory,
            alice_ring=alice_ring,
            bob_ring=bob_ring,
            sender=sender,
            alice=alice,
            bob=bob,
            expired=expired,
            revoked=revoked,
            sign_only=sign_only,
            soon=soon,
            subkey_expired=subkey_expired,
            zoe=zoe,
            mallory=mallory,
        )


@pytest.fixture()
def fresh() -> Iterator[Keyring]:
    with temp_keyring() as ring:
        yield ring


# --------------------------------------------------------------------------- health


def test_good_key_is_present_and_usable(world: World) -> None:
    """A freshly imported normal key is reported present, encryptable, with no problem."""
    health = world.sender.health(world.alice, now())
    assert health.fingerprint == world.alice
    assert health.present
    assert health.can_encrypt
    assert not health.revoked
    assert not health.expired
    assert health.problem() is None
    assert health.uids == ("Alice <alice@example.org>",)
    assert not health.has_secret  # the daemon's keyring holds public keys only
    assert health.expires_at is not None and health.expires_at.tzinfo is not None
    assert world.alice_ring.health(world.alice, now()).has_secret


def test_missing_fingerprint_is_named_missing(world: World) -> None:
    """A fingerprint not in the keyring is 'no key with this fingerprint in the keys folder'."""
    health = world.sender.health(MISSING, now())
    assert not health.present
    assert not health.can_encrypt
    assert health.problem() == "no key with this fingerprint in the keys folder"


def test_expired_key_reports_its_expiry_date(world: World) -> None:
    """A key generated as if on 2020-01-01 with 1d expiry reads 'key expired on 2020-01-02'."""
    health = world.sender.health(world.expired, now())
    assert health.present
    assert health.expired
    assert not health.can_encrypt
    assert health.expires_at == datetime(2020, 1, 2, tzinfo=UTC)
    assert health.problem() == "key expired on 2020-01-02"


def test_generated_with_created_is_expired_in_its_own_keyring(world: World) -> None:
    """generate(created=2020-01-01, expire='1d') makes a key whose health says expired."""
    health = world.factory.health(world.expired, now())
    assert health.has_secret
    assert health.expired
    assert health.problem() == "key expired on 2020-01-02"


def test_expiry_is_judged_against_the_now_passed_in(world: World) -> None:
    """A key valid for two years reads expired when asked about a date three years ahead."""
    later = now() + timedelta(days=3 * 366)
    health = world.sender.health(world.alice, later)
    assert health.expired
    assert not health.can_encrypt
    assert health.expires_at is not None
    assert health.problem() == f"key expired on {health.expires_at.date().isoformat()}"


def test_revoked_key_reads_revoked(world: World) -> None:
    """A key whose revocation certificate was imported reads 'key is revoked', even elsewhere."""
    for ring in (world.factory, world.sender):
        health = ring.health(world.revoked, now())
        assert health.present
        assert health.revoked
        assert not health.can_encrypt
        assert health.problem() == "key is revoked"


def test_sign_only_key_cannot_encrypt(world: World) -> None:
    """A key without an encryption subkey reads 'key cannot encrypt (sign-only)'."""
    health = world.sender.health(world.sign_only, now())
    assert health.present
    assert not health.revoked
    assert not health.expired
    assert not health.can_encrypt
    assert health.expires_at is None
    assert health.problem() == "key cannot encrypt (sign-only)"


def test_key_whose_encryption_subkey_alone_expired_reads_expired(world: World) -> None:
    """A never-expiring primary whose only encryption subkey expired reads expired, with date."""
    health = world.sender.health(world.subkey_expired, now())
    assert health.present
    assert not health.revoked
    assert health.expired
    assert not health.can_encrypt
    assert health.problem() == "key expired on 2020-01-02"


def test_expires_within_window(world: World) -> None:
    """A key expiring in 10 days is flagged for a 30-day window; a 2-year key is not."""
    t = now()
    soon = world.sender.health(world.soon, t)
    assert soon.problem() is None
    assert soon.expires_within(t, 30)
    assert not soon.expires_within(t, 5)
    assert not world.sender.health(world.alice, t).expires_within(t, 30)
    assert not world.sender.health(world.sign_only, t).expires_within(t, 30)  # never expires
    assert not world.sender.health(MISSING, t).expires_within(t, 30)


def test_utf8_user_ids_survive(world: World) -> None:
    """User ids with non-ASCII characters are reported as written."""
    assert world.sender.health(world.zoe, now()).uids == ("Zoë Ünïcode <zoe@example.org>",)


def test_health_never_answers_for_another_key(world: World) -> None:
    """Short ids, subkey fingerprints and near-misses never return another key's data."""
    t = now()
    short_id = world.alice[-16:]
    subkey = subkey_fingerprints(world.sender, world.alice)[0]
    near_miss = world.alice[:-1] + ("0" if world.alice[-1] != "0" else "1")
    for asked in (short_id, "0x" + short_id, subkey, near_miss, "Alice", world.alice[:39]):
        health = world.sender.health(asked, t)
        assert not health.present, asked
        assert health.uids == ()
        assert health.fingerprint == asked
        assert health.problem() is not None
    assert world.sender.health(short_id, t).problem() == "not a full 40-hex fingerprint"
    bob = world.sender.health(world.bob, t)
    assert bob.fingerprint == world.bob
    assert bob.uids == ("Bob <bob@example.org>",)


def test_lowercase_full_fingerprint_is_the_same_key(world: World) -> None:
    """A full fingerprint in lower case finds the key and is reported upper-cased."""
    health = world.sender.health(world.alice.lower(), now())
    assert health.present
    assert health.fingerprint == world.alice


def test_naive_now_is_refused(world: World) -> None:
    """Health needs an aware 'now': a naive datetime is a programming error, not a guess."""
    with pytest.raises(ValueError):
        world.sender.health(world.alice, datetime(2026, 1, 1))


# ------------------------------------------------------------------------- importing


def test_import_folder_reports_files_and_refuses_secret_keys(
    world: World, fresh: Keyring, tmp_path: Path
) -> None:
    """Each *.asc is imported on its own; bad files are named, a SECRET key is refused."""
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "alice.asc").write_bytes(world.alice_ring.export_public(world.alice))
    (folder / "both.asc").write_bytes(
        world.bob_ring.export_public(world.bob) + world.factory.export_public(world.soon)
    )
    (folder / "garbage.asc").write_bytes(b"this is not a key\n")
    (folder / "empty.asc").write_bytes(b"")
    (folder / "binary.asc").write_bytes(raw_gpg(world.bob_ring, "--export", world.bob))
    (folder / "mallory-secret.asc").write_bytes(export_secret(world.factory, world.mallory))
    (folder / "mixed.asc").write_bytes(
        world.factory.export_public(world.zoe) + export_secret(world.factory, world.mallory)
    )
    (folder / "dir.asc").mkdir()
    (folder / "notes.txt").write_bytes(world.factory.export_public(world.expired))

    result = fresh.import_folder(folder)

    assert result.files == {"alice.asc": (world.alice,), "both.asc": (world.bob, world.soon)}
    assert result.fingerprints == frozenset({world.alice, world.bob, world.soon})
    problems = dict(line.split(": ", 1) for line in result.problems)
    assert sorted(problems) == sorted(
        ["binary.asc", "dir.asc", "empty.asc", "garbage.asc", "mallory-secret.asc", "mixed.asc"]
    )
    for refused in ("mallory-secret.asc", "mixed.asc"):
        assert "SECRET" in problems[refused]
        assert "do not import" in problems[refused]
    assert "not ASCII-armored" in problems["binary.asc"]
    assert "no OpenPGP key" in problems["garbage.asc"]
    assert "no OpenPGP key" in problems["empty.asc"]
    assert "unreadable" in problems["dir.asc"]
    assert all("\n" not in line for line in result.problems)

    mallory = fresh.health(world.mallory, now())
    assert not mallory.present
    assert not mallory.has_secret
    assert list((fresh.home / "private-keys-v1.d").glob("*")) == []
    assert not fresh.health(world.zoe, now()).present  # a file with a secret is refused whole
    assert not fresh.health(world.expired, now()).present  # only *.asc files are read


def test_import_folder_missing_folder_is_a_problem_not_an_exception(
    fresh: Keyring, tmp_path: Path
) -> None:
    """A keys folder that does not exist yields one problem line and no keys."""
    result = fresh.import_folder(tmp_path / "nope")
    assert result.files == {}
    assert result.fingerprints == frozenset()
    assert len(result.problems) == 1
    assert "does not exist" in result.problems[0]


def test_import_key_refuses_secret_key_material(world: World, fresh: Keyring) -> None:
    """import_key raises for a secret key and leaves nothing behind."""
    with pytest.raises(GpgError, match="SECRET"):
        fresh.import_key(export_secret(world.factory, world.mallory))
    assert not fresh.health(world.mallory, now()).present
    assert list((fresh.home / "private-keys-v1.d").glob("*")) == []


def test_import_key_rejects_garbage(fresh: Keyring) -> None:
    """import_key raises GpgError for data that holds no key."""
    with pytest.raises(GpgError, match="no OpenPGP key"):
        fresh.import_key(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnope\n")


# ---------------------------------------------------------------------- encryption


def test_encrypt_to_one_key_decrypts_only_with_its_secret(world: World) -> None:
    """A binary message to Alice decrypts with Alice's keyring and not with Bob's."""
    ciphertext = world.sender.encrypt(MESSAGE, world.alice, now())
    assert MESSAGE not in ciphertext
    assert not ciphertext.startswith(b"-----BEGIN")  # binary, not armored
    alice_enc_subkeys = {fpr[-16:] for fpr in subkey_fingerprints(world.sender, world.alice)}
    assert set(recipients(world.sender, ciphertext)) <= alice_enc_subkeys
    assert len(recipients(world.sender, ciphertext)) == 1

    assert world.alice_ring.decrypt(ciphertext) == MESSAGE
    with pytest.raises(GpgError) as caught:
        world.bob_ring.decrypt(ciphertext)
    assert b"heap overflow" not in str(caught.value).encode()
    with pytest.raises(GpgError):
        world.sender.decrypt(ciphertext)  # public keys only: cannot read what it sent


@pytest.mark.parametrize(
    ("which", "phrase"),
    [
        ("revoked", "key is revoked"),
        ("expired", "key expired on 2020-01-02"),
        ("subkey_expired", "key expired on 2020-01-02"),
        ("sign_only", "key cannot encrypt (sign-only)"),
        ("missing", "no key with this fingerprint"),
    ],
)
def test_encrypt_refuses_unusable_keys(world: World, which: str, phrase: str) -> None:
    """Encrypting to a revoked/expired/sign-only/missing key raises, naming key and problem."""
    fpr = MISSING if which == "missing" else getattr(world, which)
    with pytest.raises(GpgError) as caught:
        world.sender.encrypt(MESSAGE, fpr, now())
    message = str(caught.value)
    assert fpr in message
    assert phrase in message
    assert "heap overflow" not in message
    assert "\n" not in message


def test_encrypt_refuses_short_ids(world: World) -> None:
    """Encryption is addressed by full fingerprint only; a short id is refused."""
    with pytest.raises(GpgError, match="not a full 40-hex fingerprint"):
        world.sender.encrypt(MESSAGE, world.alice[-16:], now())


# ------------------------------------------------------------------------ keyring


def test_home_is_created_private_and_tightened() -> None:
    """A keyring home is made mode 0700, and an existing too-open home is tightened."""
    base = short_home()
    try:
        new_home = base / "a" / "b"
        ring = Keyring(new_home)
        assert stat.S_IMODE(new_home.stat().st_mode) == 0o700
        ring.close()
        open_home = base / "open"
        open_home.mkdir(mode=0o755)
        open_home.chmod(0o755)
        Keyring(open_home).close()
        assert stat.S_IMODE(open_home.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_export_public_of_unknown_key_raises(fresh: Keyring) -> None:
    """Exporting a key the keyring does not hold is an error, not an empty export."""
    with pytest.raises(GpgError):
        fresh.export_public(MISSING)


# ------------------------------------------------------------------- listing cache


@pytest.fixture(scope="module")
def pair() -> Iterator[Keys]:
    """A daemon keyring and two orgs' own keyrings."""
    with daemon_and_orgs() as made:
        yield made


@pytest.fixture()
def gpg_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Argument lists of the gpg processes started while the test runs.

    The adapter starts gpg through subprocess (its own runs) and through python-gnupg
    (listings, imports), which holds its own reference to subprocess.Popen: both are
    wrapped. gpgconf and the gpg-agent (started by gpg itself) are not counted.
    """
    runs: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        argv = [str(arg) for arg in args]
        if Path(argv[0]).name == "gpg":
            runs.append(argv)
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    monkeypatch.setattr(gnupg, "Popen", counting_popen)
    return runs


def test_second_sign_encrypt_to_the_same_key_runs_one_gpg_process(
    pair: Keys, gpg_runs: list[list[str]]
) -> None:
    """Once a key has been listed, sign_encrypt is one gpg run (the sign+encrypt itself),
    and health() runs none; refresh() makes the next call list the key again."""
    pair.daemon.refresh()
    first = pair.daemon.sign_encrypt(b"first", pair.a, pair.identity, now())
    assert len(gpg_runs) == 3  # public listing, secret listing, sign+encrypt
    gpg_runs.clear()

    second = pair.daemon.sign_encrypt(b"second", pair.a, pair.identity, now())
    assert len(gpg_runs) == 1
    assert "--sign" in gpg_runs[0] and "--encrypt" in gpg_runs[0]
    assert pair.org_a.decrypt_verify(first) == (b"first", pair.identity)
    assert pair.org_a.decrypt_verify(second) == (b"second", pair.identity)

    gpg_runs.clear()
    assert pair.daemon.health(pair.a, now()).problem() is None
    assert gpg_runs == []
    pair.daemon.detach_sign(b"data", pair.identity)
    assert len(gpg_runs) == 1
    gpg_runs.clear()
    pair.daemon.encrypt(b"data", pair.a, now())
    assert len(gpg_runs) == 1

    gpg_runs.clear()
    pair.daemon.refresh()
    pair.daemon.sign_encrypt(b"third", pair.a, pair.identity, now())
    assert len(gpg_runs) == 3


def test_cached_listing_is_still_judged_against_the_now_passed_in(
    world: World, gpg_runs: list[list[str]]
) -> None:
    """The cache holds the listing, not a verdict: from one cached listing, a 2-year key
    reads usable now and expired three years on, without asking gpg again."""
    world.sender.health(world.alice, now())  # listed (or already cached)
    gpg_runs.clear()
    later = now() + timedelta(days=3 * 366)
    assert world.sender.health(world.alice, later).expired
    assert world.sender.health(world.alice, now()).problem() is None
    assert world.sender.health(world.alice, later).problem() is not None
    assert gpg_runs == []


def test_cached_verdicts_match_a_fresh_judgement_at_every_instant(fresh: Keyring) -> None:
    """Verdicts are cached per interval between expiry instants, yet each call is judged
    exactly at its own `now`: a key whose encryption subkey expires in 10 days and whose
    primary in 2 years reads, at instants on both sides of each expiry (asked in an
    order that goes back and forth), what an uncached Keyring on the same home reads."""
    fpr = fresh.generate("Split <split@example.org>", sign_only=True, expire="2y")
    add_encryption_subkey(fresh, fpr, expire="10d")
    fresh.refresh()
    first = fresh.health(fpr, now())
    sub_expiry = first.expires_at
    assert first.problem() is None and sub_expiry is not None
    listing = raw_gpg(fresh, "--with-colons", "--list-keys", fpr).decode()
    pub = next(line.split(":") for line in listing.splitlines() if line.startswith("pub:"))
    primary_expiry = datetime.fromtimestamp(int(pub[6]), UTC)
    assert primary_expiry > sub_expiry + timedelta(days=300)
    tick = timedelta(microseconds=1)
    instants = [
        sub_expiry - tick,
        primary_expiry,
        sub_expiry,
        now(),
        primary_expiry - tick,
        sub_expiry + tick,
        sub_expiry - tick,
        primary_expiry + timedelta(days=1),
        sub_expiry,
    ]
    seen = [fresh.health(fpr, at) for at in instants]
    for at, health in zip(instants, seen, strict=True):
        assert health == Keyring(fresh.home).health(fpr, at), at
    assert [h.problem() is None for h in seen] == [
        True, False, False, True, False, False, True, False, False
    ]  # fmt: skip
    assert seen[0].expires_at == sub_expiry and seen[2].expires_at == sub_expiry


def test_health_is_judged_once_per_interval_and_again_after_refresh(fresh: Keyring) -> None:
    """The intake asks for the same keys' health for every notice: between two expiry
    instants of a key the same verdict object is answered (no new judgement), past one
    a new one, and after refresh() a new one (the listing and its verdicts are dropped)."""
    fpr = fresh.generate("Soon <soon@example.org>", expire="10d")
    t = now()
    health = fresh.health(fpr, t)
    assert health.expires_at is not None
    assert fresh.health(fpr, t + timedelta(days=1)) is health
    assert fresh.health(fpr, health.expires_at - timedelta(microseconds=1)) is health
    after = fresh.health(fpr, health.expires_at)
    assert after is not health and after.expired
    fresh.refresh()
    again = fresh.health(fpr, t)
    assert again is not health and again == health


def test_revoke_through_the_same_keyring_is_seen_at_once(fresh: Keyring) -> None:
    """revoke() drops the cache: health reads revoked and sign_encrypt refuses, no refresh."""
    signer = fresh.generate("Signer <signer@example.org>")
    target = fresh.generate("Target <target@example.org>")
    assert fresh.sign_encrypt(b"x", target, signer, now())  # listing of target cached
    assert fresh.health(target, now()).problem() is None

    fresh.revoke(target)

    health = fresh.health(target, now())
    assert health.revoked
    assert health.problem() == "key is revoked"
    with pytest.raises(GpgError, match="key is revoked"):
        fresh.sign_encrypt(b"x", target, signer, now())
    with pytest.raises(GpgError, match="key is revoked"):
        fresh.encrypt(b"x", target, now())


@pytest.mark.parametrize("how", ["import_key", "import_folder"])
def test_an_import_through_the_same_keyring_is_seen_at_once(
    fresh: Keyring, tmp_path: Path, how: str
) -> None:
    """Importing a key's revocation through this Keyring drops its cached listing."""
    with temp_keyring() as factory:
        target = factory.generate("Target <target@example.org>")
        fresh.import_key(factory.export_public(target))
        signer = fresh.generate("Signer <signer@example.org>")
        assert fresh.sign_encrypt(b"x", target, signer, now())  # listing cached
        factory.revoke(target)
        revoked = factory.export_public(target)
    if how == "import_key":
        fresh.import_key(revoked)
    else:
        folder = tmp_path / "keys"
        folder.mkdir()
        (folder / "target.asc").write_bytes(revoked)
        assert fresh.import_folder(folder).fingerprints == {target}
    assert fresh.health(target, now()).problem() == "key is revoked"
    with pytest.raises(GpgError, match="key is revoked"):
        fresh.sign_encrypt(b"x", target, signer, now())


def test_a_revocation_imported_by_another_keyring_is_seen_after_refresh(
    fresh: Keyring,
) -> None:
    """Another Keyring object on the same home imports a revocation: this one sees it after
    refresh(). Before that gpg itself refuses the revoked key, so nothing is sent anyway."""
    with temp_keyring() as factory:
        target = factory.generate("Target <target@example.org>")
        fresh.import_key(factory.export_public(target))
        signer = fresh.generate("Signer <signer@example.org>")
        assert fresh.sign_encrypt(b"x", target, signer, now())  # listing cached
        factory.revoke(target)
        other = Keyring(fresh.home)
        assert other.import_key(factory.export_public(target)) == (target,)
    assert other.health(target, now()).revoked

    with pytest.raises(GpgError):
        fresh.sign_encrypt(b"x", target, signer, now())  # stale cache, but gpg refuses

    fresh.refresh()
    health = fresh.health(target, now())
    assert health.revoked
    assert health.problem() == "key is revoked"
    with pytest.raises(GpgError, match="key is revoked"):
        fresh.sign_encrypt(b"x", target, signer, now())


def test_sign_encrypt_from_two_threads_shares_one_cache(
    pair: Keys, gpg_runs: list[list[str]]
) -> None:
    """8 notices on a pool of two threads, starting from an empty cache: all succeed,
    each decrypts for its own org and verifies as the identity, and each key is listed
    at most once per thread."""
    pair.daemon.refresh()
    jobs = [(f"notice {n}".encode(), pair.a if n % 2 else pair.b) for n in range(8)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        made = list(
            pool.map(
                lambda job: pair.daemon.sign_encrypt(job[0], job[1], pair.identity, now()), jobs
            )
        )
    sign_runs = [argv for argv in gpg_runs if "--encrypt" in argv]
    assert len(sign_runs) == 8
    assert len(gpg_runs) - len(sign_runs) <= 2 * 2 * 2  # 2 keys, 2 listings, 2 threads
    for (data, fpr), ciphertext in zip(jobs, made, strict=True):
        ring = pair.org_a if fpr == pair.a else pair.org_b
        assert ring.decrypt_verify(ciphertext) == (data, pair.identity)


# -------------------------------------------- who can open a ciphertext (only_for)


def gpg_in(ring: Keyring, args: list[str], data: bytes) -> bytes:
    """Run gpg as a mail client would on `ring`, with `data` on stdin."""
    command = ["gpg", "--homedir", str(ring.home), "--batch", "--yes", "--no-tty"]
    command += ["--pinentry-mode", "loopback", "--passphrase", "pw", "--trust-model", "always"]
    proc = subprocess.run([*command, *args], input=data, capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"gpg {args[:3]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def to_identity(pair: Keys, *extra: str, plaintext: bytes = MESSAGE) -> bytes:
    """Org A's armored mail to the identity key, signed by Org A; `extra` gpg options."""
    args = ["--armor", "--sign", "--local-user", pair.a + "!", "--encrypt"]
    return gpg_in(pair.org_a, [*args, "--recipient", pair.identity, *extra], plaintext)


def test_only_for_gives_the_packets_of_a_message_for_that_key_alone(pair: Keys) -> None:
    """A message encrypted to the identity key alone is recognised as only the identity's
    to open, and its binary packets are exactly what gpg --dearmor gives, also when the
    armor carries Version/Comment headers and CRLF line ends; asked for another key, or
    for a key given by a short id, the answer is None."""
    armored = to_identity(pair)
    binary = gpg_in(pair.org_a, ["--dearmor"], armored)
    assert pair.daemon.only_for(armored, pair.identity) == binary
    assert pair.daemon.only_for(armored, pair.identity.lower()) == binary
    lines = armored.split(b"\n")
    assert lines[0] == b"-----BEGIN PGP MESSAGE-----" and lines[1] == b""
    dressed = b"\r\n".join(
        [lines[0], b"Version: GnuPG v2", b"Comment: https://example.org/ k\xc3\xa9y", *lines[1:]]
    )
    assert pair.daemon.only_for(dressed, pair.identity) == binary
    assert pair.daemon.only_for(armored, pair.a) is None
    assert pair.daemon.only_for(armored, pair.identity[-16:]) is None


def test_only_for_keeps_only_the_session_key_gpg_opened_the_mail_with(pair: Keys) -> None:
    """decrypt_signed_by names the key gpg opened a message with (the identity's
    encryption subkey); only_for keeps the message's session key for the identity
    only when that is the key named, so what is stored opens as the mail did."""
    armored = to_identity(pair)
    _, _, opened = pair.daemon.decrypt_signed_by(armored)
    assert opened == identity_subkey(pair)
    kept = pair.daemon.only_for(armored, pair.identity, opened_with=opened)
    assert kept == gpg_in(pair.org_a, ["--dearmor"], armored)
    assert pair.daemon.only_for(armored, pair.identity, opened_with="0" * 16) is None


UNSIGNED = ["--skip-verify", "--decrypt"]  # Org B's ring lacks Org A's key


def identity_subkey(pair: Keys) -> str:
    """Key id of the identity's encryption subkey, as gpg lists it."""
    (subkey,) = subkey_fingerprints(pair.daemon, pair.identity)
    return subkey[-16:]


@pytest.fixture(scope="module")
def client(pair: Keys) -> Iterator[Keyring]:
    """Org A's mail client: Org A's secret key, the identity's and Org B's public keys."""
    with temp_keyring() as ring:
        raw_gpg(ring, "--import", str(_secret_file(pair.org_a, pair.a, ring)))
        ring.import_key(pair.daemon.export_public(pair.identity))
        ring.import_key(pair.org_b.export_public(pair.b))
        yield ring


@pytest.mark.parametrize(
    ("extra", "size"),
    [
        (["--recipient", "A"], 0),
        (["--hidden-recipient", "B"], 0),
        (["--symmetric"], 0),
        (["--recipient", "A", "--hidden-recipient", "B", "--symmetric"], 300_000),
    ],
    ids=["encrypt-to-self", "hidden-recipient", "passphrase", "all-three-in-chunks"],
)
def test_only_for_keeps_the_identitys_session_key_alone(
    pair: Keys, client: Keyring, extra: list[str], size: int
) -> None:
    """Org A's signed mail to the identity key and also to Org A's own key, to Org B as
    a hidden recipient, to a passphrase, or to all three (300 KB of random data: the
    data packet is in partial lengths): what is kept is exactly the identity's session
    key packet and the data packet, byte for byte as sent; it opens with the identity
    key to the same plaintext, and no longer with Org A's key, Org B's or the
    passphrase, one of which opened the mail as sent."""
    extra = [{"A": pair.a, "B": pair.b}.get(arg, arg) for arg in extra]
    plaintext = MESSAGE + os.urandom(size)
    args = ["--armor", "--sign", "--local-user", pair.a + "!", "--encrypt"]
    sent = gpg_in(client, [*args, "--recipient", pair.identity, *extra], plaintext)
    binary = dearmored(client, sent)
    listed = packets(client, binary)
    (mine,) = [packet for packet in listed if packet.keyid == identity_subkey(pair)]
    data = listed[-1]
    # A session key for the identity and for each option, then the data.
    assert data.tag == 18 and len(listed) == 2 + sum(arg.startswith("--") for arg in extra)
    assert data.partial == (size > 0)
    others = (pair.org_a, pair.org_b)  # gpg_in gives them the passphrase too
    opened = [gpg_in(ring, UNSIGNED, sent) for ring in others if _opens(ring, sent)]
    assert opened and all(plain == plaintext for plain in opened)

    kept = pair.daemon.only_for(sent, pair.identity)

    assert kept == binary[mine.start : mine.end] + binary[data.start :]
    assert pair.daemon.decrypt(kept) == plaintext
    for ring in others:
        with pytest.raises(RuntimeError, match="No secret key"):
            gpg_in(ring, UNSIGNED, kept)
    session_keys = [(p.tag, p.keyid) for p in packets(client, kept) if p.tag in (1, 3)]
    assert session_keys == [(1, identity_subkey(pair))]


def _opens(ring: Keyring, message: bytes) -> bool:
    try:
        gpg_in(ring, UNSIGNED, message)
    except RuntimeError:
        return False
    return True


def test_only_for_is_none_unless_one_named_session_key_is_the_identitys(pair: Keys) -> None:
    """None for: the identity's session key packet twice (gpg still opens it, but which
    copy it used is not known), a hidden recipient's ahead of the identity's, a message
    for Org A and a passphrase only, and a packet of another kind (a marker) in front
    of the data."""
    sent = to_identity(pair, "--recipient", pair.a)
    binary = dearmored(pair.org_a, sent)
    listed = packets(pair.org_a, binary)
    (mine,) = [packet for packet in listed if packet.keyid == identity_subkey(pair)]
    twice = binary[mine.start : mine.end] + binary
    assert pair.daemon.decrypt(twice) == MESSAGE
    marker = b"\xca\x03PGP"  # RFC 9580 section 5.8, new format
    marked = binary[: listed[-1].start] + marker + binary[listed[-1].start :]
    assert gpg_in(pair.org_a, ["--decrypt"], marked) == MESSAGE
    hidden_first = ["--hidden-recipient", pair.a, "--recipient", pair.identity]
    for n, message in enumerate(
        [
            armored(pair.org_a, twice),
            gpg_in(pair.org_a, ["--armor", "--encrypt", *hidden_first], MESSAGE),
            gpg_in(pair.org_a, ["--armor", "--encrypt", "--symmetric", "-r", pair.a], MESSAGE),
            armored(pair.org_a, marked),
        ]
    ):
        assert pair.daemon.only_for(message, pair.identity) is None, n


def test_only_for_never_keeps_a_session_key_gpg_did_not_open_the_mail_with(
    pair: Keys,
) -> None:
    """A hidden recipient's session key for the identity, then a named one for the
    identity from another message: gpg opens the mail with the hidden one (it comes
    first), so keeping the named one would store a message that never opens: None.
    The other way round, with the named one damaged so gpg cannot decrypt it, gpg goes
    on to the hidden one but fails the run, and decrypt_signed (the intake's) refuses
    the mail, so only_for's answer for it is never used."""
    hidden = gpg_in(pair.org_a, ["--encrypt", "--hidden-recipient", pair.identity], MESSAGE)
    other = gpg_in(pair.org_a, ["--encrypt", "--recipient", pair.identity], b"other")
    first = packets(pair.org_a, hidden)[0]
    named = packets(pair.org_a, other)[0]
    assert first.keyid == "0" * 16 and named.keyid == identity_subkey(pair)
    crafted = hidden[: first.end] + other[: named.end] + hidden[first.end :]
    assert pair.daemon.decrypt_signed(armored(pair.org_a, crafted)) == (MESSAGE, None)
    with pytest.raises(GpgError):
        pair.daemon.decrypt(hidden[: first.start] + other[: named.end] + hidden[first.end :])
    assert pair.daemon.only_for(armored(pair.org_a, crafted), pair.identity) is None
    damaged = bytearray(other[: named.end])
    damaged[-20] ^= 0xFF  # inside the wrapped session key
    turned = bytes(damaged) + hidden
    with pytest.raises(GpgError):
        pair.daemon.decrypt_signed(armored(pair.org_a, turned))


def test_only_for_is_none_for_anything_odd_and_never_raises(pair: Keys) -> None:
    """Garbage, a cut or damaged armor, a header with no empty line after it, text
    around the block, a public key block, and a message with a packet after its
    encrypted data are all None, never an exception."""
    armored = to_identity(pair)
    binary = gpg_in(pair.org_a, ["--dearmor"], armored)
    lines = armored.split(b"\n")
    body = lines[2:-2]  # between the empty line and the END line (and last empty)
    glued = gpg_in(pair.org_a, ["--enarmor"], binary + binary).replace(b"ARMORED FILE", b"MESSAGE")
    assert pair.daemon.only_for(glued, pair.identity) is None  # the same data twice
    odd = [
        b"",
        b"garbage",
        b"\x85\x01\x02",
        binary,  # binary, not armored
        armored[: len(armored) // 2],
        armored.replace(lines[3], lines[3][:-1] + b"!"),  # not base64
        armored.replace(lines[3], lines[3][:-2]),  # a line cut short
        b"\n".join([lines[0], b"Version: x", *body, *lines[-2:]]),  # no empty line
        b"hello\n" + armored,
        armored + b"PS: hi\n",
        pair.daemon.export_public(pair.identity),
    ]
    for n, data in enumerate(odd):
        assert pair.daemon.only_for(data, pair.identity) is None, n


def test_decrypt_reads_a_sealed_mail_whatever_became_of_its_signer(
    world: World, fresh: Keyring
) -> None:
    """Unsealing skips signature checks: Bob's signed mail to Alice decrypts in a keyring
    that never had Bob's key (where checking the signature would fail). A passphrase-only
    message, a damaged one and a plaintext over max_output are refused."""
    fresh.import_key(world.alice_ring.export_public(world.alice))
    raw_gpg(fresh, "--import", str(_secret_file(world.bob_ring, world.bob, fresh)))
    signed = gpg_in(
        fresh,
        ["--sign", "--local-user", world.bob + "!", "--encrypt", "--recipient", world.alice],
        MESSAGE,
    )
    assert world.alice_ring.decrypt(signed) == MESSAGE
    assert world.alice_ring.decrypt_signed(signed) == (MESSAGE, None)  # unknown signer
    with pytest.raises(GpgError):
        world.alice_ring.decrypt(gpg_in(fresh, ["--symmetric"], MESSAGE))
    damaged = bytearray(signed)
    damaged[-20] ^= 0x01
    with pytest.raises(GpgError):
        world.alice_ring.decrypt(bytes(damaged))
    zeros = gpg_in(fresh, ["--encrypt", "--recipient", world.alice], bytes(4096))
    assert world.alice_ring.decrypt(zeros, max_output=4096) == bytes(4096)
    with pytest.raises(GpgError):
        world.alice_ring.decrypt(zeros, max_output=4095)
    assert world.alice_ring.decrypt(zeros, max_output=None) == bytes(4096)


def _secret_file(ring: Keyring, fpr: str, into: Keyring) -> Path:
    path = into.home / "secret.asc"
    path.write_bytes(export_secret(ring, fpr))
    return path


def test_no_gpg_run_waits_for_the_lock_on_the_random_seed_file() -> None:
    """Two gpg runs at once (the pool has two threads) do not wait for each other:
    no run of maild's takes the lock on the home's `random_seed` file, which gpg
    otherwise holds while it reads and rewrites the file, and a run that finds it
    taken sleeps a quarter of a second or more before it tries again. Here another
    process holds that lock throughout: every kind of run still finishes at once."""
    home = short_home()
    ring = Keyring(home, timeout=10.0)
    try:
        me = ring.generate("WG <wg@example.org>")  # key making may keep its seed file
        fd = os.open(home / "random_seed", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # gpg is another process

            def runs() -> None:
                ring.refresh()
                assert ring.health(me, now()).problem() is None  # listings (python-gnupg)
                sealed = ring.sign_encrypt(b"notice", me, me, now())  # maild's own runs
                assert ring.decrypt_verify(sealed) == (b"notice", me)
                ring.detach_sign(b"data", me)
                ring.encrypt(b"data", me, now())

            failed: list[BaseException] = []

            def guarded() -> None:
                try:
                    runs()
                except BaseException as exc:
                    failed.append(exc)

            worker = threading.Thread(target=guarded, daemon=True)
            worker.start()
            worker.join(30)  # python-gnupg has no timeout of its own
            assert not worker.is_alive(), "a gpg run is waiting for the seed file's lock"
            assert failed == []
        finally:
            os.close(fd)  # drops the lock
    finally:
        ring.close()
        shutil.rmtree(home, ignore_errors=True)


def test_a_stuck_gpg_is_killed_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gpg that never finishes (it reads nothing and does not exit) costs one
    timeout, not a stuck daemon: the call fails saying so, even with more input
    waiting than a pipe holds, and the process is killed, not waited for."""
    home = short_home()
    ring = Keyring(home, timeout=1.0)
    try:
        shim = tmp_path / "bin"
        shim.mkdir()
        started, finished = tmp_path / "gpg.pid", tmp_path / "gpg.finished"
        fake = shim / "gpg"
        fake.write_text(
            f"#!{sys.executable}\n"
            "import os, time\n"
            f"open({str(started)!r}, 'w').write(str(os.getpid()))\n"
            "time.sleep(20)\n"  # never read stdin: the writer must not block on it
            f"open({str(finished)!r}, 'w').write('ran to its end')\n"
        )
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
        with pytest.raises(GpgError, match=r"gpg timed out after 1s"):
            ring.decrypt_signed(b"-----BEGIN PGP MESSAGE-----\n" + b"A" * 300_000)
        pid = int(started.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not finished.exists()  # killed at the timeout, not left to finish
    finally:
        monkeypatch.undo()
        ring.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize(
    "data", [b"\xff" * 2_000_000, b""], ids=["refused-before-read-whole", "empty"]
)
def test_input_gpg_stops_reading_or_never_gets_is_a_clear_error(data: bytes) -> None:
    """Input gpg refuses before reading it all (more than a pipe holds: gpg
    exits while maild is still writing) and empty input each fail as a gpg
    error naming what gpg said, not a broken pipe or a wait for ever."""
    with temp_keyring() as ring, pytest.raises(GpgError, match=r"gpg failed to decrypt: \S"):
        ring.decrypt_signed(data)
