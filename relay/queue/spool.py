"""The spool: accepted messages written durably, with group commit.

``Spool.accept()`` returns the queue id only after the message, its
recipients and its usage rows are committed in one transaction. The SMTP
front says 250 after that and never before ("never accept what you cannot
persist": a failed write raises ``SpoolError``, which carries 451 4.3.0).

Group commit: acceptances that arrive while a write is in progress wait for
the next one, and all of them share its transaction and its fsync. There is
no timer: under light load each message gets its own commit at once, under
heavy load the batch grows to whatever arrived during the previous commit.
Writes run on one dedicated thread so the event loop never blocks on disk
and SQLite sees a single writer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert

from relay.core.errors import SpoolError
from relay.store.models import Message, MessageContent, Recipient, Usage

log = logging.getLogger("relay.spool")

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"


def new_queue_id() -> str:
    """A queue id that sorts by time, like Postfix's long queue ids (no vowels)."""
    n = time.time_ns() // 1000
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(reversed(out)) + "".join(secrets.choice(_ALPHABET) for _ in range(6))


@dataclass
class Acceptance:
    """Everything the spool writes for one accepted message."""

    account_id: int
    mail_from: str
    recipients: list[tuple[str, str]]  # (address, kind)
    data: bytes
    state: str = "queued"  # queued | paused | dropped
    credential_id: int | None = None
    header_from: str | None = None
    reason: str | None = None
    provider_id: int | None = None
    campaign: str | None = None
    account_name: str = ""  # for counters and logs; not stored with the message
    queue_id: str = field(default_factory=new_queue_id)


def _usage_rows(acc: Acceptance, day: dt.date) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for _, kind in acc.recipients:
        counts[kind] = counts.get(kind, 0) + 1
    events = ["accepted"] + (["dropped"] if acc.state == "dropped" else [])
    return [
        {
            "account_id": acc.account_id,
            "day": day,
            "message_id": acc.queue_id,
            "kind": kind,
            "event": event,
            "recipients": n,
        }
        for event in events
        for kind, n in sorted(counts.items())
    ]


def write_batch(engine: Engine, batch: list[Acceptance], lifetime: float) -> None:
    """Insert a batch of acceptances in one transaction (runs on the spool thread)."""
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=lifetime)
    messages: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    rcpts: list[dict[str, Any]] = []
    usage: list[dict[str, Any]] = []
    for acc in batch:
        final = acc.state == "dropped"
        messages.append(
            {
                "id": acc.queue_id,
                "account_id": acc.account_id,
                "credential_id": acc.credential_id,
                "mail_from": acc.mail_from,
                "header_from": acc.header_from,
                "state": acc.state,
                "reason": acc.reason,
                "provider_id": acc.provider_id,
                "campaign": acc.campaign,
                "size": len(acc.data),
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
                "expires_at": expires,
                "finished_at": now if final else None,
            }
        )
        contents.append({"message_id": acc.queue_id, "data": acc.data})
        rcpts.extend(
            {
                "message_id": acc.queue_id,
                "address": a,
                "kind": k,
                "state": "dropped" if final else "pending",
            }
            for a, k in acc.recipients
        )
        usage.extend(_usage_rows(acc, now.date()))
    with engine.begin() as conn:
        conn.execute(insert(Message), messages)
        conn.execute(insert(MessageContent), contents)
        conn.execute(insert(Recipient), rcpts)
        conn.execute(insert(Usage), usage)


class Spool:
    """Durable acceptance with group commit. One per process."""

    def __init__(self, engine: Engine, lifetime: float) -> None:
        self._engine = engine
        self._lifetime = lifetime
        self._pending: list[tuple[Acceptance, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._listeners: list[Callable[[list[Acceptance]], None]] = []
        self._closed = False
        self.batches = 0
        self.healthy = True

    def on_commit(self, callback: Callable[[list[Acceptance]], None]) -> None:
        """Call ``callback`` with each committed batch (wakes the workers, counts)."""
        self._listeners.append(callback)

    async def accept(self, acc: Acceptance) -> str:
        if self._closed:
            raise SpoolError("spool is shutting down")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((acc, fut))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        await asyncio.shield(fut)
        return acc.queue_id

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                accs = [a for a, _ in batch]
                try:
                    await loop.run_in_executor(
                        self._executor, write_batch, self._engine, accs, self._lifetime
                    )
                except Exception as exc:
                    self.healthy = False
                    log.error("spool write failed for %d message(s): %s", len(batch), exc)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(SpoolError(str(exc)))
                    continue
                self.healthy = True
                self.batches += 1
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                for callback in self._listeners:
                    callback(accs)
        finally:
            self._writer = None

    async def aclose(self) -> None:
        """Refuse new work, let the commits in flight finish, stop the thread."""
        self._closed = True
        if self._writer is not None:
            await asyncio.shield(self._writer)
        self._executor.shutdown(wait=True)
