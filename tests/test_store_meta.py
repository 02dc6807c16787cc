"""The store's small named facts (the date of the last daily key check), on
both stores, and the upgrade that adds them to an existing database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from maild.adapters.store import MIGRATIONS, SqliteStore
from maild.service.ports import StoreError
from tests.test_store import AnyStore, advisory, event, message


def test_a_fact_is_kept_replaced_and_absent_until_set(store: AnyStore) -> None:
    """An unknown name reads None; a set value reads back and a second set
    replaces it."""
    assert store.get_meta("key-check") is None
    store.set_meta("key-check", "2030-03-04")
    assert store.get_meta("key-check") == "2030-03-04"
    store.set_meta("key-check", "2030-03-05")
    assert store.get_meta("key-check") == "2030-03-05"
    assert store.get_meta("other") is None


def test_a_fact_without_a_name_is_refused(store: AnyStore) -> None:
    """An empty name is refused naming it, and nothing is written."""
    with pytest.raises(StoreError, match="meta ''"):
        store.set_meta("", "x")
    assert store.get_meta("") is None


def test_a_fact_set_inside_a_failed_atomic_block_is_not_kept(store: AnyStore) -> None:
    """Facts join an atomic block: when the block fails, the fact is not kept
    (so the key check is not marked done when its alerts were not stored)."""
    with pytest.raises(RuntimeError), store.atomic():
        store.set_meta("key-check", "2030-03-04")
        raise RuntimeError("boom")
    assert store.get_meta("key-check") is None


def test_a_fact_survives_reopening(tmp_path: Path) -> None:
    """A fact set by one run of the daemon is read by the next."""
    path = tmp_path / "maild.db"
    first = SqliteStore.open(path)
    first.set_meta("key-check", "2030-03-04")
    first.close()
    second = SqliteStore.open(path)
    assert second.get_meta("key-check") == "2030-03-04"
    second.close()


def test_schema_4_database_gains_the_meta_table_and_keeps_its_rows(tmp_path: Path) -> None:
    """A database at schema 4 (before facts were kept) is upgraded in place:
    its advisories and messages read back unchanged, and facts can be kept."""
    path = tmp_path / "maild.db"
    old = SqliteStore.open(path)
    record, sent = advisory(), message("RSA-2026-0001", 1)
    old.add_advisory(record, [sent], event())
    old.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE meta")
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    upgraded = SqliteStore.open(path)
    assert upgraded.get_advisory("RSA-2026-0001") == record
    assert upgraded.messages("RSA-2026-0001") == [sent]
    upgraded.set_meta("key-check", "2030-03-04")
    assert upgraded.get_meta("key-check") == "2030-03-04"
    upgraded.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 5
    check.close()
