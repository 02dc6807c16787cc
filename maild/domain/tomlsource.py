"""TOML parsing that reports errors by file and line (pure; text in, data out)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from typing import Any

_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*[.=]""")

PathPart = str | int


class SourceError(ValueError):
    """Bad input in a file: the message is one line naming file, line and key."""


def parse_toml(text: str, source: str, line_offset: int = 0) -> dict[str, Any]:
    """Parse TOML; a syntax error names `source` and the line (shifted by
    `line_offset` when the TOML starts further down a file)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_AT.search(message)
        if found is None:
            raise SourceError(f"{source}: invalid TOML: {message}") from None
        line = int(found.group(1)) + line_offset
        what = message[: found.start()].strip()
        raise SourceError(
            f"{source}:{line}: invalid TOML: {what} (column {found.group(2)})"
        ) from None


class LineIndex:
    """Finds the line where a key is set, for error messages.

    A path is the keys and array indexes from the document root, e.g.
    `("org", 2, "contacts")` for `contacts` in the third `[[org]]` table.
    Best effort: dotted keys and inline tables fall back to the enclosing
    table's header line, or None.
    """

    def __init__(self, text: str, line_offset: int = 0) -> None:
        self._offset = line_offset
        self._tables: dict[tuple[PathPart, ...], int] = {(): 0}
        self._keys: dict[tuple[PathPart, ...], int] = {}
        counts: dict[tuple[PathPart, ...], int] = {}
        current: tuple[PathPart, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header and not line.lstrip().startswith(("[=", "#")):
                names = _split_dotted(header.group(2))
                if header.group(1) == "[[":
                    table = (*self._resolve(names[:-1], counts), names[-1])
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                    self._tables.setdefault(table, number)
                    current = (*table, index)
                else:
                    current = self._resolve(names, counts)
                self._tables.setdefault(current, number)
                continue
            key = _KEY.match(line)
            if key:
                self._keys.setdefault((*current, key.group(1).strip("\"'")), number)

    @staticmethod
    def _resolve(
        names: Sequence[str], counts: dict[tuple[PathPart, ...], int]
    ) -> tuple[PathPart, ...]:
        path: tuple[PathPart, ...] = ()
        for name in names:
            path = (*path, name)
            if path in counts:  # inside the latest element of an array of tables
                path = (*path, counts[path] - 1)
        return path

    def line(self, path: Sequence[PathPart]) -> int | None:
        """The line of the key at `path`, else of the nearest enclosing table."""
        full = tuple(path)
        while full:
            if full in self._keys:
                return self._keys[full] + self._offset
            if self._tables.get(full):
                return self._tables[full] + self._offset
            full = full[:-1]
        return None


def _split_dotted(name: str) -> list[str]:
    return [part.strip().strip("\"'") for part in name.split(".")]


def where(source: str, index: LineIndex, path: Sequence[PathPart]) -> str:
    """`file:line` (or just `file`) for an error about the key at `path`."""
    line = index.line(path)
    return f"{source}:{line}" if line is not None else source
