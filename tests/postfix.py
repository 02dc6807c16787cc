"""A private Postfix instance for integration tests: Debian's real Postfix,
started as root from its own config folder in a short temp dir under /tmp.

It listens on 127.0.0.1:<free port> only; delivers the mailboxes it is
given to Maildirs under its folder (virtual delivery, no unix users needed);
accepts any other address of their domains and then bounces it (unknown
user) with a DSN; and relays `relay_domain` (maild's intake domain) to
maild's intake listener, so the DSNs Postfix generates come back to maild.
It never touches /etc/postfix's settings or a system-wide Postfix, and never
listens on port 25.
"""

from __future__ import annotations

import contextlib
import os
import pty
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.world import free_port

POSTFIX = Path("/usr/sbin/postfix")
MASTER = Path("/usr/lib/postfix/sbin/master")  # Debian's daemon_directory
HOSTNAME = "postfix.localhost"  # in the Received headers Postfix writes

# Every service Postfix needs, none chrooted (the 5th column is "n"); the
# SMTP listener is added per instance. Columns: service type private unpriv
# chroot wakeup maxproc command.
_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(Exception):
    """The private instance could not be configured or started."""


def available() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    if not POSTFIX.exists():
        return "Postfix (Debian package 'postfix') is not installed; `make system-deps` installs it"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the 'postfix' user (made by the Debian package) is missing"
    return None


@dataclass
class Postfix:
    """One running private instance."""

    root: Path
    port: int

    @property
    def conf(self) -> Path:
        return self.root / "etc"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def maildir(self, address: str) -> Path:
        """Where Postfix delivers `address` (a Maildir: new/, cur/, tmp/)."""
        local, _, domain = address.lower().partition("@")
        return self.root / "mail" / domain / local

    def delivered(self, address: str) -> list[bytes]:
        """The messages delivered to `address`, oldest first."""
        new = self.maildir(address) / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []

    def received_ids(self) -> set[str]:
        """Queue ids Postfix's smtpd gave to mail it received (from its log)."""
        return set(re.findall(r"postfix/smtpd\[\d+\]: ([0-9A-F]+): client=", self.log()))

    def flush(self) -> None:
        """Try every deferred message now (`postqueue -f`)."""
        self._run("postqueue", "-f")

    def stop(self) -> None:
        """Stop the instance; kill its master if a clean stop fails."""
        try:
            self._run("postfix", "stop")
        except PostfixError:
            with contextlib.suppress(PostfixError):
                self._run("postfix", "abort")
        pid_file = self.root / "spool" / "pid" / "master.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _master(pid):
                time.sleep(0.05)
            if _master(pid):
                os.kill(pid, signal.SIGKILL)

    def _run(self, command: str, *args: str) -> str:
        """Run a Postfix command on this instance; its messages, or PostfixError.

        Postfix commands write their messages to stderr only when it is a
        terminal (else only to the log), so stderr is a pseudo-terminal."""
        ours, theirs = pty.openpty()
        try:
            done = subprocess.run(
                [f"/usr/sbin/{command}", "-c", str(self.conf), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=theirs,
                timeout=60,
            )
        finally:
            os.close(theirs)
        try:
            said = (done.stdout + _drain(ours)).decode(errors="replace").replace("\r", "")
        finally:
            os.close(ours)
        if done.returncode != 0:
            raise PostfixError(f"postfix: {command} {' '.join(args)} failed: {said.strip()}")
        return said


def _drain(fd: int) -> bytes:
    """What a finished command wrote to its pseudo-terminal."""
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed and nothing is left
            return out
        if not chunk:
            return out
        out += chunk


@contextlib.contextmanager
def running(
    *, mailboxes: Sequence[str], domains: Sequence[str], relay_domain: str, relay_port: int
) -> Iterator[Postfix]:
    """A private Postfix listening on a free loopback port: each of
    `mailboxes` is delivered to its own Maildir; any other address in
    `domains` is accepted at RCPT and then bounced with a failure DSN, as an
    unknown user; `relay_domain` is relayed to 127.0.0.1:`relay_port`."""
    problem = available()
    if problem is not None:
        raise PostfixError(problem)
    root = Path(tempfile.mkdtemp(prefix="pf-", dir="/tmp"))
    instance = Postfix(root, free_port())
    try:
        _configure(instance, mailboxes, domains, relay_domain, relay_port)
        warnings = instance._run("postfix", "check").strip()
        if warnings:
            raise PostfixError(f"postfix check: {warnings}")
        instance._run("postfix", "start")
        try:
            _wait_for_port(instance)
            yield instance
        finally:
            instance.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _configure(
    instance: Postfix,
    mailboxes: Sequence[str],
    domains: Sequence[str],
    relay_domain: str,
    relay_port: int,
) -> None:
    root, conf = instance.root, instance.conf
    owner = pwd.getpwnam("postfix")
    root.chmod(0o755)  # the delivery agent (uid postfix) reaches mail/ through it
    conf.mkdir()
    (root / "spool").mkdir()  # Postfix makes its queue folders in it
    for folder in (root / "data", root / "mail"):
        folder.mkdir()
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    # texthash tables are read as they are (no postmap run). A mailbox path
    # ending in "/" is a Maildir, relative to virtual_mailbox_base.
    (conf / "vmailbox").write_text(
        "".join(f"{a} {instance.maildir(a).relative_to(root / 'mail')}/\n" for a in mailboxes)
    )
    (conf / "transport").write_text(f"{relay_domain} smtp:[127.0.0.1]:{relay_port}\n")
    (conf / "master.cf").write_text(f"127.0.0.1:{instance.port} inet n - n - - smtpd\n" + _SERVICES)
    (conf / "main.cf").write_text(
        f"""\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = {HOSTNAME}
mydomain = localhost
myorigin = $myhostname
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# Accept unknown users of the virtual domains at RCPT, bounce them after.
smtpd_reject_unlisted_recipient = no
relay_domains = {relay_domain}
transport_maps = texthash:{conf}/transport
virtual_mailbox_domains = {", ".join(domains)}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{conf}/vmailbox
virtual_uid_maps = static:{owner.pw_uid}
virtual_gid_maps = static:{owner.pw_gid}
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
# Retry deferred mail (e.g. a DSN while maild's intake was down) quickly.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""
    )


def _wait_for_port(instance: Postfix, timeout: float = 30.0) -> None:
    """Until the instance's smtpd greets with 220; PostfixError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", instance.port), timeout=1) as s,
        ):
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                return
        time.sleep(0.05)
    raise PostfixError(f"Postfix did not answer on port {instance.port}:\n{instance.log()}")


def _master(pid: int) -> bool:
    """Whether `pid` is still a running Postfix master (not a reused pid)."""
    try:
        return Path(f"/proc/{pid}/exe").resolve() == MASTER.resolve()
    except OSError:
        return False
