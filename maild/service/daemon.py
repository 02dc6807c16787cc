"""`maild run`: the long-running loop around the dispatcher.

It sleeps until the next message is due, waking at least every 30 s and
within 1 s of a change made by the CLI; SIGTERM or SIGINT lets the SMTP
transactions in flight finish, then it exits. A pass that cannot write (a
full disk) is logged and tried again after RETRY, never a reason to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr

import structlog

from maild.adapters.disk import full_disk
from maild.adapters.gpg import KeyHealth
from maild.adapters.smtp_in import ListenerConfig, start_listener
from maild.adapters.smtp_out import Smarthost
from maild.adapters.systemd import Notifier, watchdog_task
from maild.config import IntakeConfig
from maild.domain.tomlsource import SourceError
from maild.service import logs, reload
from maild.service.clock import system_clock
from maild.service.compose import Composer
from maild.service.dispatch import Dispatcher, Member
from maild.service.embargo import UserError
from maild.service.intake import Intake
from maild.service.ports import StoreBroken, StoreError
from maild.service.setup import Setup
from maild.service.status import queue_size, tick_status

MAX_SLEEP = timedelta(seconds=30)
# After SIGTERM, seconds (in turn) for the SMTP transactions in flight, the
# intake sessions and the smarthost's QUIT: maild is gone within 10 s.
SEND_GRACE = 6.0
LISTENER_GRACE = 2.0
CLOSE_GRACE = 1.5
POLL = 1.0  # seconds between checks for CLI changes
RETRY = timedelta(seconds=5)  # after a pass that failed to write (a full disk)
log = structlog.get_logger("maild.daemon")


def build(setup: Setup, clock: Callable[[], datetime], pool: ThreadPoolExecutor) -> Dispatcher:
    """Check everything `run` needs, then wire the dispatcher."""
    setup.config.require("run", *reload.RUN_SECTIONS)
    for problem in setup.startup_problems(clock()):
        log.warning("setup-problem", problem=problem)
    return wire(setup, clock, pool)


def wire(setup: Setup, clock: Callable[[], datetime], pool: ThreadPoolExecutor) -> Dispatcher:
    """The dispatcher for a checked setup."""
    cfg = setup.config
    assert cfg.identity and cfg.smtp and cfg.intake and cfg.announce

    def health(fingerprint: str) -> KeyHealth:
        """Judged at the current time; the keyring caches the listings."""
        return setup.keyring.health(fingerprint, clock())

    members = [Member(fpr, _address(health(fpr).uids)) for fpr in cfg.intake.members]
    folder = setup.folder.fingerprints  # imported at start, and again on reload
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
    assert cfg.identity and cfg.intake and cfg.daemon
    identity = cfg.identity.signing_key
    folders = (cfg.daemon.state_dir, cfg.daemon.gnupg_home)

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
        sealable=lambda armored, opened: setup.keyring.only_for(
            armored, identity, opened_with=opened
        ),
        clock=clock,
        pool=pool,
        approvals=cfg.intake.approvals,
        max_signature_age=cfg.intake.max_signature_age,
        wake=wake,
        full_disk=lambda: full_disk(folders),
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
    dispatcher: Dispatcher,
    stop: asyncio.Event,
    poked: asyncio.Event | None = None,
    hup: asyncio.Event | None = None,
    reload: Callable[[], Awaitable[None]] | None = None,
    ticked: Callable[[datetime | None], None] | None = None,
) -> None:
    """Tick, then sleep until the next due time, a CLI change, mail taken
    in (`poked`), a reload asked for (`hup`: `reload` runs between two
    ticks, never during one), or `stop`. `ticked` is told each pass's next
    due time."""
    store, clock = dispatcher.store, dispatcher.clock
    poked = poked or asyncio.Event()
    hup = hup or asyncio.Event()
    dispatcher.stopping = stop.is_set
    dispatcher.recover()
    log.info("started")
    loop = asyncio.get_running_loop()
    failed = False
    while not stop.is_set():
        if hup.is_set():
            hup.clear()
            if reload is not None:
                await reload()
        seen = store.data_version()
        poked.clear()
        try:
            if failed:  # what the failed pass left `sending` goes again, flagged
                dispatcher.recover()
            next_at = await dispatcher.tick()
            failed = False
        except StoreBroken as exc:
            log.critical("store-broken", error=str(exc))
            raise  # maild exits (systemd restarts it); SQLite recovers what is on disk
        except (StoreError, OSError) as exc:
            # A full disk, say: the queue is safe in the store, so keep going
            # and try again soon (exiting would only restart into the same wall).
            log.error("pass-failed", error=str(exc), retry_in=RETRY.total_seconds())
            failed, next_at = True, clock() + RETRY
        if ticked is not None:
            ticked(next_at)
        deadline = clock() + MAX_SLEEP
        if next_at is not None and next_at < deadline:
            deadline = next_at
        # The wall clock may be stepped back while maild sleeps: never longer
        # than MAX_SLEEP by the monotonic clock either.
        latest = loop.time() + MAX_SLEEP.total_seconds()
        events = (stop, poked, hup)
        while not any(e.is_set() for e in events) and store.data_version() == seen:
            remaining = min((deadline - clock()).total_seconds(), latest - loop.time())
            if remaining <= 0:
                break
            waits = {asyncio.ensure_future(e.wait()) for e in events}
            _, pending = await asyncio.wait(
                waits, timeout=min(remaining, POLL), return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
    log.info("stopping")


def run(setup: Setup, clock: Callable[[], datetime] = system_clock) -> int:
    logs.configure()

    async def main() -> None:
        stop, poked, hup = asyncio.Event(), asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        notifier = Notifier()
        watchdog = asyncio.ensure_future(watchdog_task(notifier))
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpg") as pool:
            dispatcher = build(setup, clock, pool)
            assert setup.config.intake is not None
            intake = build_intake(setup, dispatcher, clock, pool, poked.set)
            running = Running(setup, dispatcher, intake, clock, pool, poked.set)
            where = f"{setup.config.intake.host}:{setup.config.intake.port}"
            try:
                listener = await start_listener(listener_config(setup.config.intake), intake)
            except OSError as exc:
                await dispatcher.aclose()
                raise UserError(f"[intake] listen: cannot listen on {where}: {exc}") from None
            log.info("listening", address=where)
            notifier.ready(f"listening on {where}; {queue_size(dispatcher.store)}")

            async def close_listener_on_stop() -> None:
                await stop.wait()
                notifier.stopping()
                listener.close()  # no new mail; what is in receive() gets its reply

            def report(next_at: datetime | None) -> None:
                notifier.status(tick_status(dispatcher.store, next_at))

            closer = asyncio.ensure_future(close_listener_on_stop())
            serving = asyncio.ensure_future(
                serve(
                    dispatcher,
                    stop,
                    poked,
                    hup,
                    running.reload,
                    ticked=report if notifier.enabled else None,
                )
            )
            try:
                await asyncio.wait({serving, closer}, return_when=asyncio.FIRST_COMPLETED)
                await _finish(serving, SEND_GRACE)
            finally:
                stop.set()
                await closer
                try:
                    await asyncio.wait_for(listener.wait_closed(), LISTENER_GRACE)
                except TimeoutError:
                    listener.abort_clients()
                try:
                    await asyncio.wait_for(dispatcher.aclose(), CLOSE_GRACE)
                except TimeoutError:
                    log.warning("smarthost-close-timeout")
                watchdog.cancel()

    with setup:
        asyncio.run(main())
    return 0


async def _finish(serving: asyncio.Future[None], grace: float) -> None:
    """Let the serve loop end (it starts no new transaction once stopping);
    one still stuck on a silent smarthost after `grace` seconds is cut off:
    its message stays `sending` and goes again at the next start, flagged
    as a possible duplicate."""
    try:
        await asyncio.wait_for(asyncio.shield(serving), grace)
    except TimeoutError:
        log.warning("stop-cut-short", grace_seconds=grace)
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


@dataclass
class Running:
    """What `maild run` runs on; `reload` swaps in a new setup (SIGHUP)."""

    setup: Setup
    dispatcher: Dispatcher
    intake: Intake
    clock: Callable[[], datetime]
    pool: ThreadPoolExecutor
    poke: Callable[[], None]

    async def reload(self) -> None:
        """Read the config, orgs list, keys folder and calendar again and take
        them, or keep everything as it is and log why (see maild.service.reload)."""
        log.info("reloading")
        try:
            reloaded = reload.load(self.setup, self.clock())
            fresh = wire(reloaded.setup, self.clock, self.pool)
        except (UserError, SourceError) as exc:
            log.error("reload-failed", reason=str(exc))
            return
        before, smarthost = self.setup.orgs, self.dispatcher.smarthost
        try:
            stale = reload.stale_payloads(self.dispatcher.store, before, reloaded)
            again = self.dispatcher.store.discard_payloads(stale)
        except (StoreError, OSError) as exc:  # a full disk: keep running as before
            log.error("reload-failed", reason=str(exc))
            return
        reload.adopt(self.dispatcher, fresh, keep=("store", "clock", "pool", "stopping"))
        self.dispatcher.resync()
        reload.adopt(
            self.intake,
            build_intake(reloaded.setup, self.dispatcher, self.clock, self.pool, self.poke),
            keep=("store", "keyring", "clock", "pool", "wake", "limits"),
        )
        self.setup = reloaded.setup
        await smarthost.close()  # between ticks: no transaction is open on it
        for problem in reloaded.warnings:
            log.warning("setup-problem", problem=problem)
        log.info(
            "reloaded",
            orgs=len(reloaded.setup.orgs.orgs),
            keys=len(reloaded.setup.folder.fingerprints),
            prepare_again=again,
        )


def _address(uids: tuple[str, ...]) -> str | None:
    for uid in uids:
        _, email = parseaddr(uid)
        if "@" in email:
            return email
    return None
