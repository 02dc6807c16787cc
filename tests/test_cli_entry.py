"""The installed entry points: `maild` and `python -m maild`, and their help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CLI

COMMANDS = [
    ["plan"], ["run"], ["submit"], ["queue"], ["show"], ["receipts"], ["cancel"], ["reschedule"],
    ["disclose-now"], ["orgs", "check"], ["orgs", "export"], ["check-config"], ["demo"],
]  # fmt: skip


def test_console_script_and_module_both_run() -> None:
    """Operators can run `maild` or `python -m maild`; both print the plan."""
    script = Path(sys.executable).parent / "maild"
    for argv in ([str(script)], [sys.executable, "-m", "maild"]):
        done = subprocess.run(
            [*argv, "plan", "--disclosure", "2026-12-08T17:00:00Z", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, done.stderr
        assert '"business_days": 5' in done.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(cli: CLI, command: list[str]) -> None:
    """`maild COMMAND --help` explains the command and the exit codes."""
    result = cli(*command, "--help")
    assert result.code == 0
    assert "usage: maild" in result.out and "Exit status" in result.out


def test_no_command_prints_usage_and_exits_2(cli: CLI) -> None:
    """`maild` alone shows the commands and exits 2 (usage)."""
    result = cli()
    assert result.code == 2 and "plan" in result.err and "submit" in result.err
