"""Wiring for one CLI command: config -> orgs list, keyring, store, desk."""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from types import TracebackType

from maild.adapters.gpg import FolderImport, KeyHealth, Keyring
from maild.adapters.store import SqliteStore
from maild.config import Config
from maild.domain.expiry import KeyState, KeyUse
from maild.domain.models import AdvisoryRecord
from maild.domain.orgs import OrgList, parse_orgs
from maild.service.checks import (
    NOT_IN_FOLDER,
    Finding,
    check_identity,
    check_members,
    check_orgs,
    check_pending_notices,
    identity_expiry,
    key_problem_at,
)
from maild.service.embargo import Desk, UserError, find


class Setup:
    """Opens what a command needs, lazily, and closes it on exit."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def sharing(self, config: Config) -> Setup:
        """A setup for another config (a reload) on this one's open store and
        keyring; its orgs list and keys folder are read afresh. Close only
        the original."""
        other = Setup(config)
        for name in ("store", "keyring"):
            other.__dict__[name] = getattr(self, name)
        return other

    def __enter__(self) -> Setup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if "store" in self.__dict__:
            self.store.close()
        if "keyring" in self.__dict__:
            self.keyring.close()

    @cached_property
    def orgs(self) -> OrgList:
        path = self.config.orgs_file
        assert path is not None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read the orgs list: {exc}") from None
        return parse_orgs(text, str(path))

    @cached_property
    def keyring(self) -> Keyring:
        assert self.config.daemon is not None
        return Keyring(self.config.daemon.gnupg_home)

    @cached_property
    def folder(self) -> FolderImport:
        assert self.config.keys_dir is not None
        return self.keyring.import_folder(self.config.keys_dir)

    @cached_property
    def store(self) -> SqliteStore:
        assert self.config.daemon is not None
        return SqliteStore.open(self.config.daemon.database)

    def health(self, fingerprint: str, now: datetime) -> KeyHealth:
        return self.keyring.health(fingerprint, now)

    def key_problem(self, fingerprint: str, now: datetime) -> str | None:
        """Why a pinned key cannot get a notice now (None: it can)."""
        if fingerprint not in self.folder.fingerprints:
            return NOT_IN_FOLDER
        return key_problem_at(self.health(fingerprint, now), now)

    def desk(self, now: datetime, *, validate: bool = True) -> Desk:
        """The embargo desk. With `validate` (submit, reschedule: they plan
        notices), a broken orgs list or identity key is refused first; ending
        or cancelling an embargo must never wait on those."""
        identity = self.config.identity
        assert identity is not None
        if validate:
            self._validate(identity.signing_key, now)
        return Desk(
            store=self.store,
            calendar=self.config.calendar,
            orgs=self.orgs,
            mail_domain=identity.address.rpartition("@")[2],
            seal=lambda data: self.keyring.encrypt(data, identity.signing_key, now),
            key_problem=lambda fpr: self.key_problem(fpr, now),
        )

    def _validate(self, signing_key: str, now: datetime) -> None:
        if self.orgs.problems:
            raise UserError(
                f"{self.orgs.problems[0]} (the orgs list must be valid before any change; "
                "'maild orgs check' lists every problem)"
            )
        found = check_identity(signing_key, self.health(signing_key, now))
        if found:
            raise UserError(f"{self.config.path}: {found[0].text}")

    def get(self, advisory_id: str) -> AdvisoryRecord:
        return find(self.store, advisory_id)

    def org_findings(self, now: datetime) -> list[Finding]:
        return check_orgs(
            self.orgs,
            self.folder,
            lambda fpr: self.health(fpr, now),
            now,
            str(self.config.keys_dir),
        )

    def all_findings(self, now: datetime) -> list[Finding]:
        """Identity, members, then the orgs list: for check-config."""
        identity = self.config.identity
        assert identity is not None
        key = self.health(identity.signing_key, now)
        found = check_identity(identity.signing_key, key)
        found += identity_expiry(identity.signing_key, key, now)
        if self.config.intake is not None:
            found += check_members(
                self.config.intake.members, self.folder, lambda fpr: self.health(fpr, now), now
            )
        return found + self.org_findings(now)

    def startup_problems(self, now: datetime) -> list[str]:
        """What `maild run` (at start or reload) may not run with: a broken
        orgs list or keys folder, or an unusable identity key, raise
        UserError naming the first; other findings (a pinned key expired,
        say) are returned as warnings, since they only block that recipient."""
        problems = [f for f in self.all_findings(now) if f.problem]
        structural = list(self.orgs.problems) + list(self.folder.problems)
        identity = [f.text for f in problems if f.text.startswith("identity.")]
        if structural or identity:
            raise UserError((structural + identity)[0])
        return [f.text for f in problems]

    def watch_findings(self, now: datetime) -> list[Finding]:
        """For `orgs check`, beside the list: warnings for the identity and
        member keys expiring within 30 days, and for the recipients that
        would be blocked at the notice time of an advisory still waiting for
        it. The state database is read only if it exists (never created)."""
        identity = self.config.identity
        assert identity is not None and self.config.daemon is not None
        found = identity_expiry(identity.signing_key, self.health(identity.signing_key, now), now)
        if self.config.intake is not None:
            members = check_members(
                self.config.intake.members, self.folder, lambda fpr: self.health(fpr, now), now
            )
            found += [f for f in members if not f.problem]  # problems: check-config's
        if not self.config.daemon.database.exists():
            return found

        def judge(use: KeyUse) -> KeyState:
            expires_at = self.health(use.fingerprint, now).expires_at
            return KeyState(self.key_problem(use.fingerprint, now), expires_at)

        return found + check_pending_notices(self.store.list_advisories(), self.orgs, judge, now)
