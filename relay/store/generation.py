"""What the message path decides per account, cached in memory per process.

Policy (senders verified, route, unsubscribe, suspension) and whether an
account has any suppression at all were read from the database for every
message, each read a hop to a worker thread and back (profile of issue 15:
the hops and the reads were a fifth of the event loop's time). They change
seldom, and every change is a write to ``accounts``, ``senders``,
``providers`` or ``suppressions``; triggers (migration 0008c) move the one
counter of ``policy_generation`` in the writer's transaction.

A ``DecisionCache`` reads that counter (one primary-key SELECT, on a worker
thread) and forgets everything when it moved. It never decides by what it
holds once its last read started more than ``refresh`` seconds ago
(``[policy] cache_seconds``): a change made anywhere (the API, the CLI,
another process, another node on PostgreSQL) applies to every message that
starts its DATA (or MAIL FROM) more than ``refresh`` seconds after the change
committed. While busy it reads in the background about every ``refresh / 2``
seconds, so no message waits for the read; with ``refresh`` 0 the counter is
read before every decision.

The cache holds at most ``limit`` entries (least recently used go first);
``limit`` 0 turns it off (every decision reads the database, as before).
An entry is only kept if the counter did not move while it was read: a read
that raced a change is used once, never cached.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from sqlalchemy import Engine, text

_READ = text("SELECT value FROM policy_generation WHERE id = 1")


class DecisionCache:
    """A bounded map from a key (``("policy", account, domain)`` ...) to what was read."""

    def __init__(self, engine: Engine, refresh: float, limit: int) -> None:
        self._engine = engine
        self._refresh = refresh
        self._limit = limit
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        # The counter as last read (None: never, or unreadable) and when.
        self._seen: int | None = None
        self._checked = -float("inf")
        self._pending: asyncio.Future[None] | None = None  # the read under way
        # ``put`` runs on worker threads (the decision read there), the rest on the loop.
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.reads = 0

    @property
    def enabled(self) -> bool:
        return self._limit > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def epoch(self) -> int | None:
        """The counter this cache's entries belong to: pass it to ``put``."""
        return self._seen

    def read_generation(self) -> int | None:
        """The counter now (None: the table is not there, a database older than 0008c)."""
        with self._engine.connect() as conn:
            value = conn.execute(_READ).scalar()
        return None if value is None else int(value)

    def _apply(self, value: int | None) -> None:
        with self._lock:
            self.reads += 1
            if value is None or value != self._seen:
                self._entries.clear()
            self._seen = value

    async def fresh(self) -> None:
        """Make sure the counter was read less than ``refresh`` seconds ago.

        From half the interval on, a read starts in the background and the
        caller goes on with what the cache holds (still within the bound): a
        busy relay reads the counter about every ``refresh / 2`` seconds and
        no message waits for it (one that did made the tail of the reply
        times, bench/compare.py p99). Past the interval (an idle spell, or
        ``refresh`` 0) the caller waits for the read. Sessions share one read.
        A failed read empties the cache and is tried again by the next
        caller; meanwhile the decisions read the database (and fail as they
        would have).
        """
        if not self.enabled:
            return
        age = time.monotonic() - self._checked
        if age < self._refresh / 2:
            return
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._read())
        if age >= self._refresh:
            await asyncio.shield(self._pending)

    async def _read(self) -> None:
        started = time.monotonic()
        try:
            value = await asyncio.to_thread(self.read_generation)
        except Exception:
            self._apply(None)
        else:
            self._apply(value)
            self._checked = started
        finally:
            self._pending = None

    def get(self, key: Hashable) -> Any:
        """What was cached for ``key``, or None."""
        if not self.enabled or self._seen is None:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any, epoch: int | None) -> None:
        """Keep ``value`` for ``key`` if it was read within ``epoch`` (the
        ``epoch`` taken before the read), evicting the least recently used."""
        if not self.enabled or epoch is None or value is None:
            return
        with self._lock:
            if epoch != self._seen:
                return
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)
