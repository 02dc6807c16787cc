"""`maild run`: the long-running loop around the dispatcher.

It sleeps until the next message is due, waking at least every 30 s and
within 1 s of a change made by the CLI; SIGTERM or SIGINT lets the SMTP
transactions in flight finish, then it exits. A pass that cannot write (a
full disk) is logged and tried again after RETRY, never a reason to exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from email.utils import parseaddr

import structlog

from maild.adapters.gpg import KeyHealth
from maild.adapters.smtp_in import ListenerConfig, start_listener
from maild.adapters.smtp_out import Smarthost
from maild.config import IntakeConfig
from maild.service.clock import system_clock
from maild.service.compose import Composer
from maild.service.dispatch import Dispatcher, Member
from maild.service.embargo import UserError
from maild.service.intake import Intake
from maild.service.ports import StoreError
from maild.service.setup import Setup

MAX_SLEEP = timedelta(seconds=30)
LISTENER_GRACE = 5.0  # seconds SMTP intake sessions get to end at shutdown
POLL = 1.0  # seconds between checks for CLI changes
RETRY = timedelta(seconds=5)  # after a pass that failed to write (a full disk)
log = structlog.get_logger("maild.daemon")


def configure_logging() -> None:
    """One JSON object per line on stdout (never advisory text)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def build(setup: Setup, clock: Callable[[], datetime], pool: ThreadPoolExecutor) -> Dispatcher:
    """Check everything `run` needs, then wire the dispatcher."""
    cfg = setup.config
    cfg.require("run", "daemon", "identity", "keys", "orgs", "smtp", "intake", "announce")
    assert cfg.identity and cfg.smtp and cfg.intake and cfg.announce
    now = clock()
    problems = [f for f in setup.all_findings(now) if f.problem]
    structural = [p for p in setup.orgs.problems] + list(setup.folder.problems)
    identity = [f.text for f in problems if f.text.startswith("identity.")]
    if structural or identity:
        raise UserError((structural + identity)[0])
    for finding in problems:
        log.warning("setup-problem", problem=finding.text)

    def health(fingerprint: str) -> KeyHealth:
        """Judged at the current time; the keyring caches the listings."""
        return setup.keyring.health(fingerprint, clock())

    members = [Member(fpr, _address(health(fpr).uids)) for fpr in cfg.intake.members]
    folder = setup.folder.fingerprints  # imported once, at start
    password = None
    if cfg.smtp.password_file is not None:
        try:
            password = cfg.smtp.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"[smtp] password_file: cannot read: {exc}") from None
    domain = cfg.identity.address.rpartition("@")[2]
    return Dispatcher(
        store=setup.store,
        composer=Composer(
            setup.keyring,
            cfg.identity.address,
            cfg.identity.signing_key,
            cfg.calendar,
            ack_address=cfg.intake.addresses[0],
        ),
        smarthost=Smarthost(cfg.smtp, local_hostname=domain, password=password),
        orgs=setup.orgs,
        key_health=health,
        in_keys_folder=lambda fpr: fpr in folder,
        keys_version=lambda: setup.keyring.generation,
        members=members,
        announce=cfg.announce.addresses,
        blog_dir=cfg.announce.blog_dir,
        envelope_sender=cfg.intake.addresses[0],
        mail_domain=domain,
        clock=clock,
        pool=pool,
        connections=cfg.smtp.connections,
    )


def build_intake(
    setup: Setup,
    dispatcher: Dispatcher,
    clock: Callable[[], datetime],
    pool: ThreadPoolExecutor,
    poke: Callable[[], None],
) -> Intake:
    """The mail intake, committing to the dispatcher's store (same thread)."""
    cfg = setup.config
    assert cfg.identity and cfg.intake
    identity = cfg.identity.signing_key

    def wake(advisory_id: str | None) -> None:
        dispatcher.touch(advisory_id)
        poke()

    return Intake(
        store=dispatcher.store,
        keyring=setup.keyring,
        # Changes by mail are checked as the CLI's are; the orgs list and the
        # identity key were checked when the daemon started.
        desk=lambda now: setup.desk(now, validate=False),
        calendar=cfg.calendar,
        members={m.fingerprint: m.address for m in dispatcher.members},
        mail_domain=dispatcher.mail_domain,
        seal=lambda data: setup.keyring.encrypt(data, identity, clock()),
        clock=clock,
        pool=pool,
        approvals=cfg.intake.approvals,
        max_signature_age=cfg.intake.max_signature_age,
        wake=wake,
    )


def listener_config(intake: IntakeConfig) -> ListenerConfig:
    context = None
    if intake.tls_cert is not None and intake.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(intake.tls_cert, intake.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UserError(f"[intake] tls_cert/tls_key: cannot load: {exc}") from None
    return ListenerConfig(
        host=intake.host,
        port=intake.port,
        hostname=intake.hostname,
        addresses=intake.addresses,
        max_size=intake.max_size,
        tls_context=context,
        require_tls=intake.require_tls,
        session_limit=float(intake.timeout),
        command_limit=intake.max_commands,
    )


async def serve(
    dispatcher: Dispatcher, stop: asyncio.Event, poked: asyncio.Event | None = None
) -> None:
    """Tick, then sleep until the next due time, a CLI change, mail taken
    in (`poked`), or `stop`."""
    store, clock = dispatcher.store, dispatcher.clock
    poked = poked or asyncio.Event()
    dispatcher.stopping = stop.is_set
    dispatcher.recover()
    log.info("started")
    failed = False
    while not stop.is_set():
        seen = store.data_version()
        poked.clear()
        try:
            if failed:  # what the failed pass left `sending` goes again, flagged
                dispatcher.recover()
            next_at = await dispatcher.tick()
            failed = False
        except (StoreError, OSError) as exc:
            # A full disk, say: the queue is safe in the store, so keep going
            # and try again soon (exiting would only restart into the same wall).
            log.error("pass-failed", error=str(exc), retry_in=RETRY.total_seconds())
            failed, next_at = True, clock() + RETRY
        deadline = clock() + MAX_SLEEP
        if next_at is not None and next_at < deadline:
            deadline = next_at
        while not stop.is_set() and not poked.is_set() and store.data_version() == seen:
            remaining = (deadline - clock()).total_seconds()
            if remaining <= 0:
                break
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(poked.wait())}
            _, pending = await asyncio.wait(
                waits, timeout=min(remaining, POLL), return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
    log.info("stopping")


def run(setup: Setup, clock: Callable[[], datetime] = system_clock) -> int:
    configure_logging()

    async def main() -> None:
        stop, poked = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpg") as pool:
            dispatcher = build(setup, clock, pool)
            assert setup.config.intake is not None
            intake = build_intake(setup, dispatcher, clock, pool, poked.set)
            where = f"{setup.config.intake.host}:{setup.config.intake.port}"
            try:
                listener = await start_listener(listener_config(setup.config.intake), intake)
            except OSError as exc:
                await dispatcher.aclose()
                raise UserError(f"[intake] listen: cannot listen on {where}: {exc}") from None
            log.info("listening", address=where)

            async def close_listener_on_stop() -> None:
                await stop.wait()
                listener.close()  # no new mail; what is in receive() gets its reply

            closer = asyncio.ensure_future(close_listener_on_stop())
            try:
                await serve(dispatcher, stop, poked)
            finally:
                stop.set()
                await closer
                try:
                    await asyncio.wait_for(listener.wait_closed(), LISTENER_GRACE)
                except TimeoutError:
                    listener.abort_clients()
                await dispatcher.aclose()

    with setup:
        asyncio.run(main())
    return 0


def _address(uids: tuple[str, ...]) -> str | None:
    for uid in uids:
        _, email = parseaddr(uid)
        if "@" in email:
            return email
    return None
