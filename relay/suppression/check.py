"""The suppression look-ups of the message path, off the event loop.

Intake asks once per message (``suppressed``: one indexed query for all its
recipients); with ``[suppression] at_rcpt`` the SMTP front asks once per RCPT
TO (``one``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import Engine

from relay.suppression.lists import Entry, lookup


class SuppressionCheck:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def suppressed_now(self, account_id: int, addresses: Sequence[str]) -> dict[str, Entry]:
        """``suppressed`` on the calling thread (a worker thread: it reads the
        database), for a caller that has more to read in the same hop off the loop."""
        if not addresses:
            return {}
        with self._engine.connect() as conn:
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
