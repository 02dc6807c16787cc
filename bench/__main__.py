"""maild benchmarks: `make bench`, or `.venv/bin/python -m bench [--quick] [--sizes 100,1000]`;
the soak (not part of `make bench`): `make soak`, or `.venv/bin/python -m bench soak --help`.

Every figure is printed with a baseline measured in the same run, and the ratio between
them; nothing asserts a wall-clock time. Only loopback traffic; every gnupg home and
database lives in a short folder under /tmp that is removed at the end. See
bench/README.md for what each benchmark measures.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from bench import intake, release, rss
from bench.common import Report, configure_logging, machine
from bench.world import KEY_POOL, KeyPool

DEFAULT_SIZES = (100, 1000)
TIME_LIMIT = 45 * 60  # seconds: the whole run stops (and cleans up) after this


class _OutOfTime(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _OutOfTime(f"the benchmarks ran out of time ({TIME_LIMIT} s)")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give sizes like 100,1000") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive sizes like 100,1000")
    return sizes


def _messages(text: str) -> int:
    limit = intake.CLIENTS * intake.PER_CONNECTION
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of submissions") from None
    if not 1 <= count <= limit:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to {limit} submissions")
    return count


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:
        from bench import soak

        return soak.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--sizes", type=_sizes, default=list(DEFAULT_SIZES), help="recipient counts (100,1000)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"only N=100, {intake.QUICK_MESSAGES} intake submissions",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile maild's release tick and intake run (cProfile)",
    )
    parser.add_argument(
        "--no-release",
        action="store_true",
        help="skip the release, preparation and lateness benchmarks",
    )
    parser.add_argument("--no-rss", action="store_true", help="skip the peak RSS benchmark")
    parser.add_argument("--no-intake", action="store_true", help="skip the intake benchmark")
    parser.add_argument(
        "--intake-messages",
        type=_messages,
        default=None,
        help=f"submissions for the intake benchmark ({intake.MESSAGES}; "
        f"{intake.QUICK_MESSAGES} with --quick)",
    )
    parser.add_argument(
        "--rss-advisories",
        type=int,
        default=rss.ADVISORIES,
        help=f"queued advisories for the RSS benchmark ({rss.ADVISORIES})",
    )
    args = parser.parse_args(argv)
    sizes = [100] if args.quick else args.sizes
    messages = args.intake_messages or (intake.QUICK_MESSAGES if args.quick else intake.MESSAGES)

    configure_logging()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT)
    info = machine()
    print("maild benchmarks")
    for key, value in info.items():
        print(f"  {key:<17} {value}")
    print(
        f"  note: {KEY_POOL} organisation keys are shared among the N addresses (each address "
        "is its own organisation, pinned to one of them); every copy is still encrypted "
        "to its own pinned key"
    )
    report = Report()
    started = time.perf_counter()
    print("\nmaking the key pool", flush=True)
    keys = KeyPool.make()
    try:
        for n in [] if args.no_release else sizes:
            print(f"\n== release, preparation and lateness, N={n}", flush=True)
            release.run(keys, n, report, profile=args.profile)
        if not args.no_rss:
            print(
                f"\n== peak RSS, {args.rss_advisories} queued advisories x {rss.RECIPIENTS}",
                flush=True,
            )
            rss.run(keys, report, args.rss_advisories)
        if not args.no_intake:
            print(
                f"\n== intake, {messages} submissions of a {intake.BODY_BYTES // 1024} KB "
                f"advisory from {intake.CLIENTS} clients",
                flush=True,
            )
            intake.run(keys, report, messages, profile=args.profile)
    except _OutOfTime as exc:
        print(f"\nstopped: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        keys.close()
    _summary(report, info, time.perf_counter() - started)
    return 0


def _summary(report: Report, info: dict[str, str], seconds: float) -> None:
    print(
        f"\n== summary ({info['nproc']} CPUs, {info['cpu']}, {info['python']}, "
        f"{info['gpg']}, /tmp on {info['/tmp file system']}; {seconds:.0f} s in all)\n"
    )
    rows = [("benchmark", "N", "figure", "value", "target")]
    for f in report.figures:
        target = f.target
        if f.met is not None:
            target += "  met" if f.met else "  MISSED"
        rows.append((f.bench, "" if f.n is None else str(f.n), f.what, f.value, target))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2])]
        cells += [row[3].rjust(widths[3]), row[4]]
        print("| " + " | ".join(cells) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    sys.exit(main())
