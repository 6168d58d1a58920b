"""The spool: accepted messages written durably, with group commit.

``Spool.accept()`` returns the queue id only after the message, its
recipients and its usage rows (built by ``relay.accounting.ledger``) are
committed in one transaction. The SMTP front says 250 after that and never
before ("never accept what you cannot persist": a failed write raises
``SpoolError``, which carries 451 4.3.0).

Group commit (``relay.queue.batch``): acceptances that arrive while a write
is in progress share the next transaction and its fsync.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert

from relay.accounting import ledger
from relay.core.errors import SpoolError
from relay.core.outcomes import MessageState, RecipientState
from relay.queue.batch import GroupCommit
from relay.store.models import Message, MessageContent, Recipient, Usage

log = logging.getLogger("relay.spool")

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"
_RANDOM_SPAN = len(_ALPHABET) ** 6


def new_queue_id() -> str:
    """A queue id that sorts by time, like Postfix's long queue ids (no vowels)."""
    n = time.time_ns() // 1000
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    # Six random letters from one draw (``secrets.choice`` six times read the
    # system's random source six times: 2% of acceptance's CPU, issue 15).
    r = secrets.randbelow(_RANDOM_SPAN)
    tail = []
    for _ in range(6):
        r, i = divmod(r, len(_ALPHABET))
        tail.append(_ALPHABET[i])
    return "".join(reversed(out)) + "".join(tail)


@dataclass
class Acceptance:
    """Everything the spool writes for one accepted message."""

    account_id: int
    mail_from: str
    recipients: list[tuple[str, str]]  # (address, kind)
    data: bytes
    state: str = MessageState.QUEUED  # queued | paused | dropped
    credential_id: int | None = None
    header_from: str | None = None
    reason: str | None = None
    provider_id: int | None = None
    campaign: str | None = None
    account_name: str = ""  # for counters and logs; not stored with the message
    # (address, kind, why) of recipients on the account's suppression list:
    # stored as ``suppressed``, never sent, counted apart from ``recipients``.
    suppressed: list[tuple[str, str, str]] = field(default_factory=list)
    queue_id: str = field(default_factory=new_queue_id)


def write_batch(engine: Engine, batch: list[Acceptance], lifetime: float) -> None:
    """Insert a batch of acceptances in one transaction (runs on the spool thread)."""
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=lifetime)
    messages: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    rcpts: list[dict[str, Any]] = []
    usage: list[dict[str, Any]] = []
    for acc in batch:
        final = acc.state == MessageState.DROPPED
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
                "state": RecipientState.DROPPED if final else RecipientState.PENDING,
            }
            for a, k in acc.recipients
        )
        rcpts.extend(
            {
                "message_id": acc.queue_id,
                "address": a,
                "kind": k,
                "state": RecipientState.SUPPRESSED,
                "reply": why,
            }
            for a, k, why in acc.suppressed
        )
        usage.extend(
            ledger.accepted_rows(
                acc.queue_id, acc.account_id, (k for _, k in acc.recipients), final, now.date()
            )
        )
        usage.extend(
            ledger.suppressed_rows(
                acc.queue_id, acc.account_id, (k for _, k, _ in acc.suppressed), now.date()
            )
        )
    with engine.begin() as conn:
        conn.execute(insert(Message), messages)
        conn.execute(insert(MessageContent), contents)
        conn.execute(insert(Recipient), rcpts)
        conn.execute(insert(Usage), usage)


class Spool:
    """Durable acceptance with group commit. One per process."""

    def __init__(self, engine: Engine, lifetime: float) -> None:
        self._commits: GroupCommit[Acceptance, None] = GroupCommit(self._write, "spool")
        self._engine = engine
        self._lifetime = lifetime
        self.healthy = True

    @property
    def batches(self) -> int:
        return self._commits.batches

    def _write(self, batch: list[Acceptance]) -> list[None]:
        write_batch(self._engine, batch, self._lifetime)
        return [None] * len(batch)

    def on_commit(self, callback: Callable[[list[Acceptance]], None]) -> None:
        """Call ``callback`` with each committed batch (wakes the workers, counts)."""
        self._commits.after_commit(callback)

    async def accept(self, acc: Acceptance) -> str:
        if self._commits.closed:
            raise SpoolError("spool is shutting down")
        try:
            await self._commits.submit(acc)
        except Exception as exc:
            self.healthy = False
            log.error("%s: spool write failed: %s", acc.queue_id, exc)
            raise SpoolError(str(exc)) from exc
        self.healthy = True
        return acc.queue_id

    async def aclose(self) -> None:
        """Refuse new work, let the commits in flight finish, stop the thread."""
        await self._commits.aclose()
