"""Held (paused) mail: release, discard, resume when the sender is verified, expire.

Paused messages are never claimed by workers. They leave the paused state
only here, each move in one transaction guarded by ``state = 'paused'`` so two
operators (or an operator and the expiry sweep) cannot both move one message.
A discarded or expired message is finished like a delivered one: its
recipients get a final state and the ledger its outcome rows. The expiry runs
on a timer in ``relay.queue.sweeper``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from sqlalchemy import Connection, Engine, select, update

from relay.accounting import ledger
from relay.core.outcomes import MessageState, RecipientState
from relay.queue.store import now_utc
from relay.store.models import Message, Recipient

# (message id, account id, kind, event, n): what a finish added to the ledger
LedgerRows = list[tuple[str, int, str, str, int]]


def paused(
    engine: Engine, account_id: int | None = None, sender: str | None = None
) -> list[tuple[str, int, str, str | None, str | None]]:
    """(id, account, envelope sender, header From, reason) of paused messages."""
    query = select(
        Message.id, Message.account_id, Message.mail_from, Message.header_from, Message.reason
    ).where(Message.state == MessageState.PAUSED)
    if account_id is not None:
        query = query.where(Message.account_id == account_id)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(Message.created_at)).all()
    out = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    if sender:
        out = [r for r in out if _mentions(r[2], r[3], sender)]
    return out


def _mentions(mail_from: str, header_from: str | None, sender: str) -> bool:
    sender = sender.lower()
    addresses = [mail_from.lower(), *(a.strip().lower() for a in (header_from or "").split(","))]
    if "@" in sender:
        return sender in addresses
    return any(a.rpartition("@")[2] == sender for a in addresses)


def release(engine: Engine, ids: Iterable[str]) -> list[str]:
    """Queue paused messages for delivery now. Returns the ids that moved."""
    moved = []
    with engine.begin() as conn:
        for mid in ids:
            done = conn.execute(
                update(Message)
                .where(Message.id == mid, Message.state == MessageState.PAUSED)
                .values(state=MessageState.QUEUED, reason=None, next_attempt_at=now_utc())
            )
            if done.rowcount == 1:
                moved.append(mid)
    return moved


def resume_verified(engine: Engine, account_id: int, verified: Callable[[str], bool]) -> list[str]:
    """Release the account's mail paused for an unverified sender that now passes."""
    ready = [
        mid
        for mid, _, mail_from, header_from, reason in paused(engine, account_id)
        if (reason or "").startswith("sender ")
        and verified(mail_from)
        and all(verified(a.strip()) for a in (header_from or "").split(",") if a.strip())
    ]
    return release(engine, ready)


def discard(engine: Engine, ids: Iterable[str], reason: str) -> LedgerRows:
    """Finish paused messages as dropped (an operator's decision)."""
    return _finish(engine, ids, MessageState.DROPPED, reason)


def expire(engine: Engine, now: dt.datetime | None = None) -> LedgerRows:
    """Fail paused messages older than the queue lifetime."""
    now = now or now_utc()
    with engine.connect() as conn:
        ids = list(
            conn.execute(
                select(Message.id).where(
                    Message.state == MessageState.PAUSED, Message.expires_at <= now
                )
            ).scalars()
        )
    return _finish(engine, ids, MessageState.FAILED, "expired while paused")


def _finish(engine: Engine, ids: Iterable[str], state: MessageState, reason: str) -> LedgerRows:
    rows: LedgerRows = []
    with engine.begin() as conn:
        for mid in ids:
            rows.extend(_finish_one(conn, mid, state, reason))
    return rows


def _finish_one(conn: Connection, mid: str, state: MessageState, reason: str) -> LedgerRows:
    now = now_utc()
    account_id = conn.execute(
        update(Message)
        .where(Message.id == mid, Message.state == MessageState.PAUSED)
        .values(state=state, reason=reason, finished_at=now)
        .returning(Message.account_id)
    ).scalar()
    if account_id is None:
        return []
    conn.execute(
        update(Recipient)
        .where(Recipient.message_id == mid, Recipient.state == RecipientState.PENDING)
        .values(state=RecipientState(state), reply=reason)
    )
    written = ledger.write_outcome(conn, mid, account_id, now.date())
    return [(mid, account_id, kind, event, n) for kind, event, n in written]
