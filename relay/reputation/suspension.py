"""Is the account suspended? Asked at every MAIL FROM, so a suspension or a
resume counts on every node within ``[policy] cache_seconds``.

One primary-key read of plain SQL prepared once (as the login and policy reads
are), on a worker thread; with the process's ``DecisionCache`` the answer is
kept until a change anywhere empties it, which every process and node sees
within ``[policy] cache_seconds`` (``relay.store.generation``).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, text

from relay.core.replies import Reply, account_suspended
from relay.store.generation import DecisionCache

_SUSPENDED = text(
    "SELECT suspended_reason FROM accounts WHERE id = :account_id AND suspended_at IS NOT NULL"
)


class SuspensionCheck:
    def __init__(self, engine: Engine, cache: DecisionCache | None = None) -> None:
        self._engine = engine
        self._cache = cache

    def _read(self, account_id: int) -> Reply | None:
        cache = self._cache
        epoch = cache.epoch if cache is not None else None  # before the read
        with self._engine.connect() as conn:
            row = conn.execute(_SUSPENDED, {"account_id": account_id}).first()
        if cache is not None:
            # (suspended, reason): None is what the cache says for "not cached".
            cache.put(
                ("suspended", account_id), (row is not None, None if row is None else row[0]), epoch
            )
        return None if row is None else account_suspended(row[0])

    async def refusal(self, account_id: int) -> Reply | None:
        """The reply refusing the account's mail, or None when it may send."""
        if self._cache is not None:
            await self._cache.fresh()
            cached = self._cache.get(("suspended", account_id))
            if cached is not None:
                suspended, reason = cached
                return account_suspended(reason) if suspended else None
        return await asyncio.to_thread(self._read, account_id)
