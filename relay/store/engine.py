"""Database engines: SQLite (WAL, durable commits) or PostgreSQL, and migrations."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from relay.core.errors import ConfigError
from relay.core.files import create_sqlite_file
from relay.store import lite

MIGRATIONS = lite.MIGRATIONS


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` and use the psycopg 3 driver for it."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; synchronous=FULL makes every
    # commit durable on power loss too (NORMAL in WAL mode only survives an
    # application crash), which is the promise behind our 250.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"[database] url: {url!r} is not a database URL") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            create_sqlite_file(parsed.database)  # 0600 before SQLite opens it
        # A pool of connections: opening one (and its PRAGMAs) per query cost
        # a fifth of the ingest throughput. Processes are spawned, never
        # forked, so no handle is shared between them.
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    raise ConfigError(
        f"[database] url: {parsed.get_backend_name()} is not supported (use sqlite or postgresql)"
    )


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def schema_current(engine: Engine) -> bool:
    """Whether the database is at the newest revision already (then a command need
    not run alembic); any doubt says no, and ``migrate`` decides."""
    try:
        with engine.connect() as conn:
            found = {
                row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")
            }
    except SQLAlchemyError:  # no table yet, or no database: migrate makes them
        return False
    heads = lite.heads()
    return bool(heads) and found == heads


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to the newest revision (idempotent), or to ``revision``:
    an upgrade, or with a leading ``-`` a downgrade (``-0002``), for tests and repairs."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # A batch migration rebuilds a table that others reference (SQLite
            # cannot drop a constraint in place); with foreign keys enforced the
            # rebuild's DROP TABLE fails. SQLite ignores this PRAGMA inside a
            # transaction, so it is set before one begins, and checked after.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                if revision.startswith("-"):
                    command.downgrade(cfg, revision[1:])
                else:
                    command.upgrade(cfg, revision)
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RuntimeError("migration left rows pointing at nothing")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
