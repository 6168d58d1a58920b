"""The paused-mail sweeper: held mail past the queue lifetime fails.

Paused messages are never claimed, so the delivery worker's own expiry
(``relay.delivery.worker.Deliverer``) never sees them; without a sweep they
would stay paused forever. Every ``interval`` seconds ``held.expire`` fails
those whose ``expires_at`` has passed, each in the transaction that writes
its recipients' final state and its ledger rows; ``on_expired`` then hears
what was written (the counters).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine

from relay.queue import held

log = logging.getLogger("relay.queue")

INTERVAL = 5.0  # seconds between sweeps

ExpiredHook = Callable[[held.LedgerRows], Awaitable[None]]


class PausedExpiry:
    """Fails paused mail past its lifetime, on a timer; one per process."""

    def __init__(
        self, engine: Engine, on_expired: ExpiredHook | None = None, interval: float = INTERVAL
    ) -> None:
        self._engine = engine
        self._on_expired = on_expired
        self._interval = interval

    async def sweep(self) -> held.LedgerRows:
        """One pass: fail what is due, log each message, tell ``on_expired``."""
        rows = await asyncio.to_thread(held.expire, self._engine)
        for mid in sorted({r[0] for r in rows}):
            log.info("%s: state=failed reason='expired while paused'", mid)
        if rows and self._on_expired is not None:
            await self._on_expired(rows)
        return rows

    async def run(self) -> None:
        """Sweep until cancelled; a failed pass (database down) is logged and retried."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("paused-mail expiry: %s", exc)
            await asyncio.sleep(self._interval)
