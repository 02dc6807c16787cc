"""The audit log's hash chain: each event carries the hash of the one before,
so a changed, removed or reordered event shows (pure; no I/O)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from maild.domain.models import Event, NewEvent

GENESIS = "0" * 64


def event_hash(
    prev_hash: str,
    seq: int,
    at: datetime,
    kind: str,
    actor: str,
    advisory_id: str | None,
    data: Mapping[str, object],
) -> str:
    """SHA-256 over the previous hash and a canonical JSON form of the event."""
    body = json.dumps(
        [seq, at.isoformat(), kind, actor, advisory_id, data],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def chain(prev: Event | None, new: NewEvent) -> Event:
    """The stored form of `new`, appended after `prev` (None: the first event)."""
    seq = 1 if prev is None else prev.seq + 1
    prev_hash = GENESIS if prev is None else prev.hash
    digest = event_hash(prev_hash, seq, new.at, new.kind, new.actor, new.advisory_id, new.data)
    return Event(seq, new.at, new.kind, new.actor, new.advisory_id, new.data, prev_hash, digest)


@dataclass(frozen=True)
class ChainCheck:
    intact: bool
    events: int
    problem: str | None = None

    def describe(self) -> str:
        if self.intact:
            noun = "event" if self.events == 1 else "events"
            return f"intact ({self.events} {noun}, hash chain verified)"
        return f"BROKEN: {self.problem}"


def verify(events: Iterable[Event]) -> ChainCheck:
    """Check that `events` (the whole log, in order) form an unbroken chain."""
    prev_hash, expected_seq, count = GENESIS, 1, 0
    for ev in events:
        count += 1
        if ev.seq != expected_seq:
            return ChainCheck(False, count, f"event {expected_seq} is missing (found {ev.seq})")
        if ev.prev_hash != prev_hash:
            return ChainCheck(False, count, f"event {ev.seq} does not follow event {ev.seq - 1}")
        digest = event_hash(prev_hash, ev.seq, ev.at, ev.kind, ev.actor, ev.advisory_id, ev.data)
        if digest != ev.hash:
            return ChainCheck(False, count, f"event {ev.seq} was altered")
        prev_hash, expected_seq = ev.hash, ev.seq + 1
    return ChainCheck(True, count)
