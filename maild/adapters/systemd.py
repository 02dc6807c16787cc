"""sd_notify(3) over `$NOTIFY_SOCKET`: readiness, status, watchdog, stopping.

systemd starts a `Type=notify` service with `NOTIFY_SOCKET` naming an
AF_UNIX datagram socket (a path, or an abstract name written with a leading
`@`); each notification is one datagram of `KEY=value` lines. Without the
variable every call does nothing, so `maild run` behaves the same outside
systemd. A failed send never reaches the daemon: it is logged once, as a
warning, and the daemon carries on (systemd then acts on the missing
notification by its own rules: a start timeout, a watchdog restart).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("maild.systemd")


class Notifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        if self.address is None and env.get("NOTIFY_SOCKET"):
            log.warning("notify-socket-unsupported", socket=env["NOTIFY_SOCKET"])
        self._watchdog = _watchdog_seconds(env)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> None:
        """Start-up is complete (READY=1), with a first status line."""
        self.send("READY=1", *([] if status is None else [_status(status)]))

    def status(self, text: str) -> None:
        """A one-line status shown by `systemctl status`."""
        self.send(_status(text))

    def stopping(self) -> None:
        """Shutdown has begun (STOPPING=1)."""
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """Still alive (WATCHDOG=1)."""
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: half of `WATCHDOG_USEC`, or None
        when there is no watchdog (no socket, no or a bad `WATCHDOG_USEC`, or
        a `WATCHDOG_PID` naming another process)."""
        return self._watchdog if self.enabled else None

    def send(self, *lines: str) -> bool:
        """Send one datagram of `lines`; True if it was sent. Never raises."""
        if self.address is None:
            return False
        data = "".join(f"{line}\n" for line in lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # never stall the event loop
                sock.sendto(data, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("notify-failed", error=str(exc), socket=_shown(self.address))
            return False
        return True


async def watchdog_task(notifier: Notifier) -> None:
    """Ping the watchdog from the event loop until cancelled: a loop that is
    blocked or stuck stops the pings, and systemd restarts the daemon."""
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _address(value: str) -> str | bytes | None:
    if not value or value[0] not in "/@":
        return None  # unset, or a kind of address this client does not speak
    if value[0] == "@":
        return b"\0" + value[1:].encode()
    return value


def _shown(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    pid = env.get("WATCHDOG_PID", "")
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line, whatever it was given
