"""Benchmark 5: mail intake throughput.

M members' submissions (a ~100 KB advisory each, signed by the member and encrypted to
maild's identity key and to the member's own, RFC 3156 PGP/MIME) are sent by 20
concurrent aiosmtplib clients to the daemon's own listener and intake (`build()`,
`build_intake()`, `start_listener`, a 2-thread gpg pool), against a loop of
`gpg --decrypt` command lines verifying the same messages one after another. Every
reply must be 250.

maild runs MAILD_RUNS times, each on its own M submissions (a signature seen before is
refused; after each run the store must hold exactly the advisories sent so far),
interleaved with the gpg loop and the SMTP-only floor (one run before the first maild
run, one after each) so that load on the machine hits both alike; the rates are medians,
the breakdown that of the median maild run.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import os
import pstats
import random
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib

from bench.common import Report, Timer, median, ms, paired_ratio, ratio
from bench.world import KeyPool, World, short_tmp
from maild.adapters.gpg import Keyring
from maild.adapters.sink import start_sink
from maild.adapters.smtp_in import Listener, ListenerConfig, Received, start_listener
from maild.domain.models import MessageKind
from maild.service import embargo as embargo_module
from maild.service import intake as intake_module
from maild.service import membermail as membermail_module
from maild.service import replies as replies_module
from maild.service.clock import system_clock
from maild.service.daemon import build_intake, listener_config
from maild.service.intake import ACCEPTED, Intake

MESSAGES = 100  # submissions measured (python -m bench)
QUICK_MESSAGES = 40  # with --quick
CLIENTS = 20  # concurrent SMTP clients, one connection each, sending one after another
PER_CONNECTION = 30  # at most; [intake] max_commands (100) allows 33 (3 commands each)
ORGS = 100  # organisations in the orgs list: each submission queues ORGS notices
BODY_BYTES = 100 * 1024  # the advisory's Markdown body
MAILD_RUNS = 3  # maild runs, each on its own submissions; the median is used
BASELINE_RUNS = MAILD_RUNS + 1  # the gpg loop and the floor: before the first, after each
SEND_LIMIT = 600.0  # seconds for all submissions before the benchmark gives up
GPG_TIMEOUT = 60
SENDER = "m@wg.example"
RCPT = "embargo@maild.example"
CRLF = b"\r\n"
TARGET = 1.3


@dataclass(frozen=True)
class Mail:
    advisory_id: str
    payload: bytes  # the MIME entity the member signed and encrypted
    armored: bytes  # gpg's armored output
    wire: bytes  # the PGP/MIME message sent


def run(keys: KeyPool, report: Report, messages: int, *, profile: bool = False) -> None:
    started = time.perf_counter()
    loop = asyncio.new_event_loop()
    running = loop.run_until_complete(start_sink())
    client_home: Path | None = None
    listener: Listener | None = None
    try:
        world = World.create(keys, ORGS, running.port)
        try:
            print(
                f"  installation in {world.root} ({ORGS} organisations), "
                f"sink on 127.0.0.1:{running.port} (smarthost for the replies)"
            )
            setup = world.store_setup()
            dispatcher = world.open(system_clock)  # the daemon's build(), 2 gpg threads
            assert world.pool is not None and setup.config.intake is not None
            pokes: list[None] = []
            intake = build_intake(
                setup, dispatcher, system_clock, world.pool, lambda: pokes.append(None)
            )
            config = replace(listener_config(setup.config.intake), host="127.0.0.1", port=0)
            listener = loop.run_until_complete(start_listener(config, intake))
            port = int(listener.sockets[0].getsockname()[1])

            client_home = short_tmp()
            count = MAILD_RUNS * messages + 1
            print(
                f"  signing and encrypting {count} submissions with the gpg CLI "
                f"(a warm-up, and {messages} for each of the {MAILD_RUNS} maild runs)"
            )
            making = time.perf_counter()
            mails = _make_mails(keys, world, client_home, count)
            making = time.perf_counter() - making
            warmup = mails[0]
            runs = [mails[1 + k * messages : 1 + (k + 1) * messages] for k in range(MAILD_RUNS)]
            sizes = sorted(len(m.wire) for m in runs[0])
            print(
                f"  made in {making:.1f} s; each: advisory {len(warmup.payload) / 1024:.0f} KB, "
                f"message on the wire {sizes[len(sizes) // 2] / 1024:.0f} KB "
                f"(gpg compresses before encrypting)"
            )
            _measure(
                loop, world, intake, config, port, warmup, runs, report, pokes, profile=profile
            )
        finally:
            if listener is not None:
                listener.close()
                loop.run_until_complete(listener.wait_closed())
            if world.dispatcher is not None:
                loop.run_until_complete(world.dispatcher.aclose())
            world.close()
    finally:
        if client_home is not None:
            Keyring(client_home / "g").close()
            shutil.rmtree(client_home, ignore_errors=True)
        loop.run_until_complete(running.close())
        loop.close()
    print(f"  the intake benchmark took {time.perf_counter() - started:.0f} s in all")


# -- the submissions ----------------------------------------------------------------


CLIENT_TRIES = 3  # client signing failed once in several hundred here (gpg-agent)


def _gpg(home: Path, args: Sequence[str], data: bytes | None = None, *, tries: int = 1) -> bytes:
    """gpg on a client home; `tries` > 1 runs it again after a failure (the agent of
    GnuPG 2.2 under two concurrent signers once answered "Unmatched parentheses in
    S-expression" here: setup, not a measured figure, so it is retried and said)."""
    for attempt in range(1, tries + 1):
        try:
            return _gpg_once(home, args, data)
        except RuntimeError as exc:
            if attempt == tries:
                raise
            print(f"  note: client gpg failed (try {attempt} of {tries}), again: {exc}")
    raise AssertionError("unreachable")


def _gpg_once(home: Path, args: Sequence[str], data: bytes | None) -> bytes:
    done = subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            *args,
        ],
        input=data,
        capture_output=True,
        check=False,
        timeout=GPG_TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gpg {args[:2]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def _make_mails(keys: KeyPool, world: World, home: Path, count: int) -> list[Mail]:
    """`count` distinct submissions, as a member's mail client writes them: a client
    keyring with the member's secret key and maild's public key; each advisory has
    its own id, so each is a distinct signed message (a replayed one is refused)."""
    ring = home / "g"
    ring.mkdir(mode=0o700)
    secret = _gpg(keys.home / "g", ["--armor", "--export-secret-keys", keys.member])
    _gpg(ring, ["--import"], secret)
    _gpg(ring, ["--import"], world.store_setup().keyring.export_public(world.identity))
    disclosure = datetime.now(UTC).replace(microsecond=0) + timedelta(days=60)
    body = _body()
    stamp = datetime.now(UTC).strftime("%H%M%S")

    def one(i: int) -> Mail:
        advisory_id = f"BENCH-{stamp}-{i:04d}"
        payload = _payload(_advisory(advisory_id, disclosure, body))
        armored = _gpg(
            ring,
            [
                "--trust-model",
                "always",
                "--armor",
                "--sign",
                "--encrypt",
                "--recipient",
                world.identity,
                "--recipient",  # encrypt-to-self, as most mail clients do by default
                keys.member,
                "--local-user",
                keys.member + "!",
            ],
            payload,
            tries=CLIENT_TRIES,
        )
        return Mail(advisory_id, payload, armored, _pgp_mime(armored, i))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, range(count)))


_VOCABULARY = (
    "the a an of to in is that for on with as by this be are from at or it which when "
    "buffer length index pointer allocation frobnicator parser input crafted attacker "
    "memory write read overflow bounds check release version patch upstream affected "
    "function call returns caller handle state lock thread race condition unsafe block "
    "slice vector string byte decoder encoder stream header field value error panic "
    "abort process remote local privilege user request response session token crate "
    "library compiler toolchain standard runtime platform target build configuration"
)
_WORDS = _VOCABULARY.split()


def _body() -> str:
    """~BODY_BYTES of Markdown: headings, prose and code blocks, pseudo-random words
    (seeded) so that it compresses about as well as real prose does."""
    rng = random.Random(20261124)
    out: list[str] = []
    size, section = 0, 0
    while size < BODY_BYTES:
        if size == 0 or rng.random() < 0.08:
            section += 1
            chunk = f"## Section {section}: {' '.join(rng.choices(_WORDS, k=4))}\n\n"
        elif rng.random() < 0.15:
            lines = [
                f"    let {rng.choice(_WORDS)}_{j} = {rng.choice(_WORDS)}(&{rng.choice(_WORDS)}"
                f"[{rng.randrange(4096)}..{rng.randrange(4096, 65536)}]);"
                for j in range(rng.randrange(3, 9))
            ]
            chunk = "```rust\n" + "\n".join(lines) + "\n```\n\n"
        else:
            words = rng.choices(_WORDS, k=rng.randrange(40, 120))
            lines, line = [], ""
            for w in words:
                if len(line) + len(w) + 1 > 78:
                    lines.append(line)
                    line = ""
                line = f"{line} {w}" if line else w.capitalize()
            chunk = "\n".join([*lines, line]) + ".\n\n"
        out.append(chunk)
        size += len(chunk.encode())
    return "# Details\n\n" + "".join(out)


def _advisory(advisory_id: str, disclosure: datetime, body: str) -> str:
    return (
        "+++\n"
        f'id = "{advisory_id}"\n'
        f'title = "Use-after-free in the frobnicator ({advisory_id})"\n'
        f"disclosure = {disclosure.isoformat()}\n"
        'severity = "high"\n'
        'component = "standard library"\n'
        'cve = ["CVE-2030-0001"]\n'
        f"+++\n{body}"
    )


def _payload(body: str) -> bytes:
    """The MIME entity a member signs and encrypts (as tests/mailfactory.payload)."""
    head = [b"MIME-Version: 1.0", b'Content-Type: text/plain; charset="utf-8"']
    head.append(b"Content-Transfer-Encoding: 8bit")
    text = body.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    return CRLF.join(head) + CRLF + CRLF + text


def _pgp_mime(armored: bytes, i: int) -> bytes:
    """RFC 3156 multipart/encrypted around an armored message (as tests/mailfactory)."""
    boundary = b"outer-enc-1"
    head = [
        b"From: " + SENDER.encode(),
        b"To: " + RCPT.encode(),
        b"Subject: ...",
        b"Message-ID: <bench-%d@wg.example>" % i,
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
        b'boundary="' + boundary + b'"',
    ]
    parts = [
        b"Content-Type: application/pgp-encrypted" + CRLF + CRLF + b"Version: 1" + CRLF,
        b"Content-Type: application/octet-stream" + CRLF + CRLF + armored.replace(b"\n", CRLF),
    ]
    out = CRLF.join(head) + CRLF + CRLF
    for part in parts:
        out += b"--" + boundary + CRLF + part + CRLF
    return out + b"--" + boundary + b"--" + CRLF


# -- measuring ------------------------------------------------------------------------


@dataclass
class _Sent:
    codes: list[int] = field(default_factory=list)
    last_250: float = 0.0


async def _client(port: int, mails: Sequence[Mail], sent: _Sent) -> None:
    """One connection, its submissions one after another; every DATA reply recorded."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=120)
    await smtp.connect()
    try:
        for mail in mails:
            try:
                await smtp.mail(SENDER)
                await smtp.rcpt(RCPT)
                response = await smtp.data(mail.wire)
                code = response.code
            except aiosmtplib.SMTPResponseException as exc:
                code = exc.code
            sent.codes.append(code)
            if code == 250:
                sent.last_250 = max(sent.last_250, time.perf_counter())
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await smtp.quit()


async def _submit_all(port: int, mails: Sequence[Mail], clients: int) -> tuple[float, _Sent]:
    """Wall time from the first connect to the last 250."""
    shares = [mails[i::clients] for i in range(clients)]
    sent = _Sent()
    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(_client(port, share, sent) for share in shares if share)), SEND_LIMIT
    )
    return sent.last_250 - started, sent


def _decrypt_loop(world: World, mails: Sequence[Mail], member: str) -> float:
    """The baseline: one `gpg --decrypt` command line per message, one after another,
    each checked (the plaintext, and a good signature by the member)."""
    started = time.perf_counter()
    for mail in mails:
        done = subprocess.run(
            [
                "gpg",
                "--homedir",
                str(world.gnupg_home),
                "--batch",
                "--trust-model",
                "always",
                "--status-fd",
                "2",
                "--decrypt",
            ],
            input=mail.armored,
            capture_output=True,
            check=False,
            timeout=GPG_TIMEOUT,
        )
        if done.returncode != 0 or done.stdout != mail.payload:
            raise RuntimeError(f"gpg --decrypt failed: {done.stderr.decode(errors='replace')}")
        if b"[GNUPG:] GOODSIG" not in done.stderr or member.encode() not in done.stderr:
            raise RuntimeError("gpg --decrypt: no good signature by the member")
    return time.perf_counter() - started


class _Span:
    """Total time spent in an async method of one object (all concurrent calls)."""

    def __init__(self, obj: object, name: str) -> None:
        self.total = 0.0
        self.calls = 0
        self._obj, self._name = obj, name
        original = getattr(obj, name)

        async def spanned(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - started
                self.calls += 1

        setattr(obj, name, spanned)

    def remove(self) -> None:
        delattr(self._obj, self._name)


@dataclass
class _Total:
    total: float = 0.0
    calls: int = 0


@contextlib.contextmanager
def _timed_module_function(module: Any, name: str) -> Iterator[_Total]:
    """Time a module-level function called on the loop's thread (put back afterwards)."""
    original = getattr(module, name)
    spent = _Total()

    def timed(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.total += time.perf_counter() - started
            spent.calls += 1

    setattr(module, name, timed)
    try:
        yield spent
    finally:
        setattr(module, name, original)


class _Transactions:
    """Time inside the intake's group commits (`GroupCommit._commit`: one transaction
    for the members' mail ready together, its COMMIT included; the fsync that follows
    runs in a thread), on the event loop's thread."""

    def __init__(self, commits: Any) -> None:
        self.total = 0.0
        self.calls = 0
        self._commits = commits
        original: Callable[..., Any] = commits._commit

        def commit(batch: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(batch)
            finally:
                self.total += time.perf_counter() - started
                self.calls += 1

        commits._commit = commit

    def remove(self) -> None:
        delattr(self._commits, "_commit")


class _NullIntake:
    """The floor: takes every message at once, as maild's reply says."""

    async def receive(self, message: Received) -> str:
        return ACCEPTED


async def _floor(
    config: ListenerConfig, mails: Sequence[Mail], clients: int
) -> tuple[float, float]:
    """The same clients and messages against maild's listener with an intake that does
    nothing: (wall time to the last 250, CPU of the loop's thread)."""
    listener = await start_listener(config, _NullIntake())
    try:
        port = int(listener.sockets[0].getsockname()[1])
        cpu = time.thread_time()
        elapsed, sent = await _submit_all(port, mails, clients)
        cpu = time.thread_time() - cpu
    finally:
        listener.close()
        await listener.wait_closed()
    assert sent.codes == [250] * len(mails), "the floor listener refused messages"
    return elapsed, cpu


@dataclass
class _MaildRun:
    """One timed maild run: its wall time, its replies, where the time went, and its
    own CPU deltas (the loop's thread, the process's other threads, the gpg processes,
    the gpg-agent)."""

    elapsed: float
    sent: _Sent
    spans: _Span  # Intake.receive
    timers: dict[str, Timer]
    transactions: _Transactions
    parses: _Total  # intake.parse
    inner: _Total  # membermail.parse
    rows: _Total  # embargo.notice_rows
    texts: _Total  # replies.submitted
    cpu_loop: float
    cpu_threads: float
    cpu_children: float
    cpu_agent: float


def _maild_run(
    loop: asyncio.AbstractEventLoop,
    world: World,
    intake: Intake,
    port: int,
    mails: Sequence[Mail],
    clients: int,
    profiler: cProfile.Profile | None,
) -> _MaildRun:
    """The submissions of one run through maild's listener, everything timed."""
    store = world.store_setup().store
    keyring = world.store_setup().keyring
    with contextlib.ExitStack() as patches:
        spans = _Span(intake, "receive")
        patches.callback(spans.remove)
        timers: dict[str, Timer] = {}
        for name, obj, method in [
            ("decrypt", keyring, "decrypt_signed_by"),
            ("seal", keyring, "encrypt"),
            ("act", intake, "_act"),
            ("list", store, "list_advisories"),
            ("add", store, "add_advisory"),
            ("read", store, "messages"),
        ]:
            timers[name] = Timer(obj, method)
            patches.callback(timers[name].remove)
        transactions = _Transactions(intake._commits)
        patches.callback(transactions.remove)
        parses = patches.enter_context(_timed_module_function(intake_module, "parse"))
        inner = patches.enter_context(_timed_module_function(membermail_module, "parse"))
        rows = patches.enter_context(_timed_module_function(embargo_module, "notice_rows"))
        texts = patches.enter_context(_timed_module_function(replies_module, "submitted"))
        cpu_children, cpu_agent = _children_cpu(), _agent_cpu(world.gnupg_home)
        cpu_loop, cpu_process = time.thread_time(), time.process_time()
        if profiler is not None:
            profiler.enable()
        try:
            elapsed, sent = loop.run_until_complete(_submit_all(port, mails, clients))
        finally:
            if profiler is not None:
                profiler.disable()
        cpu_loop = time.thread_time() - cpu_loop
        cpu_threads = time.process_time() - cpu_process - cpu_loop
        cpu_children = _children_cpu() - cpu_children
        cpu_agent = _agent_cpu(world.gnupg_home) - cpu_agent
    return _MaildRun(
        elapsed,
        sent,
        spans,
        timers,
        transactions,
        parses,
        inner,
        rows,
        texts,
        cpu_loop,
        cpu_threads,
        cpu_children,
        cpu_agent,
    )


def _baseline(world: World, mails: Sequence[Mail], member: str) -> tuple[float, float]:
    """One run of the gpg loop: (wall time, CPU per message of gpg and the gpg-agent)."""
    cpu_children, cpu_agent = _children_cpu(), _agent_cpu(world.gnupg_home)
    elapsed = _decrypt_loop(world, mails, member)
    cpu_children = _children_cpu() - cpu_children
    cpu_agent = _agent_cpu(world.gnupg_home) - cpu_agent
    return elapsed, (cpu_children + cpu_agent) / len(mails)


def _check(
    world: World,
    expected: set[str],
    earlier: set[str],
    mails: Sequence[Mail],
    sent: _Sent,
    wakeups: int,
    k: int,
) -> tuple[int, bool]:
    """After run k: every reply 250, the store holds exactly `expected` (the warm-up's
    and the runs' so far), and each of this run's advisories has its ORGS notices and
    its reply queued. Returns (submissions lost, everything as it should be)."""
    store = world.store_setup().store
    m = len(mails)
    accepted = sum(1 for c in sent.codes if c == 250)
    others = sorted({c for c in sent.codes if c != 250})
    held = {r.id for r in store.list_advisories()}
    new, mine = held - earlier, {mail.advisory_id for mail in mails}
    notices = {
        i: sum(1 for msg in store.messages(i) if msg.kind is MessageKind.NOTICE) for i in new
    }
    replies = [r.advisory_id for r in store.find_messages(kinds=[MessageKind.REPLY])]
    replied = _counts(replies, new)
    lost = max(len(mine - new), m - accepted)
    complete = all(notices[i] == ORGS and replied[i] == 1 for i in new)
    print(
        f"  check after run {k}: {accepted} of {m} replies were 250"
        + (f" (others: {others})" if others else "")
        + f"; the store holds {len(new)} new advisories ({len(new & mine)} of the "
        f"{m} sent, {len(new - mine)} unexpected), {len(held)} in all "
        f"({'as expected' if held == expected else f'{len(expected)} EXPECTED'}), "
        f"{sum(notices.values())} notices and {sum(replied.values())} replies queued for "
        f"the new ones (not sent: the dispatcher is not ticked)"
        + ("" if complete else f" (NOT {ORGS} notices and 1 reply each)")
        + f"; {wakeups} dispatcher wake-ups"
    )
    return lost, lost == 0 and accepted == m and held == expected and complete


def _counts(values: Sequence[str | None], keys: set[str]) -> dict[str, int]:
    counts = dict.fromkeys(keys, 0)
    for v in values:
        if v in counts:
            counts[v] += 1
    return counts


def _measure(
    loop: asyncio.AbstractEventLoop,
    world: World,
    intake: Intake,
    config: ListenerConfig,
    port: int,
    warmup: Mail,
    runs: Sequence[Sequence[Mail]],
    report: Report,
    pokes: list[None],
    *,
    profile: bool,
) -> None:
    """MAILD_RUNS maild runs (each its own submissions), interleaved with BASELINE_RUNS
    runs of the gpg loop and of the floor (one before the first maild run, one after
    each), so that load on the machine hits both alike. The baseline and the floor
    always take the first run's messages (the same work each time). The rates are
    medians; the breakdown is that of the median maild run."""
    m, member = len(runs[0]), world.keys.member
    clients = min(CLIENTS, m)
    store = world.store_setup().store
    _decrypt_loop(world, [warmup], member)  # gpg's and the agent's caches, as for maild
    baselines: list[tuple[float, float]] = []
    floors: list[tuple[float, float]] = []

    def baseline_and_floor(k: int) -> None:
        print(
            f"  baseline: `gpg --decrypt` of the first run's {m} messages, one after another; "
            f"floor: the same clients and messages, an intake answering 250 at once "
            f"(run {k} of {BASELINE_RUNS})"
        )
        baselines.append(_baseline(world, runs[0], member))
        floors.append(loop.run_until_complete(_floor(config, runs[0], clients)))

    baseline_and_floor(1)
    print("  maild: one warm-up submission (not counted)")
    _, sent = loop.run_until_complete(_submit_all(port, [warmup], 1))
    assert sent.codes == [250], f"the warm-up got {sent.codes}"
    expected = {warmup.advisory_id}
    held = {r.id for r in store.list_advisories()}
    assert held == expected, f"expected only the warm-up, found {held}"

    profiler = cProfile.Profile() if profile else None
    done: list[_MaildRun] = []
    lost, good = 0, True
    for k, mails in enumerate(runs, 1):
        profiled = profiler is not None and k == 1
        print(
            f"  maild: {m} submissions from {clients} concurrent clients "
            f"(one connection each) (run {k} of {MAILD_RUNS})" + (" (profiled)" if profiled else "")
        )
        wakeups = len(pokes)
        done.append(
            _maild_run(loop, world, intake, port, mails, clients, profiler if profiled else None)
        )
        earlier = set(expected)
        expected |= {mail.advisory_id for mail in mails}
        run_lost, run_good = _check(
            world, expected, earlier, mails, done[-1].sent, len(pokes) - wakeups, k
        )
        lost, good = lost + run_lost, good and run_good
        baseline_and_floor(k + 1)
        r = done[-1]
        print(
            f"    run {k}: maild {m / r.elapsed:.1f}/s (CPU per submission "
            f"{ms((r.cpu_loop + r.cpu_threads + r.cpu_children + r.cpu_agent) / m)}, the "
            f"loop's thread {ms(r.cpu_loop / m)}, transactions {ms(r.transactions.total / m)}); "
            f"the gpg loop after it {m / baselines[-1][0]:.1f}/s, "
            f"the floor {m / floors[-1][0]:.1f}/s"
        )
    assert len(baselines) == BASELINE_RUNS, f"{len(baselines)} baseline runs"

    _report(report, m, clients, done, baselines, floors, lost, good, profile=profile)
    print(
        "  note: maild runs gpg on 2 threads (one gpg process per submission to decrypt and\n"
        "  verify; the ciphertext, cut down to maild's session key, is stored as the sealed\n"
        "  advisory, or else a second process seals it), and its event loop also runs\n"
        f"  the {clients} aiosmtplib clients; the baseline runs one gpg process at a time, with\n"
        "  no SMTP and no store. The ratio compares throughput on the same 2 CPUs (below 1x,\n"
        "  maild's parallelism would more than pay for its extra work), not the cost of one\n"
        "  message. With 2 CPUs maild could at best be (CPU ratio) / 2 of the baseline's time\n"
        "  per message; the baseline leaves the second CPU idle."
    )
    if profiler is not None:
        _print_profile(profiler)


def _report(
    report: Report,
    m: int,
    clients: int,
    done: Sequence[_MaildRun],
    baselines: Sequence[tuple[float, float]],
    floors: Sequence[tuple[float, float]],
    lost: int,
    good: bool,
    *,
    profile: bool,
) -> None:
    """The rows: rates are medians over the runs (each of `m` submissions), the
    breakdown is that of the median maild run."""
    elapsed = median([r.elapsed for r in done])
    mid = sorted(done, key=lambda r: r.elapsed)[len(done) // 2]
    print(f"    median run: run {list(done).index(mid) + 1} of {MAILD_RUNS}")
    baseline = median([b[0] for b in baselines])
    cpu_baseline = median([b[1] for b in baselines])
    floor = median([f[0] for f in floors])
    floor_cpu = median([f[1] for f in floors])
    rate, rate_gpg, rate_floor = m / elapsed, m / baseline, m / floor
    of_maild, of_base = f"median of {MAILD_RUNS}", f"median of {BASELINE_RUNS}"
    timers = mid.timers

    def add(what: str, value: str, target: str = "", met: bool | None = None) -> None:
        report.add("intake", None, what, value, target, met)

    def per(total: float) -> str:
        return ms(total / m)

    add(
        f"maild: {m} submissions, {clients} clients, first connect -> last 250 ({of_maild})"
        + (", run 1 PROFILED" if profile else ""),
        ms(elapsed),
    )
    add(f"maild accepted submissions per second ({of_maild})", f"{rate:.1f}/s")
    add(f"gpg --decrypt loop, serial ({of_base})", f"{rate_gpg:.1f}/s")
    add("  maild wall time per submission", per(elapsed))
    add("  gpg --decrypt wall time per message", per(baseline))
    paired = paired_ratio([r.elapsed for r in done], [b[0] for b in baselines])
    add(
        "ratio gpg rate / maild rate (median of each run against the gpg loops around it)",
        ratio(paired),
        f"target <= {TARGET}x",
        paired <= TARGET,
    )
    add("  ratio of the medians above", ratio(rate_gpg / rate))
    add("submissions lost (not 250, or not stored)", str(lost), "target 0", good)
    add(f"floor: SMTP only, intake answers 250 ({of_base})", f"{rate_floor:.1f}/s")
    add("  floor wall time per message", per(floor))
    add(
        f"  Intake.receive, mean latency ({mid.spans.calls}, overlapping), of the median run",
        ms(mid.spans.total / max(mid.spans.calls, 1)),
    )
    add("maild per submission, on the 2 gpg threads (wall), of the median run:", "")
    add("  Keyring.decrypt_signed_by (gpg: decrypt, verify)", per(timers["decrypt"].total))
    seals = timers["seal"].calls
    add(
        f"  Keyring.encrypt (gpg: seal to the identity key; {seals} of {m} submissions)",
        per(timers["seal"].total),
    )
    add("maild per submission, on the event loop's thread (wall), of the median run:", "")
    parses, inner, transactions = mid.parses, mid.inner, mid.transactions
    mime_calls = parses.calls + inner.calls
    add(f"  MIME parsing ({mime_calls / m:g} per submission)", per(parses.total + inner.total))
    add(
        f"  the intake transactions ({transactions.calls} group commits, BEGIN..COMMIT)",
        per(transactions.total),
    )
    add("    Intake._act: desk.submit and the reply text", per(timers["act"].total))
    add("      list_advisories (desk's default id)", per(timers["list"].total))
    add(f"      notice_rows ({ORGS} notices, key health)", per(mid.rows.total))
    add(f"      store.add_advisory ({ORGS + 1} rows + event)", per(timers["add"].total))
    add("      store.messages (the notices, read back for the reply)", per(timers["read"].total))
    add("      replies.submitted (the reply's text)", per(mid.texts.total))
    parts = ("list", "add", "read")
    rest = timers["act"].total - sum(timers[k].total for k in parts)
    rest -= mid.rows.total + mid.texts.total
    add("      the rest (parse, plan, desk, bundle, ...)", per(rest))
    add(
        "    outside _act: replay check, reply row, savepoints, COMMIT (fsync in a thread)",
        per(transactions.total - timers["act"].total),
    )
    cpu_maild = (mid.cpu_loop + mid.cpu_threads + mid.cpu_children + mid.cpu_agent) / m
    add("maild CPU per submission, in all, of the median run", ms(cpu_maild))
    add("  event loop's thread", per(mid.cpu_loop))
    add(f"    of which SMTP, clients and listener (floor's loop, {of_base})", per(floor_cpu))
    add("  other threads of the process (pool, python-gnupg)", per(mid.cpu_threads))
    add(f"  gpg processes ({(m + seals) / m:g} per submission)", per(mid.cpu_children))
    add("  gpg-agent", per(mid.cpu_agent))
    add(f"baseline CPU per message (gpg + gpg-agent, {of_base})", ms(cpu_baseline))
    add("ratio of CPU per message, maild / baseline", ratio(cpu_maild / cpu_baseline))


def _agent_cpu(home: Path) -> float:
    """CPU seconds used so far by the gpg-agent serving `home` (it does the secret-key
    operations, and is not a child of this process once it daemonised)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if not command[0].endswith(b"gpg-agent") or str(home).encode() not in command:
                continue
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _print_profile(profiler: cProfile.Profile) -> None:
    print("    profile of the event loop's thread during run 1's submissions, top 25 by own time:")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)
    print("    ... and maild's own functions by cumulative time (the clients share the loop):")
    stats.sort_stats("cumulative").print_stats(r"/maild/", 30)
