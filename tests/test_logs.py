"""What an operator reads in journald: one JSON object per line, the
libraries' own log records in the same shape, readable lines on a terminal."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from maild.service import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Logging configured onto a buffer; the previous configuration restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in logs.LIBRARY_LEVELS}
    stream = io.StringIO()
    logs.configure(stream, console=False)
    yield stream
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_maild_events_are_one_json_object_per_line(captured: io.StringIO) -> None:
    """An event of maild's own is a single JSON line with its name, level,
    logger, timestamp and ids: what journald stores and `jq` reads."""
    structlog.get_logger("maild.dispatch").info("released", advisory="MAILD-2026-0001", count=3)
    [entry] = lines(captured)
    assert entry["event"] == "released"
    assert entry["level"] == "info"
    assert entry["logger"] == "maild.dispatch"
    assert entry["advisory"] == "MAILD-2026-0001" and entry["count"] == 3
    assert str(entry["timestamp"]).endswith("Z")


@pytest.mark.parametrize("library", ["gnupg", "aiosmtplib", "asyncio"])
def test_library_warnings_come_out_in_the_same_shape(captured: io.StringIO, library: str) -> None:
    """A warning from python-gnupg, aiosmtplib or asyncio is a JSON line
    like maild's own, naming the library, not a bare text line on stderr."""
    logging.getLogger(library).warning("potential problem: %s", "KEYEXPIRED")
    [entry] = lines(captured)
    assert entry == {
        "event": "potential problem: KEYEXPIRED",
        "level": "warning",
        "logger": library,
        "timestamp": entry["timestamp"],
    }


def test_aiosmtpd_errors_are_kept_and_its_chatter_is_not(captured: io.StringIO) -> None:
    """aiosmtpd's session errors reach the log as JSON, with the traceback
    on the same line; its per-line INFO and WARNING chatter (which can hold
    the first word of a message's lines) never does."""
    aiosmtpd = logging.getLogger("mail.log")
    aiosmtpd.info("('127.0.0.1', 4000) >> b'EMBARGOED words'")
    aiosmtpd.warning("('127.0.0.1', 4000) unrecognised: EMBARGOED")
    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        aiosmtpd.exception("('127.0.0.1', 4000) SMTP session exception")
    assert "EMBARGOED" not in captured.getvalue()
    [entry] = lines(captured)
    assert entry["logger"] == "mail.log" and entry["level"] == "error"
    assert "ConnectionResetError: peer went away" in str(entry["exception"])


def test_gpg_exit_status_noise_is_dropped(captured: io.StringIO) -> None:
    """python-gnupg's warning for every non-zero gpg exit (a secret-key
    listing that finds none, on every start) does not fill the journal;
    its other warnings still come through."""
    logging.getLogger("gnupg").warning("gpg returned a non-zero error code: %d", 2)
    logging.getLogger("gnupg").warning("potential problem: %s", "FAILURE")
    assert [e["event"] for e in lines(captured)] == ["potential problem: FAILURE"]


def test_debug_records_are_not_logged(captured: io.StringIO) -> None:
    """Only INFO and above are logged: python-gnupg's DEBUG output (gpg's
    stderr, line by line) stays out of the journal."""
    logging.getLogger("gnupg").setLevel(logging.DEBUG)
    logging.getLogger("gnupg").debug("gpg: encrypted with cv25519 key")
    structlog.get_logger("maild.daemon").debug("tick")
    assert captured.getvalue() == ""


def test_a_terminal_gets_readable_lines_not_json() -> None:
    """Run by hand in a terminal, maild prints console lines an operator can
    read, with the same event names and fields."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        logs.configure(stream, console=True)
        structlog.get_logger("maild.daemon").info("listening", address="127.0.0.1:2525")
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level
    text = stream.getvalue()
    assert not text.startswith("{")
    assert "listening" in text and "address=127.0.0.1:2525" in text
