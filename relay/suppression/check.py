"""The suppression look-ups of the message path, off the event loop.

Intake asks once per message (``suppressed``: one indexed query for all its
recipients); with ``[suppression] at_rcpt`` the SMTP front asks once per RCPT
TO (``one``). Whether an account has any suppression at all (its own rows or
its agency's) is kept in the process's ``DecisionCache``: an account with
none needs no query, and a suppression added anywhere empties the cache
within ``[policy] cache_seconds`` (``relay.store.generation``). An account
with rows is asked every time: the answer per recipient is always exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import Engine, text

from relay.store.generation import DecisionCache
from relay.suppression.lists import Entry, lookup

# Any row of the account or of its agency, shared or not, expired or not: a
# "no" is certain, a "yes" sends the exact lookup.
_ANY = text("""
SELECT 1 FROM suppressions
WHERE account_id = :account_id
   OR account_id = (SELECT parent_id FROM accounts WHERE id = :account_id)
LIMIT 1
""")


class SuppressionCheck:
    def __init__(self, engine: Engine, cache: DecisionCache | None = None) -> None:
        self._engine = engine
        self._cache = cache

    def listed_cached(self, account_id: int) -> bool | None:
        """Whether the account (or its agency) has any suppression, from the
        cache, without I/O; None: not cached."""
        if self._cache is None:
            return None
        listed = self._cache.get(("suppressions", account_id))
        return None if listed is None else bool(listed)

    def suppressed_now(self, account_id: int, addresses: Sequence[str]) -> dict[str, Entry]:
        """``suppressed`` on the calling thread (a worker thread: it reads the
        database), for a caller that has more to read in the same hop off the loop."""
        if not addresses:
            return {}
        cache = self._cache if self._cache is not None and self._cache.enabled else None
        listed = self.listed_cached(account_id)
        epoch = cache.epoch if cache is not None else None  # before the read
        with self._engine.connect() as conn:
            if cache is not None and listed is None:
                listed = conn.execute(_ANY, {"account_id": account_id}).first() is not None
                cache.put(("suppressions", account_id), listed, epoch)
            if listed is False:
                return {}
            return lookup(conn, account_id, list(addresses))

    async def suppressed(self, account_id: int, addresses: Sequence[str]) -> dict[str, Entry]:
        """The suppressed ones of ``addresses``, keyed as given."""
        if not addresses:
            return {}
        return await asyncio.to_thread(self.suppressed_now, account_id, addresses)

    async def one(self, account_id: int, address: str) -> Entry | None:
        return (await self.suppressed(account_id, [address])).get(address)


def why(entry: Entry) -> str:
    """What a suppressed recipient's row and the 550 say: reason and date (UTC day)."""
    return f"suppressed: {entry.reason} since {entry.created_at.date().isoformat()}"
