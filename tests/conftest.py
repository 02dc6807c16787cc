"""Shared fixtures: the CLI run in-process, config files written per test."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from maild.adapters.memstore import MemoryStore
from maild.adapters.store import SqliteStore
from maild.cli import main
from tests.world import OrgKeys, World, make_org_keys, new_root


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


CLI = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CLI:
    """Run `maild ARGS...` in this process; returns exit code, stdout, stderr."""
    monkeypatch.delenv("MAILD_CONFIG", raising=False)

    def run(*args: str) -> Result:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a text file under the test's folder and return its path."""

    def put(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return put


@pytest.fixture(scope="session")
def org_keys() -> Iterator[OrgKeys]:
    """Organisation and member keys, made once with real gpg."""
    home = new_root()
    try:
        yield make_org_keys(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def world(org_keys: OrgKeys) -> Iterator[World]:
    """A fresh maild installation: identity key, keys folder, config, orgs list."""
    w = World(new_root(), org_keys).build()
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteStore | MemoryStore]:
    """Each store test runs on both the SQLite store and its in-memory twin."""
    s: SqliteStore | MemoryStore
    s = (
        SqliteStore.open(tmp_path / "state" / "maild.db")
        if request.param == "sqlite"
        else MemoryStore()
    )
    yield s
    s.close()


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it): a throwaway self-signed
    certificate for localhost and 127.0.0.1, for STARTTLS on both sides."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))
