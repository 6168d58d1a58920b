"""One queue writer at a time on SQLite, woken at once when the lock is free.

SQLite has a single writer. A transaction that finds the write lock taken
waits in SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25,
50, 50 and then 100 ms between tries (``sqliteDefaultBusyCallback``), however
soon the lock is released: with the spool, the claims and the outcomes of
every process writing at once, the lock sat free while writers slept, and
acceptance fell from ~820 to ~114 msg/s once delivery ran (py-spy: a third of
the spool thread's time in its first INSERT, waiting; the CPU half idle).

So the queue's write transactions (``relay.queue.spool``, ``relay.queue.store``)
queue for a lock of their own first: a thread lock within the process, then
``flock`` on a file beside the database across processes. Both wake the next
writer as soon as the holder is done; SQLite's own locking still decides
correctness (other writers, such as the admin API, take no gate and simply
meet the busy handler as before). PostgreSQL locks rows, not the database:
no gate there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager

from sqlalchemy import Connection, Engine

from relay.core.files import FILE_MODE


class WriteGate:
    """``with gate:`` holds this process's and every other process's queue writers off."""

    def __init__(self, path: str | None) -> None:
        # Re-entrant: a write inside another on the same database, in one
        # thread, goes on (SQLite decides); the file lock is taken once.
        self._lock = threading.RLock()
        self._depth = 0
        self._path = path
        self._fd: int | None = None

    def _file(self) -> int | None:
        if self._path is None:
            return None
        if self._fd is None:
            # Opened once, lazily (never inherited: processes are spawned).
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        return self._fd

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            fd = self._file()
            if fd is not None and self._depth == 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        try:
            if self._fd is not None and self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()


_GATES: weakref.WeakKeyDictionary[Engine, WriteGate] = weakref.WeakKeyDictionary()
_BY_FILE: dict[str, WriteGate] = {}
_MADE = threading.Lock()


def gate_for(engine: Engine) -> AbstractContextManager[None]:
    """The database's write gate, one per file in this process; none for PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    gate = _GATES.get(engine)
    if gate is not None:
        return gate
    with _MADE:
        database = engine.url.database or ""
        if not database or database == ":memory:" or "mode=memory" in str(engine.url):
            gate = WriteGate(None)
        else:
            path = os.path.abspath(database) + "-writer.lock"
            gate = _BY_FILE.setdefault(path, WriteGate(path))
        _GATES[engine] = gate
    return gate


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` behind the gate: the transaction of one queue write."""
    with gate_for(engine), engine.begin() as conn:
        yield conn
