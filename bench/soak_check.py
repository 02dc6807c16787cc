"""The soak's invariants, checked at the end against what the sink received, what the
harness did (and when, on the soak's clock), and what the store holds.

The harness is the oracle: it records every desk change with the plan the desk gave,
and, at the first tick at or after an advisory's notice time, who was on the orgs list
with a usable key then (`Tracked.expected`). Each message the sink accepted is stamped
with the soak clock's time and the harness's sequence number when it arrived.
"""

from __future__ import annotations

import bisect
import re
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path

from maild.adapters.gpg import GpgError, Keyring
from maild.adapters.sink import Received
from maild.adapters.store import SqliteStore
from maild.domain.models import (
    EMBARGOED_MAIL,
    AdvisoryRecord,
    AdvisoryState,
    MessageKind,
    MessagePurpose,
    MessageRecord,
    MessageState,
)
from maild.domain.policy import Plan
from maild.service.scheduler import due_time

ARMORED = re.compile(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", re.S)
SECRETS = re.compile(rb"SOAK-SECRET-|SOAK-TITLE-")
Triple = tuple[str, str, str]  # (org id, address, pinned fingerprint)
SHOWN = 4  # problems shown per failed invariant


@dataclass(frozen=True)
class Stamp:
    """One message the sink accepted, with the soak clock's time when it arrived."""

    seq: int
    now: datetime
    received: Received
    message_id: str


@dataclass
class Tracked:
    """What the harness did to one advisory, and whom it expects notices to reach."""

    id: str
    marker: str
    history: list[tuple[int, AdvisoryRecord]] = field(default_factory=list)  # desk results
    cancelled_seq: int | None = None
    expected: set[Triple] | None = None  # None: no notice was due while it was embargoed

    def plan_at(self, seq: int) -> Plan:
        """The plan in force at harness step `seq` (the last desk result before it)."""
        i = bisect.bisect_left([s for s, _ in self.history], seq)
        return self.history[max(i - 1, 0)][1].plan

    @property
    def final(self) -> Plan:
        return self.history[-1][1].plan


@dataclass(frozen=True)
class Result:
    name: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def message_id_of(data: bytes) -> str:
    return str(BytesHeaderParser().parsebytes(data).get("Message-ID", "")).strip()


@dataclass
class Checker:
    tracked: dict[str, Tracked]
    stamps: list[Stamp]
    store: SqliteStore
    end: datetime
    rows: dict[str, MessageRecord] = field(default_factory=dict)
    records: dict[str, AdvisoryRecord] = field(default_factory=dict)
    by_message: dict[str, list[Stamp]] = field(default_factory=dict)
    by_advisory: dict[str, list[MessageRecord]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for record in self.store.list_advisories():
            self.records[record.id] = record
            self.by_advisory[record.id] = self.store.messages(record.id)
            for m in self.by_advisory[record.id]:
                self.rows[m.message_id] = m
        for m in self.store.find_messages():  # and those of no advisory (key alerts)
            self.rows.setdefault(m.message_id, m)
        for s in self.stamps:
            self.by_message.setdefault(s.message_id, []).append(s)

    def received(self, m: MessageRecord) -> list[Stamp]:
        return self.by_message.get(m.message_id, [])

    def advisory_mail(self) -> Iterable[tuple[Tracked, MessageRecord, Stamp]]:
        for s in self.stamps:
            m = self.rows.get(s.message_id)
            if m is not None and m.advisory_id in self.tracked:
                yield self.tracked[m.advisory_id], m, s

    # -- the invariants ------------------------------------------------------------
    def once(self) -> Result:
        """Every accepted message is a row of the store, accepted by the sink once, or
        twice only when the row is flagged a possible duplicate (resent after a crash)."""
        missing = [mid for mid in self.by_message if mid not in self.rows]
        problems = [f"{mid}: not a message of the store" for mid in missing]
        for mid, stamps in self.by_message.items():
            m = self.rows.get(mid)
            if m is not None and len(stamps) > 1 + m.possible_duplicate:
                problems.append(f"{m.kind} {mid} to {m.address} accepted {len(stamps)} times")
        return Result("each message accepted once (twice only if a flagged duplicate)", problems)

    def notices_reached(self) -> Result:
        """Every notice that should have gone (org on the list with a usable key at the
        notice time, before disclosure) was accepted exactly once, and no other."""
        problems = []
        for t in self.tracked.values():
            notices = [
                m
                for m in self.by_advisory.get(t.id, [])
                if m.kind is MessageKind.NOTICE and m.purpose is MessagePurpose.ORIGINAL
            ]
            sent: Counter[Triple] = Counter()
            for m in notices:
                if self.received(m):
                    key = (m.org or "", m.address, m.fingerprint or "")
                    sent[key] += 1
                    if m.state is not MessageState.ACCEPTED:
                        problems.append(f"{t.id}: {m.address} received but stored {m.state}")
            expected = t.expected or set()
            for key in expected:
                if sent[key] != 1:
                    problems.append(f"{t.id}: notice to {key[1]} sent {sent[key]} times, not 1")
            for key in sent.keys() - expected:
                problems.append(f"{t.id}: notice to {key[1]} ({key[0]}) was not expected")
        return Result("every notice due went exactly once, to the list at notice time", problems)

    def never_early(self) -> Result:
        """Nothing was accepted before its time (on the soak's clock), by the plan in
        force when it was sent."""
        problems = []
        for t, m, s in self.advisory_mail():
            if m.purpose is not MessagePurpose.ORIGINAL or m.kind not in _RELEASED:
                continue
            plan = t.plan_at(s.seq)
            due = _release(plan, m.kind)
            if due is None or s.now < due:
                problems.append(f"{t.id}: {m.kind} to {m.address} at {s.now}, due {due}")
        return Result("nothing sent before its time", problems)

    def nothing_after_disclosure(self) -> Result:
        """No notice or pre-announcement (withdrawals aside) at or after disclosure."""
        problems = []
        for t, m, s in self.advisory_mail():
            if m.kind in EMBARGOED_MAIL and m.purpose is not MessagePurpose.WITHDRAWAL:
                disclose_at = t.plan_at(s.seq).disclose_at
                if s.now >= disclose_at:
                    problems.append(f"{t.id}: {m.kind} at {s.now}, disclosure {disclose_at}")
        return Result("no notice or pre-announcement at or after disclosure", problems)

    def disclosures(self) -> Result:
        """Every advisory whose disclosure time came (and was not cancelled) was
        disclosed once, at or after that time; no other disclosure went."""
        problems = []
        for t in self.tracked.values():
            if not t.history:
                continue
            rows = [m for m in self.by_advisory.get(t.id, []) if m.kind is MessageKind.DISCLOSURE]
            due = t.cancelled_seq is None and t.final.disclose_at <= self.end
            stamps = [s for m in rows for s in self.received(m)]
            if not due:
                if stamps:
                    problems.append(f"{t.id}: disclosed though cancelled or not yet due")
                continue
            record = self.records[t.id]
            if record.state is not AdvisoryState.DISCLOSED:
                problems.append(f"{t.id}: state {record.state} after its disclosure time")
            if len(rows) != 1 or len({s.message_id for s in stamps}) != 1:
                problems.append(f"{t.id}: {len(rows)} disclosure rows, {len(stamps)} received")
            problems += [
                f"{t.id}: disclosed at {s.now}, before {t.final.disclose_at}"
                for s in stamps
                if s.now < t.final.disclose_at
            ]
        return Result("every disclosure sent once, at or after its time", problems)

    def cancelled(self) -> Result:
        """A cancelled advisory's unsent mail never went (withdrawals go instead)."""
        problems = []
        for t, m, s in self.advisory_mail():
            if t.cancelled_seq is None or s.seq < t.cancelled_seq:
                continue
            if m.kind in (MessageKind.ALERT, MessageKind.REPLY):
                continue
            if m.purpose is not MessagePurpose.WITHDRAWAL:
                problems.append(f"{t.id}: {m.kind} ({m.purpose}) sent after it was cancelled")
        return Result("cancelled advisories' unsent mail never sent", problems)

    def no_plaintext(self) -> Result:
        """Notices and alerts are multipart/encrypted with no advisory text in clear;
        pre-announcements hold neither title nor text; disclosures do (which shows the
        search finds what it looks for)."""
        problems = []
        disclosed = 0
        for s in self.stamps:
            m = self.rows.get(s.message_id)
            if m is None:
                continue
            data = s.received.data
            head = data.split(b"\r\n\r\n", 1)[0]
            if (
                m.kind in (MessageKind.NOTICE, MessageKind.ALERT)
                and b"multipart/encrypted" not in head
            ):
                problems.append(f"{m.kind} {m.message_id} is not multipart/encrypted")
            if m.kind is MessageKind.DISCLOSURE:
                disclosed += bool(SECRETS.search(data))
            elif SECRETS.search(data):
                problems.append(f"{m.kind} {m.message_id} holds advisory text in clear")
        if not disclosed:
            problems.append("no disclosure held its advisory's marker: the search is broken")
        return Result(
            "no advisory text in clear in any notice, alert or pre-announcement", problems
        )

    def decrypt_sample(self, orgkeys: Keyring, identity: str, sample: Sequence[Stamp]) -> Result:
        """A sample of notices: each holds one session key, for its org's pinned key,
        decrypts with that key to its own advisory's text, signed by maild's key."""
        problems = []
        for s in sample:
            m = self.rows[s.message_id]
            armored = ARMORED.search(s.received.data)
            if armored is None or m.fingerprint is None or m.advisory_id is None:
                problems.append(f"{m.message_id}: no ciphertext or no pinned key")
                continue
            ids = _session_key_ids(orgkeys.home, armored.group(0))
            wanted = _encryption_key_ids(orgkeys.home, m.fingerprint)
            if len(ids) != 1 or not set(ids) <= wanted:
                problems.append(f"{m.message_id}: session keys for {ids}, want one of {wanted}")
            try:
                plain, signature = orgkeys.decrypt_signed(armored.group(0))
            except GpgError as exc:
                problems.append(f"{m.message_id}: {exc}")
                continue
            if self.tracked[m.advisory_id].marker.encode() not in plain:
                problems.append(f"{m.message_id}: decrypts to another advisory's text")
            if signature is None or signature.fingerprint != identity:
                problems.append(f"{m.message_id}: not signed by maild's key")
        return Result(f"{len(sample)} notices decrypt only with their org's key", problems)

    def settled(self) -> Result:
        """Nothing left `sending`, nor queued or deferred with its due time past."""
        problems = []
        for m in self.rows.values():
            record = self.records.get(m.advisory_id or "")
            if m.state is MessageState.SENDING:
                problems.append(f"{m.kind} {m.message_id} left sending")
            elif record is not None and (due := due_time(record, m)) and due <= self.end:
                problems.append(
                    f"{m.advisory_id} ({record.state}): {m.kind} ({m.purpose}) to {m.address} "
                    f"{m.state}, due {due}"
                )
        return Result("nothing left sending, or queued past its due time", problems)

    def history(self) -> Result:
        check = self.store.verify_history()
        return Result(
            f"the audit log's hash chain holds ({check.events} events)",
            [] if check.intact else [check.describe()],
        )


def integrity(database: Path) -> Result:
    conn = sqlite3.connect(database)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    return Result("PRAGMA integrity_check", [] if rows == ["ok"] else rows)


_RELEASED = (MessageKind.NOTICE, MessageKind.PREANNOUNCEMENT, MessageKind.DISCLOSURE)


def _release(plan: Plan, kind: MessageKind) -> datetime | None:
    if kind is MessageKind.NOTICE:
        return plan.notify_at
    if kind is MessageKind.PREANNOUNCEMENT:
        return plan.preannounce_at
    return plan.disclose_at


def _gpg(home: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
        input=data,
        capture_output=True,
        check=False,
        timeout=60,
    )
    return done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")


def _session_key_ids(home: Path, armored: bytes) -> list[str]:
    """Key ids of the public-key encrypted session key packets (nothing decrypted)."""
    out = _gpg(home, "--list-only", "--list-packets", data=armored)
    return [m.upper() for m in re.findall(r":pubkey enc packet:.*keyid ([0-9A-Fa-f]{16})", out)]


def _encryption_key_ids(home: Path, fingerprint: str) -> set[str]:
    out = _gpg(home, "--with-colons", "--list-keys", fingerprint)
    ids = set()
    for line in out.splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub") and len(fields) > 11 and "e" in fields[11]:
            ids.add(fields[4].upper())
    return ids


def report(results: Sequence[Result]) -> bool:
    """Print one PASS or FAIL line per invariant (and the first problems); True if all pass."""
    for r in results:
        print(f"  {'PASS' if r.ok else 'FAIL'}  {r.name}")
        for problem in r.problems[:SHOWN]:
            print(f"          {problem}")
        if len(r.problems) > SHOWN:
            print(f"          ... and {len(r.problems) - SHOWN} more")
    return all(r.ok for r in results)
