"""Checks an operator runs before trusting the setup: the orgs list against
the keys folder, the identity and member keys, and the recipients of the
advisories still waiting for their notice time (time passed in)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from maild.adapters.gpg import FolderImport, KeyHealth
from maild.domain.expiry import (
    EXPIRY_WARNING_DAYS,
    KeyState,
    KeyUse,
    at_risk,
    expiring_soon,
    recipients,
)
from maild.domain.models import AdvisoryRecord, AdvisoryState
from maild.domain.orgs import OrgList, OrgStatus

NOT_IN_FOLDER = "pinned key is not in the keys folder"


def key_problem_at(health: KeyHealth, now: datetime) -> str | None:
    """Why a key in the keys folder cannot be encrypted to at `now` (None:
    it can): what its health says, or expired by `now`. (A key not in the
    folder is NOT_IN_FOLDER, and callers say so before any gpg listing.)"""
    if (problem := health.problem()) is not None:
        return problem
    if health.expires_at is not None and health.expires_at <= now:
        return f"key expired on {health.expires_at.astimezone(UTC).date().isoformat()}"
    return None


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
    members: tuple[str, ...],
    folder: FolderImport,
    health: Callable[[str], KeyHealth],
    now: datetime,
) -> list[Finding]:
    """Each member's key must be in the keys folder and usable; one that
    expires within 30 days is a warning."""
    findings = []
    for fpr in members:
        if fpr not in folder.fingerprints:
            findings.append(Finding(True, f"intake.members {fpr}: not in the keys folder"))
            continue
        key = health(fpr)
        problem = key.problem()  # replies and alerts are encrypted to it
        if problem is not None:
            findings.append(Finding(True, f"intake.members {fpr}: {problem}"))
        elif expiring_soon(KeyState(None, key.expires_at), now) and key.expires_at:
            findings.append(
                Finding(
                    False,
                    f"intake.members {fpr}: key expires on {key.expires_at.date()} "
                    f"(within {EXPIRY_WARNING_DAYS} days): ask the member for an extended key",
                )
            )
    return findings


def identity_expiry(signing_key: str, key: KeyHealth, now: datetime) -> list[Finding]:
    """A warning when the usable identity key expires within 30 days."""
    if key.problem() is not None or not expiring_soon(KeyState(None, key.expires_at), now):
        return []
    assert key.expires_at is not None
    return [
        Finding(
            False,
            f"identity.signing_key {signing_key}: key expires on {key.expires_at.date()} "
            f"(within {EXPIRY_WARNING_DAYS} days): extend it in gnupg_home "
            "(gpg --quick-set-expire) and send the new public key to the orgs and members",
        )
    ]


def check_pending_notices(
    advisories: Iterable[AdvisoryRecord],
    orgs: OrgList,
    judge: Callable[[KeyUse], KeyState],
    now: datetime,
) -> list[Finding]:
    """For each scheduled advisory still waiting for its notice time, a
    warning for each recipient that would be blocked then (its key judged
    now by `judge`: already unusable, missing, or expiring before)."""
    findings = []
    for record in advisories:
        notify_at = record.plan.notify_at
        if record.state is not AdvisoryState.SCHEDULED or notify_at is None or notify_at <= now:
            continue
        for risk in at_risk(recipients(orgs, record.meta.extra_recipients), judge, notify_at):
            use = risk.use
            findings.append(
                Finding(
                    False,
                    f"advisory {record.id} (notices at {notify_at.isoformat()}): "
                    f"org {use.org}: {use.address}: key {use.fingerprint}: "
                    f"would be blocked at the notice time: {risk.reason}",
                )
            )
    return findings
