"""maild's command line: argparse front and wiring only (DESIGN.md section 3).

Exit codes: 0 success, 2 bad input or usage (one line on stderr naming the
problem), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maild import config as configuration
from maild.adapters.disk import full_disk
from maild.adapters.gpg import GpgError
from maild.domain.activity import DEFAULT_LAST, activity
from maild.domain.models import MessageKind
from maild.domain.orgs import org_public_dict
from maild.domain.policy import Category, PolicyError, PolicyInput, Severity, plan
from maild.domain.tomlsource import SourceError
from maild.service import views
from maild.service.embargo import Patch, UserError
from maild.service.ports import StoreError
from maild.service.setup import Setup

EPILOG = "Exit status: 0 success, 2 bad input or usage, 1 any other failure."


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 1)
    except Exception as exc:
        full = _full_disk(args)
        return _fail(full, 1) if full is not None else _failure(exc)


def _failure(exc: Exception) -> int:
    """One line on stderr for a failed command; returns its exit code."""
    if isinstance(exc, (SourceError, UserError, PolicyError)):
        return _fail(str(exc), 2)
    if isinstance(exc, (StoreError, GpgError, OSError)):
        return _fail(str(exc), 1)
    if os.environ.get("MAILD_DEBUG"):
        raise exc
    # never a traceback for the operator
    return _fail(f"internal error: {type(exc).__name__}: {exc} (MAILD_DEBUG=1 shows more)", 1)


def _full_disk(args: argparse.Namespace) -> str | None:
    """The line to show when a command failed on a (nearly) full disk under
    maild's state or gnupg home: that is then the cause, which gpg and SQLite
    report in misleading ways ("no secret key", "disk I/O error")."""
    try:
        daemon = configuration.load(configuration.resolve_path(args.config)).daemon
    except Exception:
        return None  # no config to look at: the original error says why
    if daemon is None:
        return None
    return full_disk((daemon.state_dir, daemon.gnupg_home))


def _fail(message: str, code: int) -> int:
    print(f"maild: {message}", file=sys.stderr)
    return code


def now() -> datetime:
    return datetime.now(UTC)


def actor() -> str:
    try:
        return "cli:" + pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"cli:uid{os.getuid()}"


def positive(value: str) -> int:
    """argparse type: a whole number of 1 or more."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of 1 or more")
    return number


def instant(value: str) -> datetime:
    """argparse type: an ISO 8601 date and time that must carry its UTC offset."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 date and time like 2026-12-08T17:00:00+01:00"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value} has no time zone: add a UTC offset, like 2026-12-08T17:00:00+01:00 or Z"
        )
    return parsed


def setup_for(args: argparse.Namespace, command: str, *sections: str) -> Setup:
    cfg = configuration.load(configuration.resolve_path(args.config))
    if cfg.path is None:
        raise UserError(
            f"'{command}' needs a config file: pass --config PATH, set "
            f"${configuration.ENV_VAR}, or create {configuration.DEFAULT_PATH}"
        )
    cfg.require(command, *sections)
    return Setup(cfg)


def emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if getattr(args, "json", False):
        json.dump(doc, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


# -- commands -------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    cfg = configuration.load(configuration.resolve_path(args.config))
    rules = PolicyInput(
        disclosure=args.disclosure,
        severity=Severity(args.severity),
        exploited=args.exploited,
        toolchain_update=not args.no_toolchain_update,
        category=Category(args.category),
        notify_days=args.notify_days,
        reporter_approval=args.reporter_approval,
        notify_not_before=args.notify_not_before,
    )
    result = plan(rules, cfg.calendar)
    clock = views.Clock(cfg.calendar)
    emit(args, views.plan_json(result, clock), views.plan_text(result, clock))
    return 0


CORE = ("daemon", "identity", "keys", "orgs")


def cmd_submit(args: argparse.Namespace) -> int:
    setup = setup_for(args, "submit", *CORE)
    source = Path(args.file)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: cannot read the advisory: {exc}") from None
    patches = []
    for name in args.patch:
        try:
            patches.append(Patch(Path(name).name, Path(name).read_bytes()))
        except OSError as exc:
            raise UserError(f"--patch {name}: cannot read: {exc}") from None
    with setup:
        at = now()
        record = setup.desk(at).submit(text, str(source), patches, at, actor())
        clock = views.Clock(setup.config.calendar)
        messages = setup.store.messages(record.id)
        doc = {
            "id": record.id,
            "plan": views.plan_json(record.plan, clock),
            "recipients": [views.receipt_json(m, clock) for m in messages],
        }
        text_out = (
            f"accepted {record.id}\n{views.plan_text(record.plan, clock)}\n"
            f"notices: {len(messages)} queued or held (maild show {record.id})"
        )
        emit(args, doc, text_out)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    setup = setup_for(args, "queue", *CORE)
    with setup:
        queue = [(r, setup.store.messages(r.id)) for r in setup.store.list_advisories()]
        clock = views.Clock(setup.config.calendar)
        emit(args, views.queue_json(queue, clock), views.queue_text(queue, clock))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    setup = setup_for(args, "show", *CORE)
    with setup:
        record = setup.get(args.id)
        messages = setup.store.messages(record.id)
        events = setup.store.events(record.id)
        check = setup.store.verify_history()
        clock = views.Clock(setup.config.calendar)
        emit(
            args,
            views.show_json(record, messages, events, check, clock),
            views.show_text(record, messages, events, check, clock),
        )
    return 0 if check.intact else 1


def cmd_receipts(args: argparse.Namespace) -> int:
    setup = setup_for(args, "receipts", *CORE)
    with setup:
        record = setup.get(args.id)
        messages = setup.store.messages(record.id)
        clock = views.Clock(setup.config.calendar)
        emit(
            args,
            [views.receipt_json(m, clock) for m in messages],
            views.receipts_text(messages, clock),
        )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    setup = setup_for(args, "cancel", *CORE)
    with setup:
        at = now()
        record = setup.desk(at, validate=False).cancel(args.id, at, actor())
        print(f"cancelled {record.id}; notices not yet sent are cancelled")
    return 0


def cmd_reschedule(args: argparse.Namespace) -> int:
    setup = setup_for(args, "reschedule", *CORE)
    with setup:
        at = now()
        record = setup.desk(at).reschedule(args.id, args.disclosure, at, actor())
        clock = views.Clock(setup.config.calendar)
        print(f"rescheduled {record.id}\n{views.plan_text(record.plan, clock)}")
    return 0


def cmd_disclose_now(args: argparse.Namespace) -> int:
    setup = setup_for(args, "disclose-now", *CORE)
    with setup:
        at = now()
        record = setup.desk(at, validate=False).disclose_now(args.id, args.reason, at, actor())
        print(f"{record.id}: disclosure moved to now; notices not yet sent are cancelled")
    return 0


def cmd_orgs_check(args: argparse.Namespace) -> int:
    setup = setup_for(args, "orgs check", *CORE)
    with setup:
        at = now()
        findings = setup.org_findings(at) + setup.watch_findings(at)
        orgs = setup.orgs
        active = len(orgs.public())
        print(f"{setup.config.orgs_file}: {len(orgs.orgs)} organisations read, {active} active")
        for f in findings:
            print(("PROBLEM " if f.problem else "warning ") + f.text)
        problems = sum(1 for f in findings if f.problem)
        print(f"{problems} problem(s), {len(findings) - problems} warning(s)")
    return 2 if problems else 0


def cmd_orgs_export(args: argparse.Namespace) -> int:
    setup = setup_for(args, "orgs export", "orgs")
    orgs = setup.orgs
    if orgs.problems:
        raise UserError(f"{orgs.problems[0]} (run 'maild orgs check' for every problem)")
    public = orgs.public()
    if args.format == "json":
        print(json.dumps([org_public_dict(o) for o in public], indent=2))
    else:
        print(views.orgs_markdown(public))
    return 0


def cmd_orgs_activity(args: argparse.Namespace) -> int:
    setup = setup_for(args, "orgs activity", *CORE)
    with setup:
        orgs = setup.orgs
        if orgs.problems:
            raise UserError(f"{orgs.problems[0]} (run 'maild orgs check' for every problem)")
        notices = setup.store.find_messages(kinds=[MessageKind.NOTICE])
        rows = activity(orgs.public(), notices, args.last)
        clock = views.Clock(setup.config.calendar)
        if args.json:
            print(json.dumps(views.activity_json(rows, args.last, clock), indent=2))
        else:
            print(views.activity_text(rows, args.last, clock))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    setup = setup_for(args, "check-config", *CORE)
    with setup:
        findings = setup.all_findings(now())
        for f in findings:
            if not f.problem:
                print(f"warning: {f.text}", file=sys.stderr)
        problems = [f for f in findings if f.problem]
        if problems:
            raise UserError(problems[0].text)
        print(f"{setup.config.path}: ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from maild.service.daemon import run

    return run(setup_for(args, "run", *CORE, "smtp", "intake", "announce"))


def cmd_demo(args: argparse.Namespace) -> int:
    from maild.service.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None, keep=args.keep)


# -- parser ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maild",
        description=(
            "maild holds embargoed security advisories and sends each organisation on the "
            "advance-disclosure list its own OpenPGP-encrypted notice, business days before "
            "public disclosure."
        ),
        epilog=EPILOG,
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: ${configuration.ENV_VAR}, else {configuration.DEFAULT_PATH})",
    )
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        c = sub.add_parser(name, help=text, description=text, epilog=EPILOG)
        c.set_defaults(handler=handler)
        return c

    c = command(
        "plan",
        cmd_plan,
        "Print the policy's schedule for a disclosure time: when notices and the "
        "pre-announcement go out and how many business days that leaves. Needs only "
        "[calendar] (and no config at all for UTC, sat/sun weekends, no holidays).",
    )
    c.add_argument(
        "--disclosure", type=instant, required=True, metavar="T", help="ISO 8601 with offset"
    )
    c.add_argument("--severity", choices=[s.value for s in Severity], default="high")
    c.add_argument("--exploited", action="store_true", help="actively exploited")
    c.add_argument(
        "--no-toolchain-update",
        action="store_true",
        help="mitigated without a toolchain update (matters for critical + exploited)",
    )
    c.add_argument("--category", choices=[c.value for c in Category], default="toolchain")
    c.add_argument(
        "--notify-days", type=int, metavar="K", help="notify K business days before (K > policy)"
    )
    c.add_argument("--reporter-approval", metavar="TEXT", help="required with --notify-days")
    c.add_argument(
        "--notify-not-before", type=instant, metavar="T", help="reporter's embargo terms"
    )
    c.add_argument("--json", action="store_true", help="one JSON document on stdout")

    command(
        "run",
        cmd_run,
        "Run the daemon in the foreground: prepare each notice ahead of time, send it "
        "at its instant, publish at disclosure, record every receipt. Logs JSON lines "
        "on stdout; SIGTERM finishes the SMTP transactions in flight and exits 0.",
    )

    c = command(
        "submit",
        cmd_submit,
        "Validate an advisory file (Markdown with +++ TOML front matter) and queue it. "
        "Prints its id and plan.",
    )
    c.add_argument("file", metavar="FILE")
    c.add_argument("--patch", action="append", default=[], metavar="FILE", help="repeatable")
    c.add_argument("--json", action="store_true")

    c = command("queue", cmd_queue, "List advisories with state, times and next action.")
    c.add_argument("--json", action="store_true")

    c = command("show", cmd_show, "One advisory: plan, recipients, and its verified history.")
    c.add_argument("id", metavar="ID")
    c.add_argument("--json", action="store_true")

    c = command("receipts", cmd_receipts, "One row per message sent or held for an advisory.")
    c.add_argument("id", metavar="ID")
    c.add_argument("--json", action="store_true")

    c = command("cancel", cmd_cancel, "Cancel an embargoed advisory (audited).")
    c.add_argument("id", metavar="ID")

    c = command("reschedule", cmd_reschedule, "Move an advisory's disclosure (audited).")
    c.add_argument("id", metavar="ID")
    c.add_argument("--disclosure", type=instant, required=True, metavar="T")

    c = command(
        "disclose-now",
        cmd_disclose_now,
        "End the embargo now: publish at once, cancel notices not yet sent (audited).",
    )
    c.add_argument("id", metavar="ID")
    c.add_argument("--reason", required=True, metavar="TEXT")

    orgs = sub.add_parser(
        "orgs", help="the organisation list", description="The organisation list."
    )

    def orgs_help(_args: argparse.Namespace) -> int:
        orgs.print_help(sys.stderr)
        return 2

    orgs.set_defaults(handler=orgs_help)
    orgs_sub = orgs.add_subparsers(title="orgs commands", metavar="ACTION")
    o = orgs_sub.add_parser(
        "check",
        help="validate orgs.toml and every pinned key; exit 2 on any problem",
        description="Report every problem with the list and its keys, org by org, one line "
        "each. Warn (exit 0) of pinned, member and identity keys expiring within 30 days, and, "
        "for each advisory still waiting for its notice time, of each recipient that would be "
        "blocked then (key missing or unusable now, or expiring before the notice time).",
        epilog=EPILOG,
    )
    o.set_defaults(handler=cmd_orgs_check)
    o = orgs_sub.add_parser(
        "export",
        help="print the public list (active orgs: name, basis, joined; never addresses)",
        description="Print the public list: active organisations, name, basis and joined date.",
        epilog=EPILOG,
    )
    o.add_argument("--format", choices=["md", "json"], default="md")
    o.set_defaults(handler=cmd_orgs_export)
    o = orgs_sub.add_parser(
        "activity",
        help="per active org: notices received, acknowledged, last acknowledgement",
        description="Per active organisation: advisories whose notice it received, how many "
        "it acknowledged (a reply with the notice's ACK token, signed by the pinned key), and "
        "when it last did. Organisations that received at least N notices and acknowledged "
        "none of the last N are flagged: the data behind the policy's removal of "
        "organisations that 'did not act on the notifications'.",
        epilog=EPILOG,
    )
    o.add_argument(
        "--last", type=positive, default=DEFAULT_LAST, metavar="N", help="flag after N (3)"
    )
    o.add_argument("--json", action="store_true", help="one JSON document on stdout")
    o.set_defaults(handler=cmd_orgs_activity)

    command(
        "check-config",
        cmd_check_config,
        "Validate the config, the orgs list and all keys; exit 2 with the first problem.",
    )

    c = command(
        "demo",
        cmd_demo,
        "Run maild end to end on throwaway keys in a temporary folder (no real mail).",
    )
    c.add_argument("--dir", metavar="DIR", help="work here instead of a temporary folder")
    c.add_argument("--keep", action="store_true", help="keep the demo folder afterwards")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
