"""The spool: accepted messages written durably, with group commit.

``Spool.accept()`` returns the queue id only after the message, its
recipients and its usage rows (built by ``relay.accounting.ledger``) are
committed in one transaction. The SMTP front says 250 after that and never
before ("never accept what you cannot persist": a failed write raises
``SpoolError``, which carries 451 4.3.0).

Group commit (``relay.queue.batch``): acceptances that arrive while a write
is in progress share the next transaction and its fsync.

The hand-off (``HandOff``, this process's delivery worker): a queued, routed
message the worker has room for now is written already claimed by it (its
token, a lease) in the spool's own transaction, and the worker gets it from
memory: no claim transaction, no second read of the body. It is a claim like
any other: a process killed after the 250 leaves the message leased, and the
lease's expiry or ``take_back`` makes it due again; nobody else delivers it
meanwhile.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, bindparam, insert, select

from relay.accounting import ledger
from relay.core.errors import SpoolError
from relay.core.outcomes import Claimed, MessageState, RecipientState
from relay.queue import gate
from relay.queue.batch import GroupCommit
from relay.store.models import Account, Message, MessageContent, Recipient, Usage

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
    # The hand-off: written claimed by this worker token for ``lease`` seconds.
    claimed_by: str | None = None
    lease: float = 0.0
    # ... and, once committed so, what its worker needs (set by the spool).
    handed: Claimed | None = field(default=None, repr=False)


class HandOff(Protocol):
    """The delivery worker of this process, as the spool sees it."""

    def reserve(self, acc: Acceptance) -> str | None:
        """A delivery slot for ``acc`` now: the claim token (and ``acc.lease``
        set), or None: it is written unclaimed, for any worker."""

    def cancel(self, acc: Acceptance) -> None:
        """The write failed: give the slot back."""

    def deliver(self, claimed: Claimed) -> None:
        """Committed, claimed: deliver it (it holds the slot ``reserve`` gave)."""


def write_batch(engine: Engine, batch: list[Acceptance], lifetime: float) -> list[Claimed | None]:
    """Insert a batch of acceptances in one transaction (runs on the spool thread).

    Returns, in the batch's order, the ``Claimed`` of each message written
    claimed (``claimed_by``), None for the others.
    """
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
                "locked_by": acc.claimed_by,
                "locked_until": now + dt.timedelta(seconds=acc.lease) if acc.claimed_by else None,
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
    with gate.write(engine) as conn:
        conn.execute(insert(Message), messages)
        conn.execute(insert(MessageContent), contents)
        conn.execute(insert(Recipient), rcpts)
        conn.execute(insert(Usage), usage)
        handed = [acc for acc in batch if acc.claimed_by is not None]
        claimed = _claimed(conn, handed, now, expires) if handed else {}
    return [claimed.get(acc.queue_id) for acc in batch]


_PENDING = (
    select(Recipient.message_id, Recipient.id, Recipient.address, Recipient.kind)
    .where(
        Recipient.message_id.in_(bindparam("ids", expanding=True)),
        Recipient.state == RecipientState.PENDING,
    )
    .order_by(Recipient.id)
)
_TRACKING = select(Account.id, Account.open_tracking, Account.click_tracking).where(
    Account.id.in_(bindparam("accounts", expanding=True))
)


def _claimed(
    conn: Connection, handed: list[Acceptance], now: dt.datetime, expires: dt.datetime
) -> dict[str, Claimed]:
    """What a worker needs of the messages just written claimed: the recipients'
    row ids (a small read in the same transaction) and the accounts' tracking."""
    tracking = {
        r[0]: (r[1], r[2])
        for r in conn.execute(_TRACKING, {"accounts": list({a.account_id for a in handed})})
    }
    out = {
        acc.queue_id: Claimed(
            acc.queue_id,
            acc.account_id,
            acc.provider_id,
            acc.mail_from,
            acc.campaign,
            0,
            now,
            expires,
            token=acc.claimed_by or "",
            account_name=acc.account_name,
            data=acc.data,
            open_tracking=tracking.get(acc.account_id, (None, None))[0],
            click_tracking=tracking.get(acc.account_id, (None, None))[1],
        )
        for acc in handed
    }
    for mid, rid, address, kind in conn.execute(_PENDING, {"ids": list(out)}):
        out[mid].recipients.append((rid, address, kind))
    return out


class Spool:
    """Durable acceptance with group commit. One per process."""

    def __init__(self, engine: Engine, lifetime: float) -> None:
        self._commits: GroupCommit[Acceptance, Claimed | None] = GroupCommit(self._write, "spool")
        self._engine = engine
        self._lifetime = lifetime
        self.healthy = True
        self._hand_off: HandOff | None = None
        # Hand-offs follow the write, not the session that asked: a session
        # cancelled while its write is in flight still has its message
        # delivered (or its slot back, if the write failed).
        self._commits.after_commit(self._handed)
        self._commits.on_failure(self._not_handed)

    def hand_off(self, worker: HandOff) -> None:
        """Give queued messages straight to this process's worker when it has room."""
        self._hand_off = worker

    @property
    def batches(self) -> int:
        return self._commits.batches

    def _write(self, batch: list[Acceptance]) -> list[Claimed | None]:
        claimed = write_batch(self._engine, batch, self._lifetime)
        for acc, c in zip(batch, claimed, strict=True):
            acc.handed = c
        return claimed

    def _handed(self, batch: list[Acceptance]) -> None:
        if self._hand_off is None:
            return
        for acc in batch:
            if acc.handed is not None:
                self._hand_off.deliver(acc.handed)

    def _not_handed(self, batch: list[Acceptance]) -> None:
        if self._hand_off is None:
            return
        for acc in batch:
            if acc.claimed_by is not None:
                self._hand_off.cancel(acc)

    def on_commit(self, callback: Callable[[list[Acceptance]], None]) -> None:
        """Call ``callback`` with each committed batch (wakes the workers, counts)."""
        self._commits.after_commit(callback)

    async def accept(self, acc: Acceptance) -> str:
        if self._commits.closed:
            raise SpoolError("spool is shutting down")
        hand = self._hand_off
        if hand is not None and acc.state == MessageState.QUEUED and acc.provider_id is not None:
            acc.claimed_by = hand.reserve(acc)
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
