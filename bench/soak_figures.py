"""The soak's figures: gpg operations counted while it runs, and the table it prints."""

from __future__ import annotations

import argparse
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.soak_plan import START
from maild.adapters.gpg import Keyring

GPG_OPERATIONS = ("sign_encrypt", "detach_sign", "encrypt", "decrypt", "decrypt_signed")
GPG_KEYS = ("_list_one", "_import_public")  # key listings and imports


class GpgCount:
    """Counts calls of the Keyring's gpg operations (one gpg process each) while active."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> GpgCount:
        for name in (*GPG_OPERATIONS, *GPG_KEYS):
            original = self._saved[name] = getattr(Keyring, name)
            setattr(Keyring, name, self._counting(name, original))
        return self

    def _counting(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] += 1
            return original(*args, **kwargs)

        return counted

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(Keyring, name, original)


def figures(
    c: Counter[str],
    sent: int,
    refused: list[str],
    gpg: GpgCount,
    args: argparse.Namespace,
    keys_s: float,
    sim_s: float,
    rss_mb: float,
    end: datetime,
) -> None:
    crypto = sum(gpg.calls[n] for n in GPG_OPERATIONS)
    by_op = ", ".join(f"{n} {gpg.calls[n]}" for n in GPG_OPERATIONS if gpg.calls[n])
    changes = f"{c['submit']} submitted, {c['reschedule']} rescheduled, {c['cancel']} cancelled"
    changes += f", {c['disclose-now']} disclosed early, {len(refused)} refused"
    kinds = f"{c['sent notice']} notices, {c['sent preannouncement']} pre-announcements"
    kinds += f", {c['sent disclosure']} disclosures, {c['sent alert']} alerts"
    days = (end - START).total_seconds() / 86400
    split = ", ".join(f"{c[f'ms {w}'] / 1000:.1f} s" for w in ("ticks", "restarts", "desk"))
    missed = c["crash armed"] - c["crash"]
    unfired = f" ({missed} more armed, but no later release was big enough)" if missed else ""
    rows = [
        ("scenario", f"{args.advisories} advisories, {args.orgs} orgs, {args.days} days"),
        ("seed", str(args.seed)),
        ("simulated span", f"{days:.1f} days ({c['tick']} ticks)"),
        ("desk changes", changes),
        (
            "orgs list",
            f"{c['remove-org']} removed, {c['rekey-org']} re-keyed, {c['add-org']} added",
        ),
        ("wall time", f"{sim_s:.1f} s (+ {keys_s:.1f} s making keys, not counted)"),
        ("  in ticks, restarts, desk", f"{split}"),
        ("messages sent", f"{sent} ({kinds})"),
        ("messages/s", f"{sent / sim_s:.1f}"),
        ("gpg operations", f"{crypto} ({by_op})"),
        ("gpg key listings, imports", f"{gpg.calls['_list_one']}, {gpg.calls['_import_public']}"),
        ("restarts", f"{c['restart']} clean + {c['crash']} crashes mid-release{unfired}"),
        ("rows recovered from sending", str(c["recovered"])),
        ("clock steps", f"{c['clock step']} (back 1 h after a release, twice; forward 1 day)"),
        ("peak RSS", f"{rss_mb:.1f} MB (VmHWM of the one process: harness, sink, daemon)"),
        ("  mail the sink keeps", f"{c['bytes received'] / 2**20:.1f} MB (for the checks)"),
        ("possible duplicates", f"{c['possible duplicate']} flagged"),
        ("received twice", str(c["duplicate receipt"])),
        ("blocked notices", str(c["blocked notices"])),
    ]
    print("\nfigures\n")
    width = max(len(r[0]) for r in rows)
    print(f"| {'figure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    for line in refused:
        print(f"  refused: {line}")


def high_water_kb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    return 0.0
