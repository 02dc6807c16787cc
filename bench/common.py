"""Shared helpers for the benchmarks: the machine, logging, timing and the results table."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

_DEVNULL = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (open for the whole run)


def configure_logging() -> None:
    """The daemon's own logging (JSON lines, info and up), written to /dev/null.

    `maild run` renders a JSON line per message sent; the benchmarks keep that cost
    (it is part of a release) but not the noise.
    """
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        logger_factory=structlog.PrintLoggerFactory(_DEVNULL),
        # As `maild run` does: debug lines (the smarthost's per-send line) are dropped.
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    # python-gnupg warns each time gpg exits 2 for a key with no secret part (maild's
    # health check asks): expected here, and one line per recipient.
    logging.getLogger("gnupg").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Figure:
    """One line of the summary table."""

    bench: str
    n: int | None
    what: str
    value: str
    target: str = ""
    met: bool | None = None


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        bench: str,
        n: int | None,
        what: str,
        value: str,
        target: str = "",
        met: bool | None = None,
    ) -> None:
        self.figures.append(Figure(bench, n, what, value, target, met))
        mark = "" if met is None else ("  [target met]" if met else "  [target MISSED]")
        where = f"N={n}" if n is not None else ""
        print(f"    {bench:<12} {where:<7} {what:<46} {value:>14}  {target}{mark}", flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(measured: Sequence[float], around: Sequence[float]) -> float:
    """The median, over interleaved runs, of each measured run against the mean of
    the baseline runs on either side of it (run k between around[k] and
    around[k + 1]). Runs next to each other share the load of the moment, which on
    a shared machine drifts by tens of percent within a minute: a pair of medians
    taken apart would compare a quiet moment of one with a loaded one of the other."""
    assert len(around) == len(measured) + 1, "one baseline run before each, one after"
    return median([m / ((around[k] + around[k + 1]) / 2) for k, m in enumerate(measured)])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def machine() -> dict[str, str]:
    """nproc, CPU model, Python, gpg, and the file system the state lives on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpg = "unknown"
    try:
        out = subprocess.run(["gpg", "--version"], capture_output=True, text=True, check=False)
        gpg = out.stdout.splitlines()[0] if out.stdout else gpg
    except OSError:
        pass
    fs = "unknown"
    try:
        out = subprocess.run(
            ["df", "--output=fstype", "/tmp"], capture_output=True, text=True, check=False
        )
        lines = out.stdout.split()
        fs = lines[-1] if len(lines) > 1 else fs
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MB"
                break
    except (OSError, ValueError):
        pass
    return {
        "nproc": str(os.cpu_count() or "?"),
        "cpu": model,
        "memory": mem,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "gpg": gpg,
        "/tmp file system": fs,
    }


class Timer:
    """Total time and calls spent in one method of one object, while installed.

    Installed as an attribute of the instance, so it shadows the class's method for
    that object only; thread-safe (gpg work runs in a pool)."""

    def __init__(self, obj: object, name: str) -> None:
        self.total = 0.0
        self.calls = 0
        self._obj, self._name = obj, name
        self._lock = threading.Lock()
        original = getattr(obj, name)

        def timed(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.total += elapsed
                    self.calls += 1

        setattr(obj, name, timed)

    def remove(self) -> None:
        delattr(self._obj, self._name)


class Marks:
    """When an async method of one object was entered and left: the first call whose
    first argument is non-empty (e.g. the `_release` that really sends something)."""

    def __init__(self, obj: object, name: str) -> None:
        self.entered = self.left = 0.0
        self._obj, self._name = obj, name
        original = getattr(obj, name)

        async def marked(*args: object, **kwargs: object) -> object:
            if self.entered or not (args and args[0]):
                return await original(*args, **kwargs)
            self.entered = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.left = time.perf_counter()

        setattr(obj, name, marked)

    def remove(self) -> None:
        delattr(self._obj, self._name)
