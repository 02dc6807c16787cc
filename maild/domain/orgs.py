"""The public list of organisations that receive advance notices (pure).

Structure only: the key checks (present, matching, usable) need gpg and live
in the service layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from email.utils import parseaddr
from enum import StrEnum
from typing import Any

from maild.domain.fields import Table
from maild.domain.tomlsource import LineIndex, SourceError, parse_toml

ORG_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HEX40 = re.compile(r"[0-9A-F]{40}")  # a full fingerprint (use fullmatch)
EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class Basis(StrEnum):
    DISTRIBUTOR = "distributor"
    ALTERNATE_IMPLEMENTATION = "alternate-implementation"
    VENUE = "venue"


class OrgStatus(StrEnum):
    ACTIVE = "active"
    REMOVED = "removed"
    ADHOC = "adhoc"


class RemovalReason(StrEnum):
    NOT_ELIGIBLE = "not-eligible"
    INACTIVE = "inactive"
    CONFIDENTIALITY = "confidentiality"


@dataclass(frozen=True)
class OrgAddress:
    email: str
    key: str  # pinned 40-hex fingerprint, upper case


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    basis: Basis
    status: OrgStatus
    joined: date
    contacts: tuple[str, ...]
    pledge_date: date
    pledge_by: str
    addresses: tuple[OrgAddress, ...]
    removed_date: date | None = None
    removed_reason: RemovalReason | None = None
    line: int | None = None  # where the org starts in orgs.toml, for messages


@dataclass(frozen=True)
class OrgList:
    orgs: tuple[Org, ...]
    problems: tuple[str, ...]  # every structural problem found, org by org

    def get(self, org_id: str) -> Org | None:
        return next((o for o in self.orgs if o.id == org_id), None)

    def statuses(self) -> dict[str, OrgStatus]:
        return {o.id: o.status for o in self.orgs}

    def recipients(self, extra: tuple[str, ...] = ()) -> list[Org]:
        """Who gets a notice: every active org, plus the named extra ones
        (active or ad hoc). Removed orgs never do."""
        return [
            o
            for o in self.orgs
            if o.status is OrgStatus.ACTIVE or (o.status is OrgStatus.ADHOC and o.id in extra)
        ]

    def public(self) -> list[Org]:
        """The public list: active organisations only."""
        return [o for o in self.orgs if o.status is OrgStatus.ACTIVE]


def normalise_fingerprint(value: str) -> str:
    """Upper-case hex with the spaces gpg prints removed; refuses short ids."""
    compact = value.replace(" ", "").upper()
    compact = compact.removeprefix("0X")
    if HEX40.fullmatch(compact):
        return compact
    if re.fullmatch(r"[0-9A-F]{8}|[0-9A-F]{16}", compact):
        raise ValueError(
            f"{value!r} is a short key id; pin the full 40-hex fingerprint "
            "(gpg --with-colons --fingerprint)"
        )
    raise ValueError(f"{value!r} is not a 40-hex OpenPGP fingerprint")


def parse_orgs(text: str, source: str) -> OrgList:
    """Parse orgs.toml. TOML syntax errors raise SourceError; every other
    problem is collected (all of them, org by org) in `problems`, and only
    orgs without problems are kept in `orgs`."""
    data = parse_toml(text, source)
    index = LineIndex(text)
    root = Table(data, source=source, index=index)
    problems: list[str] = []
    try:
        entries = root.tables("org", lambda i, d: f"org {d.get('id', f'#{i + 1}')!s}: ")
        root.reject_unknown()
    except SourceError as exc:
        return OrgList((), (str(exc),))
    orgs: list[Org] = []
    seen_ids: dict[str, str] = {}
    seen_emails: dict[str, str] = {}
    for table in entries:
        org = _parse_org(table)
        problems.extend(table.problems)
        if org is None:
            continue
        clash = seen_ids.get(org.id)
        if clash:
            problems.append(str(table.error("id", f"duplicate id, already used at {clash}")))
            continue
        seen_ids[org.id] = f"line {org.line}"
        ok = True
        for addr in org.addresses:
            other = seen_emails.get(addr.email.lower())
            if other:
                problems.append(
                    str(table.error("address", f"duplicate address {addr.email}, also in {other}"))
                )
                ok = False
            seen_emails[addr.email.lower()] = f"org {org.id}"
        if ok:
            orgs.append(org)
    return OrgList(tuple(orgs), tuple(problems))


def _parse_org(t: Table) -> Org | None:
    before = len(t.problems)
    org_id = t.soft(t.text, "id")
    if org_id is not None and not ORG_ID.match(org_id):
        t.problems.append(
            str(t.error("id", f"{org_id!r} must be lower-case letters, digits and dashes"))
        )
    name = t.soft(t.text, "name")
    basis = t.soft(t.choice, "basis", Basis)
    status = t.soft(t.choice, "status", OrgStatus)
    joined = t.soft(t.day, "joined")
    contacts = t.soft(t.texts, "contacts")
    if contacts is not None:
        _check_contacts(t, contacts)
    pledge = _pledge(t)
    removed = _removed(t, status)
    addresses = _addresses(t, status)
    _soft_unknown(t)
    if len(t.problems) > before:
        return None
    assert org_id and name and basis and status and joined and contacts and pledge
    return Org(
        id=org_id,
        name=name,
        basis=basis,
        status=status,
        joined=joined,
        contacts=contacts,
        pledge_date=pledge[0],
        pledge_by=pledge[1],
        addresses=addresses,
        removed_date=removed[0] if removed else None,
        removed_reason=removed[1] if removed else None,
        line=t.index.line(t.path),
    )


def _check_contacts(t: Table, contacts: tuple[str, ...]) -> None:
    people = set()
    for contact in contacts:
        _, email = parseaddr(contact)
        if not EMAIL.match(email):
            t.problems.append(
                str(t.error("contacts", f"{contact!r} is not 'Name <address@example.org>'"))
            )
        people.add(email.lower())
    if len(people) < 2:
        t.problems.append(
            str(t.error("contacts", f"needs at least two people, found {len(people)}"))
        )


def _pledge(t: Table) -> tuple[date, str] | None:
    table = t.soft(t.table, "pledge", t.label + "pledge.", required=True)
    if table is None:
        return None
    when = table.soft(table.day, "date")
    by = table.soft(table.text, "by")
    _soft_unknown(table)
    t.problems.extend(table.problems)
    return (when, by) if when and by else None


def _removed(t: Table, status: OrgStatus | None) -> tuple[date, RemovalReason] | None:
    table = t.soft(t.table, "removed", t.label + "removed.")
    if status is OrgStatus.REMOVED and table is None and "removed" not in t.data:
        t.problems.append(
            str(t.error("removed", "status is removed: add removed = { date = ..., reason = ... }"))
        )
        return None
    if table is None:
        return None
    if status is not None and status is not OrgStatus.REMOVED:
        t.problems.append(str(t.error("removed", f"is set but status is {status.value}")))
    when = table.soft(table.day, "date")
    reason = table.soft(table.choice, "reason", RemovalReason)
    _soft_unknown(table)
    t.problems.extend(table.problems)
    return (when, reason) if when and reason else None


def _addresses(t: Table, status: OrgStatus | None) -> tuple[OrgAddress, ...]:
    tables = t.soft(t.tables, "address", lambda i, _d: f"{t.label}address[{i + 1}].")
    if tables is None:
        return ()
    if not tables and status is not OrgStatus.REMOVED:
        t.problems.append(str(t.error("address", "needs at least one [[org.address]]")))
    out = []
    for a in tables:
        email = a.soft(a.text, "email")
        if email is not None and not EMAIL.match(email):
            a.problems.append(str(a.error("email", f"{email!r} is not an email address")))
            email = None
        key = a.soft(a.text, "key")
        fpr = None
        if key is not None:
            try:
                fpr = normalise_fingerprint(key)
            except ValueError as exc:
                a.problems.append(str(a.error("key", str(exc))))
        _soft_unknown(a)
        t.problems.extend(a.problems)
        if email and fpr:
            out.append(OrgAddress(email, fpr))
    return tuple(out)


def _soft_unknown(t: Table) -> None:
    try:
        t.reject_unknown()
    except SourceError as exc:
        t.problems.append(str(exc))


def org_public_dict(org: Org) -> dict[str, Any]:
    """What the public list says of an org: never addresses or contacts."""
    return {"id": org.id, "name": org.name, "basis": org.basis.value, "joined": str(org.joined)}
