"""Fixtures: a settings factory, a database per test (SQLite, and PostgreSQL
where scripts/test started one), a seeded tenant, and a live relay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from relay.core.settings import Settings
from relay.emulator import Emulator
from tests.emulated import EmulatorThread
from tests.pg_harness import drop_database, fresh_database, postgres_url
from tests.support import RelayThread, Tenant, fresh_engine, make_settings, seed_tenant
from tests.test_dns_verify import TinyDNS


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The database for one test. Tests that must run on both engines override
    ``params`` with ``both_databases``."""
    yield from _database(request.param, tmp_path)


def _database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/relay.db"
        return
    base = postgres_url()
    if base is None:
        pytest.skip("PostgreSQL not available (RELAY_TEST_POSTGRES_URL unset)")
    url = fresh_database(base)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from _database(request.param, tmp_path)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path / "var", db_url)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = fresh_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def tenant(settings: Settings, engine: Engine) -> Tenant:
    return seed_tenant(settings, engine)


@pytest.fixture
def relay(settings: Settings, engine: Engine, tenant: Tenant) -> Iterator[RelayThread]:
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """The provider emulator on loopback, in a thread of its own (tests/providers
    has an in-loop one of the same name)."""
    thread = EmulatorThread()
    yield thread.start()
    thread.stop()


@pytest.fixture
def dns() -> Iterator[TinyDNS]:
    """A DNS server on loopback that answers the TXT records a test publishes."""
    server = TinyDNS()
    yield server
    server.close()
