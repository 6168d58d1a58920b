"""PostgreSQL helpers for the test suite.

scripts/test starts a throwaway server and exports RELAY_TEST_POSTGRES_URL (a SQLAlchemy URL,
``postgresql+psycopg://postgres@127.0.0.1:PORT/relay_test``); tests that need PostgreSQL skip
when it is unset. Give each test (or module) a database of its own::

    from tests.pg_harness import drop_database, fresh_database, postgres_url

    @pytest.fixture
    def pg_url() -> Iterator[str]:
        base = postgres_url()
        if base is None:
            pytest.skip("RELAY_TEST_POSTGRES_URL is not set (scripts/test sets it)")
        url = fresh_database(base)
        yield url
        drop_database(url)
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

ENV_VAR = "RELAY_TEST_POSTGRES_URL"
MAINTENANCE_DB = "postgres"


def postgres_url() -> str | None:
    """The server URL from RELAY_TEST_POSTGRES_URL, or None when unset or empty."""
    return os.environ.get(ENV_VAR) or None


def _connect_maintenance(url: URL) -> psycopg.Connection[Any]:
    params: dict[str, Any] = {
        key: value for key, value in url.query.items() if isinstance(value, str)
    }
    params.update(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=MAINTENANCE_DB,
        connect_timeout=10,
    )
    # make_conninfo leaves out the None values, so libpq defaults apply to those.
    return psycopg.connect(**params, autocommit=True)


def fresh_database(url: str) -> str:
    """Create a uniquely named empty database on url's server; return url pointing at it."""
    base = make_url(url)
    name = f"relay_test_{uuid.uuid4().hex[:16]}"
    with _connect_maintenance(base) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return base.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database url points at (if it exists), disconnecting its sessions."""
    target = make_url(url)
    if not target.database or target.database == MAINTENANCE_DB:
        raise ValueError(f"refusing to drop database {target.database!r}")
    with _connect_maintenance(target) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(target.database)
            )
        )
