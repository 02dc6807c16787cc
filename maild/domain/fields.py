"""Typed, strict reading of parsed TOML tables, with errors that name the
file, the line and the key (pure)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from datetime import date, datetime
from enum import StrEnum
from typing import Any, TypeVar

from maild.domain.tomlsource import LineIndex, PathPart, SourceError, where

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


class _Missing:
    pass


MISSING: Any = _Missing()


class Table:
    """One TOML table being read. Each getter marks its key as known;
    `reject_unknown()` then refuses every key nobody asked for (a misspelt
    key must never be silently ignored)."""

    def __init__(
        self,
        data: dict[str, Any],
        *,
        source: str,
        index: LineIndex,
        path: tuple[PathPart, ...] = (),
        label: str = "",
    ) -> None:
        self.data = data
        self.source = source
        self.index = index
        self.path = path
        self.label = label
        self._seen: set[str] = set()
        self.problems: list[str] = []

    # -- errors -----------------------------------------------------------
    def error(self, key: str | None, problem: str) -> SourceError:
        path = self.path if key is None else (*self.path, key)
        if key is not None and not key.isprintable():
            key = repr(key)  # keep the message on one line
        name = f"{self.label}{key}" if key is not None else self.label.rstrip(" .")
        prefix = f"{name}: " if name else ""
        return SourceError(f"{where(self.source, self.index, path)}: {prefix}{problem}")

    def soft(self, read: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call a getter; on bad input record the problem and return None
        (for checks that report every problem instead of the first)."""
        try:
            return read(*args, **kwargs)
        except SourceError as exc:
            self.problems.append(str(exc))
            return None

    # -- getters ----------------------------------------------------------
    def raw(self, key: str, default: Any = MISSING) -> Any:
        self._seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is MISSING:
            raise self.error(key, "is required")
        return default

    def text(self, key: str, default: Any = MISSING, *, single_line: bool = True) -> Any:
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_kind(value)}")
        if not value.strip():
            raise self.error(key, "must not be empty")
        if single_line and any(_breaks_line(c) for c in value):
            raise self.error(key, "must be one line with no control characters")
        return value

    def flag(self, key: str, default: Any = MISSING) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {_kind(value)}")
        return value

    def number(self, key: str, default: Any = MISSING, *, minimum: int | None = None) -> Any:
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, not {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be {minimum} or more, not {value}")
        return value

    def choice(self, key: str, kind: type[E], default: Any = MISSING) -> Any:
        value = self.raw(key, default)
        if isinstance(value, kind):
            return value
        allowed = ", ".join(m.value for m in kind)
        if not isinstance(value, str) or value not in {m.value for m in kind}:
            raise self.error(key, f"must be one of {allowed}, not {value!r}")
        return kind(value)

    def instant(self, key: str, default: Any = MISSING) -> Any:
        """A TOML offset date-time (an aware datetime)."""
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        example = "2026-12-08T17:00:00+01:00"
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise self.error(
                    key, f"{value.isoformat()} has no time zone: add a UTC offset, like {example}"
                )
            return value
        if isinstance(value, date):
            raise self.error(key, f"is a date without a time and zone; write e.g. {example}")
        raise self.error(
            key, f"must be a date and time with a UTC offset (unquoted), like {example}"
        )

    def day(self, key: str, default: Any = MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, datetime) or not isinstance(value, date):
            raise self.error(key, f"must be a TOML date like 2026-01-15, not {value!r}")
        return value

    def items(self, key: str, default: Any = MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, not {_kind(value)}")
        return value

    def texts(self, key: str, default: Any = MISSING) -> Any:
        value = self.items(key, default)
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise self.error(key, f"must hold non-empty strings only, found {item!r}")
        return tuple(value)

    def table(self, key: str, label: str, *, required: bool = False) -> Table | None:
        value = self.raw(key, MISSING if required else None)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {_kind(value)}")
        return Table(
            value, source=self.source, index=self.index, path=(*self.path, key), label=label
        )

    def tables(self, key: str, label: Callable[[int, dict[str, Any]], str]) -> list[Table]:
        value = self.items(key, [])
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(key, f"entry {i + 1} must be a table, not {_kind(item)}")
            out.append(
                Table(
                    item,
                    source=self.source,
                    index=self.index,
                    path=(*self.path, key, i),
                    label=label(i, item),
                )
            )
        return out

    def reject_unknown(self) -> None:
        for key in self.data:
            if key not in self._seen:
                close = difflib.get_close_matches(key, sorted(self._seen), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = ", ".join(sorted(self._seen))
                raise self.error(key, f"unknown key{hint}; known keys: {known}")


def _kind(value: object) -> str:
    names = {
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a table",
        datetime: "a date-time",
        date: "a date",
    }
    return names.get(type(value), type(value).__name__)


def _breaks_line(ch: str) -> bool:
    """A control character (C0, DEL, C1 such as NEL) or a Unicode line or
    paragraph separator: none may reach a one-line value, which may later
    become a mail header."""
    code = ord(ch)
    return code < 32 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029"
