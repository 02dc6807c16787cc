"""maild.toml -> frozen dataclasses. Strict: unknown keys are errors, and every
error is one line naming the file, the line, the key and the problem."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from maild.domain.businessdays import WEEKDAY_NAMES, BusinessCalendar
from maild.domain.fields import Table
from maild.domain.orgs import EMAIL, normalise_fingerprint
from maild.domain.tomlsource import LineIndex, SourceError, parse_toml

DEFAULT_PATH = Path("/etc/maild/maild.toml")
ENV_VAR = "MAILD_CONFIG"
DURATION = re.compile(r"([0-9]{1,6})([dhms])")
HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*")
FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class ConfigError(SourceError):
    """The configuration is unusable; the message says where and why."""


class StartTls(StrEnum):
    OFF = "off"
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    gnupg_home: Path

    @property
    def database(self) -> Path:
        return self.state_dir / "maild.db"


@dataclass(frozen=True)
class IdentityConfig:
    address: str
    signing_key: str


@dataclass(frozen=True)
class IntakeConfig:
    host: str
    port: int
    addresses: tuple[str, ...]
    members: tuple[str, ...]
    hostname: str = "localhost"  # in the SMTP banner; default: the first address's domain
    max_size: int = 10 * 1024 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    max_signature_age: timedelta = timedelta(days=3)
    approvals: int = 1  # 2: the two-person rule
    timeout: int = 300  # seconds a connection may last
    max_commands: int = 100  # SMTP commands per connection


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    starttls: StartTls
    username: str
    password_file: Path | None
    connections: int


@dataclass(frozen=True)
class AnnounceConfig:
    addresses: tuple[str, ...]
    blog_dir: Path | None


@dataclass(frozen=True)
class Config:
    path: Path | None
    calendar: BusinessCalendar
    daemon: DaemonConfig | None = None
    identity: IdentityConfig | None = None
    keys_dir: Path | None = None
    orgs_file: Path | None = None
    intake: IntakeConfig | None = None
    smtp: SmtpConfig | None = None
    announce: AnnounceConfig | None = None

    def require(self, command: str, *sections: str) -> None:
        """Raise ConfigError naming the first section `command` needs and lacks."""
        present = {
            "daemon": self.daemon,
            "identity": self.identity,
            "keys": self.keys_dir,
            "orgs": self.orgs_file,
            "intake": self.intake,
            "smtp": self.smtp,
            "announce": self.announce,
        }
        where = self.path if self.path is not None else "the built-in defaults"
        for name in sections:
            if present[name] is None:
                raise ConfigError(f"{where}: [{name}] is missing; '{command}' needs it")


def resolve_path(explicit: str | None, environ: dict[str, str] | None = None) -> Path | None:
    """The config file to use: --config, else $MAILD_CONFIG, else the default
    path if it exists, else None (built-in defaults; enough for `plan` only)."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load(path: Path | None) -> Config:
    """Read and validate the config at `path` (None: built-in defaults)."""
    if path is None:
        return Config(path=None, calendar=BusinessCalendar())
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Config:
    source = str(path)
    root = Table(parse_toml(text, source), source=source, index=LineIndex(text))
    base = path.resolve().parent
    sections = {
        name: root.table(name, f"[{name}] ")
        for name in ("daemon", "calendar", "identity", "keys", "orgs", "intake", "smtp", "announce")
    }
    root.reject_unknown()
    cfg = Config(
        path=path,
        calendar=_calendar(sections["calendar"]),
        daemon=_daemon(sections["daemon"], base),
        identity=_identity(sections["identity"]),
        keys_dir=_path(sections["keys"], "dir", base, default="keys"),
        orgs_file=_path(sections["orgs"], "file", base, default="orgs.toml"),
        intake=_intake(sections["intake"], base),
        smtp=_smtp(sections["smtp"], base),
        announce=_announce(sections["announce"], base),
    )
    for table in sections.values():
        if table is not None:
            table.reject_unknown()
    return cfg


def _calendar(t: Table | None) -> BusinessCalendar:
    if t is None:
        return BusinessCalendar()
    zone = t.text("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise t.error("timezone", f"unknown IANA time zone {zone!r} (e.g. Europe/Berlin)") from None
    weekend = set()
    for name in t.items("weekend", ["sat", "sun"]):
        key = name.lower() if isinstance(name, str) else name
        if key in WEEKDAY_NAMES:
            weekend.add(WEEKDAY_NAMES.index(key))
        elif key in FULL_DAY_NAMES:
            weekend.add(FULL_DAY_NAMES.index(key))
        else:
            raise t.error("weekend", f"{name!r} is not a day name (use mon, tue, ... sun)")
    if len(weekend) == 7:
        raise t.error("weekend", "covers all seven days: no business day would be left")
    holidays = set()
    for day in t.items("holidays", []):
        if not isinstance(day, date) or hasattr(day, "hour"):
            raise t.error("holidays", f"{day!r} is not a TOML date (write 2026-12-25, unquoted)")
        holidays.add(day)
    return BusinessCalendar(zone, frozenset(weekend), frozenset(holidays))


def _daemon(t: Table | None, base: Path) -> DaemonConfig | None:
    if t is None:
        return None
    state = _path(t, "state_dir", base, default="/var/lib/maild")
    assert state is not None
    gnupg = _path(t, "gnupg_home", base, default=str(state / "gnupg"))
    assert gnupg is not None
    return DaemonConfig(state, gnupg)


def _identity(t: Table | None) -> IdentityConfig | None:
    if t is None:
        return None
    return IdentityConfig(_email(t, "address"), _fingerprint(t, "signing_key"))


def _intake(t: Table | None, base: Path) -> IntakeConfig | None:
    if t is None:
        return None
    host, port = _host_port(t, "listen", "127.0.0.1:8025")
    addresses = tuple(_email(t, "addresses", a) for a in t.texts("addresses"))
    if not addresses:
        raise t.error("addresses", "needs at least one address maild accepts mail for")
    members = tuple(_fingerprint(t, "members", m) for m in t.texts("members"))
    if not members:
        raise t.error("members", "needs at least one WG member's key fingerprint")
    hostname = t.text("hostname", addresses[0].rpartition("@")[2])
    if not HOSTNAME.fullmatch(hostname):
        raise t.error("hostname", f"{hostname!r} is not a host name like mail.example.org")
    tls_cert = _optional_path(t, "tls_cert", base)
    tls_key = _optional_path(t, "tls_key", base)
    if (tls_cert is None) != (tls_key is None):
        given = "tls_cert" if tls_key is None else "tls_key"
        raise t.error(given, "set both tls_cert and tls_key, or neither")
    require_tls = t.flag("require_tls", False)
    if require_tls and tls_cert is None:
        raise t.error("require_tls", "needs tls_cert and tls_key (STARTTLS)")
    approvals = t.number("approvals", 1, minimum=1)
    if approvals > 2:
        raise t.error("approvals", "must be 1 (one member submits) or 2 (a second approves)")
    return IntakeConfig(
        host,
        port,
        addresses,
        members,
        hostname=hostname,
        max_size=t.number("max_size", 10 * 1024 * 1024, minimum=1024),
        tls_cert=tls_cert,
        tls_key=tls_key,
        require_tls=require_tls,
        max_signature_age=_duration(t, "max_signature_age", "3d"),
        approvals=approvals,
        timeout=t.number("timeout", 300, minimum=1),
        max_commands=t.number("max_commands", 100, minimum=10),
    )


def _duration(t: Table, key: str, default: str) -> timedelta:
    text = t.text(key, default)
    match = DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise t.error(key, f"{text!r} is not a duration like 3d, 12h or 30m")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match[2]]
    return timedelta(**{unit: int(match[1])})


def _smtp(t: Table | None, base: Path) -> SmtpConfig | None:
    if t is None:
        return None
    host = t.text("host", "127.0.0.1")
    port = _port(t, "port", t.number("port", 25))
    starttls = t.choice("starttls", StartTls, StartTls.OPPORTUNISTIC)
    username = t.raw("username", "")
    if not isinstance(username, str):
        raise t.error("username", "must be a string")
    password_file = t.raw("password_file", "")
    if not isinstance(password_file, str):
        raise t.error("password_file", "must be a string (a path, or empty for none)")
    connections = t.number("connections", 4, minimum=1)
    return SmtpConfig(
        host,
        port,
        starttls,
        username,
        (base / password_file) if password_file else None,
        connections,
    )


def _announce(t: Table | None, base: Path) -> AnnounceConfig | None:
    if t is None:
        return None
    addresses = tuple(_email(t, "addresses", a) for a in t.texts("addresses"))
    if not addresses:
        raise t.error("addresses", "needs at least one public announcement address")
    blog = t.raw("blog_dir", "")
    if not isinstance(blog, str):
        raise t.error("blog_dir", "must be a string (a folder, or empty for none)")
    return AnnounceConfig(addresses, (base / blog) if blog else None)


def _path(t: Table | None, key: str, base: Path, default: Any = None) -> Path | None:
    if t is None:
        return None
    value = t.text(key, default)
    if value is None:
        raise t.error(key, "is required")
    return base / Path(value).expanduser()


def _optional_path(t: Table, key: str, base: Path) -> Path | None:
    """A path, or None when the key is absent or empty."""
    value = t.text(key, "")
    return base / Path(value).expanduser() if value else None


def _email(t: Table, key: str, value: str | None = None) -> str:
    address = t.text(key) if value is None else value
    if not EMAIL.match(address):
        raise t.error(key, f"{address!r} is not an email address")
    return address


def _fingerprint(t: Table, key: str, value: str | None = None) -> str:
    raw = t.text(key) if value is None else value
    try:
        return normalise_fingerprint(raw)
    except ValueError as exc:
        raise t.error(key, str(exc)) from None


def _host_port(t: Table, key: str, default: str) -> tuple[str, int]:
    value = t.text(key, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise t.error(key, f"{value!r} must be host:port, like 127.0.0.1:8025 or [::1]:8025")
    return host.strip("[]"), _port(t, key, int(port))


def _port(t: Table, key: str, port: int) -> int:
    if not 0 < port < 65536:
        raise t.error(key, f"{port} is not a TCP port (1-65535)")
    return port
