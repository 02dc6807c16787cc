"""SIGHUP: read the config, the orgs list, the keys folder and the calendar
again, without losing or re-sending anything.

A reload is all or nothing. The new files are read and checked as at start;
if anything is wrong (a TOML error, a broken orgs list, an unusable identity
key, a setting that only a restart can change) the running configuration
stays and the reason is logged. Otherwise the dispatcher and the intake take
the new settings between two ticks: the next tick brings every advisory in
line with the new list (removed orgs are cancelled, new ones get a notice),
and a notice already prepared is prepared again only if its organisation's
entry or its key changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from maild import config
from maild.config import Config
from maild.domain.models import MessageKind, MessageState
from maild.domain.orgs import OrgList
from maild.service.embargo import UserError
from maild.service.ports import Store
from maild.service.setup import Setup

RUN_SECTIONS = ("daemon", "identity", "keys", "orgs", "smtp", "intake", "announce")
# [intake] settings the listener was started with.
LISTENER_KEYS = {
    "host": "listen",
    "port": "listen",
    "addresses": "addresses",
    "hostname": "hostname",
    "max_size": "max_size",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
    "require_tls": "require_tls",
    "timeout": "timeout",
    "max_commands": "max_commands",
}
WAITING = (MessageState.QUEUED, MessageState.DEFERRED, MessageState.BLOCKED)


@dataclass(frozen=True)
class Reloaded:
    """A checked new setup, and what the running one saw before it."""

    setup: Setup
    warnings: list[str]
    keys_before: Mapping[str, frozenset[str]]  # fingerprint -> encryption subkey ids


def restart_only(old: Config, new: Config) -> list[str]:
    """The settings that differ and that only a restart can apply: where the
    state lives, the identity the queue is sealed to, and the listener."""
    changed = [
        f"[{name}]" for name in ("daemon", "identity") if getattr(old, name) != getattr(new, name)
    ]
    if old.intake is not None and new.intake is not None:
        keys = {
            f"intake.{key}"
            for field, key in LISTENER_KEYS.items()
            if getattr(old.intake, field) != getattr(new.intake, field)
        }
        changed += sorted(keys)
    return changed


def load(running: Setup, now: datetime) -> Reloaded:
    """Read and check everything again; raises UserError (or the config's
    SourceError) naming the first problem. Keys in the folder are imported
    into the keyring (a pin, not the keyring, decides who gets what), and
    nothing else the daemon runs on is touched."""
    fresh = config.load(running.config.path)
    fresh.require("run", *RUN_SECTIONS)
    changed = restart_only(running.config, fresh)
    if changed:
        raise UserError(
            f"{running.config.path}: {', '.join(changed)} changed; only a restart applies "
            "that (nothing was reloaded)"
        )
    keys_before = {fpr: running.keyring.encryption_subkeys(fpr) for fpr in _pinned(running)}
    new = running.sharing(fresh)
    warnings = new.startup_problems(now)
    return Reloaded(new, warnings, keys_before)


def stale_payloads(store: Store, before: OrgList, reloaded: Reloaded) -> list[str]:
    """Message ids of waiting messages whose prepared bytes no longer fit: a
    notice whose organisation's entry changed (its name is in the text), or
    any message encrypted to a key whose encryption subkeys changed."""
    after, keyring = reloaded.setup.orgs, reloaded.setup.keyring
    changed_keys = {
        fpr
        for fpr, subkeys in reloaded.keys_before.items()
        if keyring.encryption_subkeys(fpr) != subkeys
    }
    stale = []
    for m in store.find_messages(states=WAITING):
        org_changed = (
            m.kind is MessageKind.NOTICE
            and m.org is not None
            and after.get(m.org) not in (None, before.get(m.org))  # removed: cancelled
        )
        if org_changed or (m.fingerprint is not None and m.fingerprint in changed_keys):
            stale.append(m.message_id)
    return stale


def _pinned(setup: Setup) -> set[str]:
    """Every key a message may be encrypted to: the orgs' pins and the members'."""
    pins = {a.key for org in setup.orgs.orgs for a in org.addresses}
    if setup.config.intake is not None:
        pins.update(setup.config.intake.members)
    return pins


def adopt(running: Any, fresh: Any, *, keep: Collection[str]) -> None:
    """Give a running dataclass (the dispatcher, the intake) the settings of
    one freshly built from the new setup: every constructor field but those
    in `keep` (its links and its state stay)."""
    for f in fields(running):
        if f.init and f.name not in keep:
            setattr(running, f.name, getattr(fresh, f.name))
