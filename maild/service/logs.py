"""How `maild run` logs: structlog, one JSON object per line on stdout (what
journald keeps), or readable console lines when stdout is a terminal.

The standard-library loggers of the libraries maild drives (python-gnupg's
`gnupg`, aiosmtpd's `mail.log`, `aiosmtplib`, `asyncio`) go through the same
pipeline, so every line has the same shape: `timestamp`, `level`, `logger`,
`event`. Their levels are raised so that nothing they log can carry message
content: aiosmtpd logs DATA lines at DEBUG and, at WARNING, the first word of
lines it took for commands, so it is held at ERROR.

maild's own events carry event names and ids only: never advisory text,
acknowledgement tokens or key material.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

# Logger name -> the least severe level that is let through.
LIBRARY_LEVELS = {
    "gnupg": logging.WARNING,
    "mail.log": logging.ERROR,  # aiosmtpd
    "aiosmtplib": logging.WARNING,
    "asyncio": logging.WARNING,
}

_SHARED: list[structlog.typing.Processor] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
]


def _not_gpg_exit_status(record: logging.LogRecord) -> bool:
    """python-gnupg warns of every non-zero gpg exit, such as a listing of
    secret keys that finds none: maild reads each result itself and logs or
    raises its own error, so these lines would be noise in the journal."""
    return not (record.name == "gnupg" and str(record.msg).startswith("gpg returned a non-zero"))


def configure(
    stream: TextIO | None = None, *, console: bool | None = None, level: int = logging.INFO
) -> None:
    """Send every log record, maild's and the libraries', to `stream`
    (default stdout): JSON lines, or console rendering when `console` (by
    default: when the stream is a terminal)."""
    stream = sys.stdout if stream is None else stream
    if console is None:
        console = stream.isatty()
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(sort_keys=True)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)  # whatever level a library sets on its own logger
    handler.addFilter(_not_gpg_exit_status)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name, least in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(least)
