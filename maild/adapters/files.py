"""Small filesystem helpers shared by the adapters."""

from __future__ import annotations

from pathlib import Path


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and any missing parents with mode 0700 (folders that
    already exist are left as they are). `mkdir(parents=True, mode=...)`
    would give the parents the umask's mode instead."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)  # the umask may have masked bits off mkdir's mode
