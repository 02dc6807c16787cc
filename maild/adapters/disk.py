"""Free space under maild's folders. On a (nearly) full disk, gpg and
SQLite fail in misleading ways ("no secret key", "disk I/O error"), so a
failure there is put down to the disk and reported (or retried) as such."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

LOW_SPACE = 1 << 20  # bytes free: below this, a failure is put down to the full disk


def full_disk(folders: Iterable[Path]) -> str | None:
    """A line naming the first folder with less than LOW_SPACE bytes free
    (None: there is room everywhere, or no folder could be looked at)."""
    for folder in folders:
        try:
            fs = os.statvfs(folder)
        except OSError:
            continue
        free = fs.f_bavail * fs.f_frsize
        if free < LOW_SPACE:
            return f"{folder}: disk full ({free // 1024} KiB free); free some space and try again"
    return None
