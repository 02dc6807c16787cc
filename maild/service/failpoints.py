"""Named crash points, for the fault tests only (tests/test_faults_crash.py).

`hit(name)` marks a point in maild where a crash must lose nothing. It does
nothing unless the environment variable `MAILD_FAILPOINT`, read once when
this module is imported, names the point: `NAME` kills the process with
SIGKILL at the point's first hit, `NAME@N` at its N-th (a hit may count for
several: `hit(name, times)`). Several points may be armed, comma-separated.
Unset, as it always is outside those tests, a hit costs one dict lookup.

The points:
- `intake-commit`: a member's mail, its signature and its reply written, just
  before that transaction commits (so before the 250);
- `submit-commit`: the embargo desk's submit written, just before it commits
  (`maild submit`, and inside `intake-commit`'s transaction for mail);
- `after-data`: the smarthost answered the end of DATA, before the outcome is
  recorded;
- `release`: receipts committed in a release, one hit per receipt.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "MAILD_FAILPOINT"


def parse(spec: str) -> dict[str, int]:
    """`NAME[@N],...` -> hits left before each named point kills (N >= 1)."""
    armed: dict[str, int] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, at, count = item.partition("@")
        if not name or (at and not (count.isdigit() and int(count) >= 1)):
            raise ValueError(f"{VARIABLE}: {item!r} is not NAME or NAME@N (N a whole number >= 1)")
        armed[name] = int(count) if at else 1
    return armed


_armed = parse(os.environ.get(VARIABLE, ""))


def hit(name: str, times: int = 1) -> None:
    """Kill this process (SIGKILL) if `name` is armed and this is its N-th hit."""
    left = _armed.get(name)
    if left is None:
        return
    _armed[name] = left - times
    if left - times <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
