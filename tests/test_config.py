"""The config file: strict schema, defaults, relative paths, one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest

from maild import config as configuration
from maild.config import StartTls
from maild.domain.tomlsource import SourceError

FPR = "0123456789ABCDEF0123456789ABCDEF01234567"
INTAKE = f'[intake]\naddresses = ["a@b.org"]\nmembers = ["{FPR}"]\n'
FULL = f"""
[daemon]
state_dir = "state"

[calendar]
timezone = "Europe/Berlin"
weekend = ["fri", "Saturday"]
holidays = [2026-12-25, 2027-01-01]

[identity]
address = "security@example.org"
signing_key = "{FPR[:20]} {FPR[20:]}"

[keys]
dir = "keys"

[orgs]
file = "orgs.toml"

[intake]
listen = "[::1]:2525"
addresses = ["embargo@example.org"]
members = ["{FPR}"]

[smtp]
host = "mx.example.org"
port = 587
starttls = "required"
username = "maild"
password_file = "secret"
connections = 8

[announce]
addresses = ["announce@example.org"]
blog_dir = "blog"
"""

Write = Callable[[str, str], Path]


def test_full_config_loads_with_paths_relative_to_the_file(write: Write) -> None:
    """Every section loads; relative paths resolve against the config's folder."""
    path = write("etc/maild.toml", FULL)
    cfg = configuration.load(path)
    base = path.resolve().parent
    assert cfg.daemon is not None and cfg.daemon.state_dir == base / "state"
    assert cfg.daemon.gnupg_home == base / "state" / "gnupg"
    assert cfg.calendar.timezone == "Europe/Berlin"
    assert cfg.calendar.weekend == frozenset({4, 5})
    assert cfg.calendar.holidays == frozenset({date(2026, 12, 25), date(2027, 1, 1)})
    assert cfg.identity is not None and cfg.identity.signing_key == FPR
    assert cfg.keys_dir == base / "keys" and cfg.orgs_file == base / "orgs.toml"
    assert cfg.intake is not None and (cfg.intake.host, cfg.intake.port) == ("::1", 2525)
    assert cfg.smtp is not None and cfg.smtp.starttls is StartTls.REQUIRED
    assert cfg.smtp.password_file == base / "secret" and cfg.smtp.connections == 8
    assert cfg.announce is not None and cfg.announce.blog_dir == base / "blog"


def test_defaults_need_only_the_required_keys(write: Write) -> None:
    """Sections given with only their required keys get the documented defaults."""
    cfg = configuration.load(write("maild.toml", "[daemon]\n[smtp]\n"))
    assert cfg.daemon is not None and cfg.daemon.state_dir == Path("/var/lib/maild")
    assert cfg.daemon.gnupg_home == Path("/var/lib/maild/gnupg")
    assert cfg.calendar.timezone == "UTC" and cfg.calendar.weekend == frozenset({5, 6})
    assert cfg.smtp is not None and (cfg.smtp.port, cfg.smtp.connections) == (25, 4)
    assert cfg.smtp.starttls is StartTls.OPPORTUNISTIC and cfg.smtp.password_file is None


def test_no_config_at_all_gives_the_plan_defaults() -> None:
    """With no file, the built-in calendar is UTC with a sat/sun weekend."""
    cfg = configuration.load(None)
    assert cfg.calendar.timezone == "UTC" and cfg.calendar.holidays == frozenset()


def test_config_path_order(tmp_path: Path) -> None:
    """--config wins over $MAILD_CONFIG, which wins over the default path."""
    assert configuration.resolve_path("a.toml", {"MAILD_CONFIG": "b.toml"}) == Path("a.toml")
    assert configuration.resolve_path(None, {"MAILD_CONFIG": "b.toml"}) == Path("b.toml")


def test_missing_section_is_named_with_the_command(write: Write) -> None:
    """A command that needs a section says which one is missing."""
    cfg = configuration.load(write("maild.toml", "[daemon]\n"))
    with pytest.raises(SourceError, match=r"\[identity\] is missing; 'submit' needs it"):
        cfg.require("submit", "daemon", "identity")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[calendar]\ntimezon = "UTC"\n', 2, "[calendar] timezon: unknown key (did you mean"),
        ('[calender]\ntimezone = "UTC"\n', 1, "calender: unknown key (did you mean 'calendar'"),
        ('[calendar]\ntimezone = "Europe/Pariss"\n', 2, "unknown IANA time zone 'Europe/Pariss'"),
        ('[calendar]\ntimezone = "../../etc/passwd"\n', 2, "unknown IANA time zone"),
        ('[calendar]\nweekend = ["sat", "sunday", "funday"]\n', 2, "'funday' is not a day name"),
        (
            '[calendar]\nweekend = ["mon","tue","wed","thu","fri","sat","sun"]\n',
            2,
            "all seven days",
        ),
        ('[calendar]\nholidays = ["2026-12-25"]\n', 2, "'2026-12-25' is not a TOML date"),
        ("[calendar]\nholidays = [2026-12-25T00:00:00Z]\n", 2, "is not a TOML date"),
        (
            '[identity]\naddress = "a@b.org"\nsigning_key = "0123456789ABCDEF"\n',
            3,
            "is a short key id",
        ),
        (
            '[identity]\naddress = "not-an-address"\nsigning_key = "x"\n',
            2,
            "is not an email address",
        ),
        ('[smtp]\nstarttls = "yes"\n', 2, "starttls: must be one of off, opportunistic, required"),
        ("[smtp]\nport = 70000\n", 2, "70000 is not a TCP port"),
        ("[smtp]\nconnections = 0\n", 2, "connections: must be 1 or more"),
        (
            '[intake]\nlisten = "8025"\naddresses = ["a@b.org"]\nmembers = []\n',
            2,
            "must be host:port",
        ),
        ('[intake]\naddresses = ["a@b.org"]\nmembers = []\n', 3, "needs at least one WG member"),
        (
            INTAKE + "approvals = 3\n",
            4,
            "must be 1",
        ),
        (
            INTAKE + 'max_signature_age = "3 days"\n',
            4,
            "is not a duration like 3d",
        ),
        (
            INTAKE + 'tls_cert = "c.pem"\n',
            4,
            "set both",
        ),
        (
            INTAKE + "require_tls = true\n",
            4,
            "needs tls_cert",
        ),
        (
            INTAKE + 'hostname = "a b"\n',
            4,
            "not a host name",
        ),
        (
            INTAKE + "max_size = 10\n",
            4,
            "1024 or more",
        ),
        ('[daemon]\nstate_dir = ""\n', 2, "state_dir: must not be empty"),
        ("[daemon]\nstate_dir = 5\n", 2, "state_dir: must be a string, not a number"),
        ('[calendar]\ntimezone = "UTC"\ntimezone = "UTC"\n', 3, "invalid TOML"),
        ("[calendar\n", 1, "invalid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_file_line_and_key(
    write: Write, text: str, line: int, message: str
) -> None:
    """Every config mistake is refused with one line: file, line, key, problem."""
    path = write("maild.toml", text)
    with pytest.raises(SourceError) as caught:
        configuration.load(path)
    error = str(caught.value)
    assert "\n" not in error
    assert error.startswith(f"{path}:{line}: "), error
    assert message in error


def test_unreadable_config_names_the_path(tmp_path: Path) -> None:
    """A config path that does not exist is named in the error."""
    with pytest.raises(SourceError, match="no such config file"):
        configuration.load(tmp_path / "nope.toml")


def test_example_config_is_valid() -> None:
    """config.example.toml, which documents every key, loads as it is."""
    cfg = configuration.load(Path(__file__).parent.parent / "config.example.toml")
    assert cfg.intake is not None and cfg.smtp is not None and cfg.announce is not None


def test_intake_defaults_follow_the_design(write: Write) -> None:
    """[intake] needs only addresses and members: 10 MB, 3 days, one
    approval, no TLS, and the banner names the first address's domain."""
    path = write(
        "maild.toml",
        '[intake]\naddresses = ["embargo@lists.example.org"]\n'
        'members = ["0123456789ABCDEF0123456789ABCDEF01234567"]\n'
        'max_signature_age = "12h"\n',
    )
    intake = configuration.load(path).intake
    assert intake is not None
    assert (intake.hostname, intake.max_size, intake.approvals) == (
        "lists.example.org",
        10 * 1024 * 1024,
        1,
    )
    assert intake.max_signature_age == timedelta(hours=12)
    assert (intake.tls_cert, intake.require_tls) == (None, False)


def test_odd_key_names_stay_on_one_line(write: Write) -> None:
    """A quoted key with a newline in it is named escaped, on one line."""
    path = write("maild.toml", '[calendar]\n"time\\nzone" = 1\n')
    with pytest.raises(SourceError) as caught:
        configuration.load(path)
    assert "\n" not in str(caught.value) and "'time\\nzone'" in str(caught.value)


def test_keys_and_orgs_default_beside_the_config(write: Write) -> None:
    """[keys] dir and [orgs] file default to keys/ and orgs.toml (DESIGN.md 4)."""
    path = write("etc/maild.toml", "[keys]\n[orgs]\n")
    cfg = configuration.load(path)
    assert cfg.keys_dir == path.resolve().parent / "keys"
    assert cfg.orgs_file == path.resolve().parent / "orgs.toml"
