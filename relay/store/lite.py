"""Reads by the database driver alone, for the command line's quick verbs.

Importing SQLAlchemy costs a command a quarter of a second on the 2-core
build machine before it has read a row (``python -X importtime``: ``import
sqlalchemy`` alone ~260 ms of CPU, the ORM and our models another ~200 ms),
so no command that loads it starts in the 300 ms issue 16 asks for. A
listing a person types often reads a few rows, so it reads them here with the
standard library's ``sqlite3`` (or ``psycopg`` on PostgreSQL) and SQL written
for both engines; anything unusual (no database file yet, a schema not at
the newest revision, another driver, an error) answers None and the caller
takes the full path, which migrates, resolves and reports as always.
Read-only: nothing here writes.

Imports nothing of SQLAlchemy's or alembic's; ``relay.store.engine`` shares the
schema revision check (``heads``) from here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from relay.core.errors import RelayError

MIGRATIONS = Path(__file__).parent / "migrations"

_REVISION = re.compile(r"^(down_revision|revision)\b[^=]*=\s*(.+)$", re.M)
# ``:name`` parameters in the SQL below; psycopg spells them ``%(name)s``.
_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def heads() -> set[str]:
    """The newest revisions, read from the migration files' ``revision`` and
    ``down_revision`` lines without loading alembic (it costs a command half a second)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for key, value in _REVISION.findall(path.read_text("utf-8")):
            names = set(re.findall(r"[\"']([^\"']+)[\"']", value))
            (revisions if key == "revision" else parents).update(names)
    return revisions - parents


class Reader:
    """One driver connection and the few conversions SQLAlchemy's types would make."""

    def __init__(self, conn: Any, sqlite: bool) -> None:
        self._conn = conn
        self.sqlite = sqlite

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """The rows of ``sql`` (``:name`` parameters) as dicts by column name."""
        if not self.sqlite:
            sql = _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
        cur = self._conn.cursor()
        try:
            cur.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            cur.close()

    def close(self) -> None:
        self._conn.close()

    # -- values as the models' types give them ------------------------------------

    def when(self, value: Any) -> dt.datetime | None:
        """A ``UTCDateTime`` column: SQLite keeps naive UTC text, PostgreSQL a timestamptz."""
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    def at(self, value: dt.datetime) -> Any:
        """A time as a parameter: SQLite compares the naive UTC text it stores, in
        SQLAlchemy's storage format (microseconds always written)."""
        value = value.astimezone(dt.UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else value

    def day(self, value: dt.date) -> Any:
        """A ``Date`` as a parameter: SQLite compares the ISO text it stores."""
        return value.isoformat() if self.sqlite else value

    def flag(self, value: Any) -> bool | None:
        """A ``Boolean`` column: SQLite stores 0 and 1."""
        return None if value is None else bool(value)

    def doc(self, value: Any) -> Any:
        """A ``JSON`` column: SQLite returns the text."""
        return json.loads(value) if isinstance(value, str) else value


def _sqlite(path: str) -> Reader | None:
    import sqlite3

    if path in ("", ":memory:") or not Path(path).is_file():
        return None  # the full path creates it (0600) and its schema
    conn = sqlite3.connect(path, timeout=30)  # as make_engine: wait out a writer
    return Reader(conn, sqlite=True)


def _postgres(url: str) -> Reader | None:
    try:
        import psycopg
    except ImportError:
        return None
    conn = psycopg.connect(url, autocommit=True)
    return Reader(conn, sqlite=False)


def open_reader(url: str) -> Reader | None:
    """A reader on the database at ``url`` when its schema is at the newest
    revision; None when the full path must answer instead."""
    scheme, sep, rest = url.partition("://")
    if not sep or (scheme == "sqlite" and "?" in rest):
        return None
    try:
        if scheme == "sqlite":
            reader = _sqlite(unquote(rest[1:]) if rest.startswith("/") else "")
        elif scheme in ("postgresql", "postgres", "postgresql+psycopg"):
            reader = _postgres("postgresql://" + rest)
        else:
            return None
    except Exception:  # the driver's own error: the full path reports it properly
        return None
    if reader is None:
        return None
    try:
        found = {r["version_num"] for r in reader.rows("SELECT version_num FROM alembic_version")}
    except Exception:
        reader.close()
        return None
    current = heads()
    if not current or found != current:
        reader.close()
        return None
    return reader


def read_with(url: str, read: Callable[[Reader], Any]) -> Any:
    """``read(reader)`` on the database at ``url``, or None when there is no quick
    way (see ``open_reader``) or ``read`` itself answers None (it defers)."""
    reader = open_reader(url)
    if reader is None:
        return None
    try:
        return read(reader)
    except RelayError:  # the read refused the input as the full path would
        raise
    except Exception:  # a driver error (locked, gone): the full path reports it properly
        return None
    finally:
        reader.close()
