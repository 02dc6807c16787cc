"""`maild demo`: the whole lifecycle on throwaway keys in a temporary folder.

It makes a WG identity, a WG member and three organisations (one with an
expired key), starts a loopback smarthost that keeps what it receives in a
Maildir, and runs the real CLI, the real intake listener and the real
dispatcher: plan, orgs check, the member's submission by signed and
encrypted mail and maild's encrypted reply, prepare ahead, notices and
pre-announcement at the notice time,
disclosure at the disclosure time, receipts, and one notice decrypted as its
organisation reads it. Only the demo moves the clock by hand, so a week
passes in seconds; `maild run` always uses the real clock. Nothing leaves
this host.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiosmtplib
import structlog

from maild import config as configuration
from maild.adapters import mime
from maild.adapters.gpg import Keyring
from maild.adapters.sink import RunningSink, start_sink
from maild.adapters.smtp_in import start_listener
from maild.service.clock import ManualClock
from maild.service.daemon import build, build_intake, listener_config
from maild.service.dispatch import Dispatcher
from maild.service.setup import Setup

Step = Callable[[int, str], None]
ARMORED = re.compile(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", re.S)

ZONE = "Europe/Berlin"
ADVISORY_ID = "WG-DEMO-001"
ORGS = [
    ("north-distro", "North Distro", "distributor", "never"),
    ("south-rust", "South Rust Implementation", "alternate-implementation", "never"),
    ("stale-vendor", "Stale Vendor", "distributor", "expired"),
]
STEPS = 10


def run_demo(folder: Path | None = None, *, keep: bool = False) -> int:
    from maild.cli import main  # the real CLI, in this process

    work = folder or Path(tempfile.mkdtemp(prefix="maild-demo-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    config = str(work / "maild.toml")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    loop = asyncio.new_event_loop()

    def step(n: int, text: str) -> None:
        print(f"\n==> [{n}/{STEPS}] {text}", flush=True)

    def run(*args: str) -> int:
        print(f"$ maild --config {config} {' '.join(args)}", flush=True)
        return main(["--config", config, *args])

    sink = loop.run_until_complete(start_sink(maildir=work / "maildir"))
    try:
        step(1, f"making throwaway keys, a config and a loopback smarthost in {work}")
        disclosure = _write_setup(work, sink.port)
        print("    identity key, one WG member, three organisations (stale-vendor's key expired)")
        print(f"    smarthost: 127.0.0.1:{sink.port}, keeping what it receives in {work}/maildir")
        step(2, "the policy: what a high-severity advisory disclosed then would get")
        run("plan", "--disclosure", disclosure.isoformat(), "--severity", "high")
        step(3, "checking the organisation list and its pinned keys (one problem expected)")
        run("orgs", "check")
        if not _daemon(loop, sink, work, step):
            return 1
        step(9, "the receipts: one row per message, with the smarthost's queue ids")
        run("receipts", ADVISORY_ID)
        step(10, "what North Distro reads after decrypting its notice")
        _show_notice(work)
        run("show", ADVISORY_ID)
        print(f"\ndemo complete; folder {'kept at ' + str(work) if keep else 'removed'}")
        return 0
    finally:
        loop.run_until_complete(sink.close())
        loop.close()
        Keyring(work / "state" / "gnupg").close()
        Keyring(work / "orgkeys").close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _daemon(loop: asyncio.AbstractEventLoop, sink: RunningSink, work: Path, step: Step) -> bool:
    """Steps 4 to 8: the daemon's parts (intake listener, dispatcher) on the
    demo clock, in this process."""
    setup = Setup(configuration.load(work / "maild.toml"))
    with setup, ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpg") as pool:
        clock = ManualClock(datetime.now(UTC))
        dispatcher = build(setup, clock, pool)
        intake = build_intake(setup, dispatcher, clock, pool, lambda: None)
        assert setup.config.intake is not None
        listen = replace(listener_config(setup.config.intake), port=0)
        listener = loop.run_until_complete(start_listener(listen, intake))
        try:
            dispatcher.recover()
            step(4, "Wanda, a WG member, submits the advisory by mail (signed, encrypted)")
            port = listener.sockets[0].getsockname()[1]
            member = setup.config.intake.members[0]
            if not _submit_by_mail(loop, work, port, member, clock()):
                return False
            before = len(sink.sink.received)
            loop.run_until_complete(dispatcher.tick())
            _show_reply(work, sink.sink.received[before:])
            return _dispatch(loop, sink, setup, dispatcher, clock, step)
        finally:
            listener.close()
            loop.run_until_complete(listener.wait_closed())
            loop.run_until_complete(dispatcher.aclose())


def _submit_by_mail(
    loop: asyncio.AbstractEventLoop, work: Path, port: int, member: str, now: datetime
) -> bool:
    """What Wanda's mail client does: the advisory and the patch in a MIME
    entity (real Subject inside), signed by her key and encrypted to maild's
    identity key in one (RFC 3156), sent to the intake address."""
    wanda = Keyring(work / "orgkeys")
    headers = [
        ("From", "wanda@wg.demo.example"),
        ("To", "embargo@demo.example"),
        ("Date", format_datetime(now)),
        ("Message-ID", "<demo-submission@wg.demo.example>"),
    ]
    inner = mime.protected_part(
        [*headers, ("Subject", "New advisory")],
        (work / "advisory.md").read_text(encoding="utf-8"),
        [mime.Attachment("fix.patch", PATCH.encode())],
        outer_headers=[*headers, ("Subject", "...")],
    )
    armored = wanda.sign_encrypt(inner, identity_fingerprint(work), member, now)
    message = mime.encrypted_message([*headers, ("Subject", "...")], armored)
    print(f"    PGP/MIME message, {len(message)} bytes; outer Subject '...'; sent over SMTP")

    async def send() -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        try:
            _, reply = await client.sendmail(
                "wanda@wg.demo.example", ["embargo@demo.example"], message
            )
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        finally:
            client.close()
        return reply

    reply = loop.run_until_complete(send())
    print(f"    maild's intake answered: {reply}")
    return reply.startswith("2") or reply.startswith("Ok")


def _show_reply(work: Path, received: Sequence[Any]) -> None:
    """Wanda decrypts maild's reply with her key."""
    for r in received:
        if "wanda@wg.demo.example" not in r.rcpt_tos:
            continue
        signer, inner = _decrypt(work, r.data)
        if str(inner["Subject"]).startswith("maild alert"):
            print(f"    also to Wanda, an alert: {inner['Subject']}")
            continue
        print(f"    maild's reply, decrypted with Wanda's key; signed by {signer}")
        _print_text(inner)


def _decrypt(work: Path, data: bytes) -> tuple[str | None, EmailMessage]:
    """Decrypt a message maild sent, with the keys held outside maild."""
    armored = ARMORED.search(data)
    assert armored is not None
    plain, signer = Keyring(work / "orgkeys").decrypt_verify(armored.group(0))
    inner = email.message_from_bytes(plain, policy=email.policy.default)
    assert isinstance(inner, EmailMessage)
    return signer, inner


def _print_text(inner: EmailMessage, lines: int | None = None) -> None:
    print(f"    inner Subject: {inner['Subject']}")
    body = next(p for p in inner.walk() if p.get_content_type() == "text/plain")
    assert isinstance(body, EmailMessage)
    print("\n".join("      | " + line for line in body.get_content().splitlines()[:lines]))


def _dispatch(
    loop: asyncio.AbstractEventLoop,
    sink: RunningSink,
    setup: Setup,
    dispatcher: Dispatcher,
    clock: ManualClock,
    step: Step,
) -> bool:
    """Steps 5 to 8: the dispatcher on the demo clock."""
    record = setup.store.get_advisory(ADVISORY_ID)
    if record is None or record.plan.notify_at is None:
        print("the advisory was not queued, or has no notice time")
        return False
    step(5, "the daemon prepares every message ahead of time (encrypted, signed)")
    loop.run_until_complete(dispatcher.tick())
    versions = setup.store.payload_versions(ADVISORY_ID)
    print(f"    {len(versions)} messages prepared and stored; notices sent so far: 0")
    for label, at, n in (
        (
            "the notice time: notices and the public pre-announcement go out",
            record.plan.notify_at,
            6,
        ),
        ("the disclosure time: the advisory is published, signed", record.plan.disclose_at, 7),
    ):
        step(n, f"clock moved to {at.isoformat()}, {label}")
        before = len(sink.sink.received)
        clock.now = at
        loop.run_until_complete(dispatcher.tick())
        loop.run_until_complete(dispatcher.tick())  # alerts queued in the first pass
        for r in sink.sink.received[before:]:
            print(f"    -> {', '.join(r.rcpt_tos):<36} queued as {r.queue_id}")
    step(8, "the advisory's state")
    final = setup.store.get_advisory(ADVISORY_ID)
    print(f"    {ADVISORY_ID} is {final.state.value if final else '?'}")
    return True


def _show_notice(work: Path) -> None:
    for path in sorted((work / "maildir" / "new").iterdir()):
        raw = path.read_bytes()
        if b"To: security@north-distro.example" not in raw:
            continue
        outer = raw.split(b"\r\n\r\n", 1)[0].decode()
        print("    outer headers (what any mail server sees):")
        print("\n".join("      " + line for line in outer.splitlines()))
        signer, inner = _decrypt(work, raw)
        print(f"    decrypted with North Distro's key; signed by {signer}")
        _print_text(inner, 40)
        print(f"    attachments: {[p.get_filename() for p in inner.walk() if p.get_filename()]}")
        return
    print("    no notice for North Distro found in the Maildir")


def identity_fingerprint(work: Path) -> str:
    identity = configuration.load(work / "maild.toml").identity
    assert identity is not None
    return identity.signing_key


def _write_setup(work: Path, smtp_port: int) -> datetime:
    """Keys, maild.toml, orgs.toml, an advisory and a patch; returns the disclosure."""
    identity = Keyring(work / "state" / "gnupg")
    wg = identity.generate("maild demo identity <security@demo.example>")
    others = Keyring(work / "orgkeys")  # the WG member's and the orgs' own keys
    others.import_key(identity.export_public(wg))  # everyone outside holds maild's key
    keys = work / "keys"
    keys.mkdir(exist_ok=True)
    member = others.generate("Wanda WG <wanda@wg.demo.example>")
    (keys / "member-wanda.asc").write_bytes(others.export_public(member))
    org_entries = []
    for org_id, name, basis, expiry in ORGS:
        created = datetime(2020, 1, 1, tzinfo=UTC) if expiry == "expired" else None
        fpr = others.generate(
            f"{name} <security@{org_id}.example>",
            expire="1d" if expiry == "expired" else "never",
            created=created,
        )
        (keys / f"{org_id}.asc").write_bytes(others.export_public(fpr))
        org_entries.append(
            org_toml(org_id, f"security@{org_id}.example", fpr, name=name, basis=basis)
        )
    (work / "orgs.toml").write_text("".join(org_entries), encoding="utf-8")
    (work / "maild.toml").write_text(config_toml(wg, member, smtp_port), encoding="utf-8")

    zone = ZoneInfo(ZONE)
    day = (datetime.now(zone) + timedelta(days=10)).date()
    day += timedelta(days=(1 - day.weekday()) % 7)  # a Tuesday, 10 to 16 days ahead
    disclosure = datetime(day.year, day.month, day.day, 17, 0, tzinfo=zone)
    (work / "advisory.md").write_text(_advisory(disclosure), encoding="utf-8")
    (work / "fix.patch").write_text(PATCH, encoding="utf-8")
    return disclosure


def org_toml(
    org_id: str,
    email: str,
    fpr: str,
    *,
    name: str | None = None,
    basis: str = "distributor",
    status: str = "active",
    contacts: str | None = None,
    extra: str = "",
) -> str:
    """One `[[org]]` entry of orgs.toml (used by the demo and the tests)."""
    people = contacts or f'["Ana <ana@{org_id}.example>", "Ben <ben@{org_id}.example>"]'
    return f"""
[[org]]
id = "{org_id}"
name = "{name or f"Org {org_id}"}"
basis = "{basis}"
status = "{status}"
joined = 2026-01-15
contacts = {people}
pledge = {{ date = 2026-01-15, by = "Ana" }}
{extra}
  [[org.address]]
  email = "{email}"
  key = "{fpr}"
"""


def config_toml(
    identity: str,
    member: str,
    smtp_port: int,
    *,
    domain: str = "demo.example",
    zone: str = ZONE,
    listen: str = "127.0.0.1:8025",
    connections: int = 4,
    announce: str = "security-announce@demo.example",
    blog_dir: str | None = "blog",
) -> str:
    """A maild.toml for one machine under test: the demo's, and the
    benchmarks' (identity and intake addresses at `domain`)."""
    blog = f'blog_dir = "{blog_dir}"\n' if blog_dir is not None else ""
    return f"""# maild configuration for a demo or a benchmark (throwaway)
[daemon]
state_dir = "state"

[calendar]
timezone = "{zone}"

[identity]
address = "security@{domain}"
signing_key = "{identity}"

[keys]
dir = "keys"

[orgs]
file = "orgs.toml"

[intake]
listen = "{listen}"
addresses = ["embargo@{domain}"]
members = ["{member}"]

[smtp]
host = "127.0.0.1"
port = {smtp_port}
starttls = "off"
connections = {connections}

[announce]
addresses = ["{announce}"]
{blog}"""


def _advisory(disclosure: datetime) -> str:
    return f"""+++
id = "WG-DEMO-001"
title = "Demo: out-of-bounds write in an imaginary API"
disclosure = {disclosure.isoformat()}
severity = "high"
component = "standard library"
cve = ["CVE-2099-0001"]
preannounce = "full"
+++
# Out-of-bounds write in an imaginary API

This is a demonstration advisory. Affected versions: none, it is made up.
"""


PATCH = """--- a/library/demo.rs
+++ b/library/demo.rs
@@ -1 +1 @@
-fn demo() {}
+fn demo() { /* fixed */ }
"""
