"""Checks an operator runs before trusting the setup: the orgs list against
the keys folder, and the identity and member keys (time passed in)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from maild.adapters.gpg import FolderImport, KeyHealth
from maild.domain.orgs import OrgList, OrgStatus

EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class Finding:
    problem: bool  # False: a warning, which does not fail the check
    text: str


def check_orgs(
    orgs: OrgList,
    folder: FolderImport,
    health: Callable[[str], KeyHealth],
    now: datetime,
    keys_dir: str,
) -> list[Finding]:
    """Every problem with the list and its keys, org by org, then warnings."""
    findings = [Finding(True, p) for p in folder.problems]
    findings += [Finding(True, p) for p in orgs.problems]
    for org in orgs.orgs:
        if org.status is OrgStatus.REMOVED:
            continue
        for address in org.addresses:
            label = f"org {org.id}: {address.email}"
            if address.key not in folder.fingerprints:
                findings.append(
                    Finding(True, f"{label}: {address.key}: pinned key is not in {keys_dir}")
                )
                continue
            key = health(address.key)
            problem = key.problem()
            if problem is not None:
                findings.append(Finding(True, f"{label}: {address.key}: {problem}"))
            elif key.expires_within(now, EXPIRY_WARNING_DAYS) and key.expires_at:
                findings.append(
                    Finding(
                        False,
                        f"{label}: key {address.key} expires on {key.expires_at.date()} "
                        f"(within {EXPIRY_WARNING_DAYS} days): ask the organisation for a new one",
                    )
                )
    return findings


def check_identity(signing_key: str, key: KeyHealth) -> list[Finding]:
    """The identity key must be present with its secret part, and usable."""
    if not key.present or not key.has_secret:
        return [
            Finding(
                True,
                f"identity.signing_key {signing_key}: no secret key with this fingerprint "
                "in gnupg_home",
            )
        ]
    if key.revoked or key.expired:
        return [Finding(True, f"identity.signing_key {signing_key}: {key.problem()}")]
    if not key.can_encrypt:
        return [
            Finding(
                True,
                f"identity.signing_key {signing_key}: needs an encryption subkey "
                "(submissions are encrypted to it, and the queue is sealed with it)",
            )
        ]
    return []


def check_members(
    members: tuple[str, ...], folder: FolderImport, health: Callable[[str], KeyHealth]
) -> list[Finding]:
    findings = []
    for fpr in members:
        if fpr not in folder.fingerprints:
            findings.append(Finding(True, f"intake.members {fpr}: not in the keys folder"))
            continue
        problem = health(fpr).problem()  # replies and alerts are encrypted to it
        if problem is not None:
            findings.append(Finding(True, f"intake.members {fpr}: {problem}"))
    return findings
