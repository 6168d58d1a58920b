"""Is the account suspended? Read at every MAIL FROM, so a suspension or a
resume counts at once, on every node.

One primary-key read of plain SQL prepared once (as the login and policy reads
are), on a worker thread: cheaper than anything that would have to be kept
coherent across nodes.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, text

from relay.core.replies import Reply, account_suspended

_SUSPENDED = text(
    "SELECT suspended_reason FROM accounts WHERE id = :account_id AND suspended_at IS NOT NULL"
)


class SuspensionCheck:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _read(self, account_id: int) -> Reply | None:
        with self._engine.connect() as conn:
            row = conn.execute(_SUSPENDED, {"account_id": account_id}).first()
        return None if row is None else account_suspended(row[0])

    async def refusal(self, account_id: int) -> Reply | None:
        """The reply refusing the account's mail, or None when it may send."""
        return await asyncio.to_thread(self._read, account_id)
