"""The queue table as workers see it: claim due messages, record what happened.

Claims work across processes and nodes. A claim sets ``locked_by`` (a token
unique to this run of a worker) and ``locked_until`` (the lease) on a bounded
batch of due messages; on PostgreSQL the candidate rows are picked with ``FOR
UPDATE SKIP LOCKED`` so concurrent claimers never wait on each other or take
the same row; SQLite has a single writer, so the UPDATE itself is the lock.

A token is ``<identity>#<run>``: the identity (node id and process index) is
stable across restarts, the run part is new each start. A worker that dies
keeps its rows until the lease runs out, or until a worker of the same
identity starts again and takes them back at once (``take_back``). Results are
written only while the claim is still ours (``locked_by`` matches), in one
transaction with the attempt rows and, when the message is finished, its
usage outcome rows (``relay.accounting.ledger``). The types it reads and
writes (``Claimed``, ``Outcome``, ``Attempt``, the states) are
``relay.core.outcomes``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection, Mapping

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from relay.accounting import ledger
from relay.core.outcomes import (
    DUE_STATES,
    FINAL_STATES,
    Attempt,
    Claimed,
    MessageState,
    Outcome,
    RecipientState,
    Recorded,
    Result,
)
from relay.queue import gate
from relay.store.models import Account, Message, MessageContent, Recipient, UTCDateTime
from relay.store.models import Attempt as AttemptRow


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# The claim's statements, built once: building and keying SQLAlchemy
# constructs per claim cost more than running them (claim and load_claimed
# were a tenth of the delivery CPU, profiled).
_FREE_NOW = (
    Message.state.in_(DUE_STATES),
    or_(Message.locked_until.is_(None), Message.locked_until < bindparam("now")),
)
_DUE = (
    select(Message.id, Message.provider_id)
    .where(*_FREE_NOW, Message.next_attempt_at <= bindparam("now"))
    .order_by(Message.next_attempt_at)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
)
_DUE_BUT_FULL = _DUE.where(
    or_(
        Message.provider_id.is_(None), Message.provider_id.not_in(bindparam("full", expanding=True))
    )
)
# The UPDATE repeats the claim's conditions: SQLite has no SKIP LOCKED, so two
# processes may read the same due rows; only the first UPDATE takes them, and
# each process then loads only the rows it holds.
_TAKE = (
    update(Message)
    .where(Message.id.in_(bindparam("ids", expanding=True)), *_FREE_NOW)
    .values(locked_by=bindparam("token"), locked_until=bindparam("until"))
)


def claim(
    engine: Engine,
    token: str,
    limit: int,
    lease: float,
    now: dt.datetime | None = None,
    *,
    room: Mapping[int, int] | None = None,
    per_provider: int | None = None,
) -> list[Claimed]:
    """Take up to ``limit`` due messages for ``lease`` seconds.

    ``room``: free delivery slots of the providers busy here; ``per_provider``:
    those of any other provider. Only messages that fit are claimed (a claim
    that waits for a slot is stranded for the whole lease if the process
    dies); the others are left for another worker, or for later.
    """
    now = now or now_utc()
    room = dict(room or {})
    full = [p for p, n in room.items() if n <= 0]
    due, params = (
        (_DUE_BUT_FULL, {"now": now, "limit": limit, "full": full})
        if full
        else (_DUE, {"now": now, "limit": limit})
    )
    with gate.write(engine) as conn:
        ids = []
        for mid, provider_id in conn.execute(due, params).all():
            if provider_id is not None and per_provider is not None:
                free = room.get(provider_id, per_provider)
                if free <= 0:
                    continue
                room[provider_id] = free - 1
            ids.append(mid)
        if not ids:
            return []
        until = now + dt.timedelta(seconds=lease)
        conn.execute(_TAKE, {"ids": ids, "now": now, "token": token, "until": until})
    return load_claimed(engine, token, ids)


_LOAD = (
    select(
        Message.id,
        Message.account_id,
        Message.provider_id,
        Message.mail_from,
        Message.campaign,
        Message.attempts,
        Message.created_at,
        Message.expires_at,
        Account.name,
        MessageContent.data,
        Account.open_tracking,
        Account.click_tracking,
    )
    .join(MessageContent, MessageContent.message_id == Message.id)
    .join(Account, Account.id == Message.account_id)
    .where(
        Message.id.in_(bindparam("ids", expanding=True)), Message.locked_by == bindparam("token")
    )
)
_PENDING = (
    select(Recipient.message_id, Recipient.id, Recipient.address, Recipient.kind)
    .where(
        Recipient.message_id.in_(bindparam("ids", expanding=True)),
        Recipient.state == RecipientState.PENDING,
    )
    .order_by(Recipient.id)
)
_UNKNOWN = select(AttemptRow.message_id, AttemptRow.transport).where(
    AttemptRow.id.in_(
        select(func.max(AttemptRow.id))
        .where(AttemptRow.message_id.in_(bindparam("ids", expanding=True)))
        .group_by(AttemptRow.message_id)
    ),
    AttemptRow.result == Result.UNKNOWN,
)


def load_claimed(engine: Engine, token: str, ids: list[str]) -> list[Claimed]:
    with engine.connect() as conn:
        rows = conn.execute(_LOAD, {"ids": ids, "token": token}).all()
        out = {
            r[0]: Claimed(
                *r[:8],
                token=token,
                account_name=r[8],
                data=r[9],
                open_tracking=r[10],
                click_tracking=r[11],
            )
            for r in rows
        }
        held = {"ids": list(out)}
        rcpts = conn.execute(_PENDING, held).all()
        unknown = conn.execute(_UNKNOWN, held).all()
    for mid, rid, address, kind in rcpts:
        out[mid].recipients.append((rid, address, kind))
    for mid, transport in unknown:
        out[mid].pinned = transport
    return [out[i] for i in ids if i in out]


def record(engine: Engine, claimed: Claimed, outcome: Outcome) -> Recorded | None:
    """Write an outcome if the claim is still ours; None if the lease was lost."""
    return record_many(engine, [(claimed, outcome)])[0]


def record_many(engine: Engine, items: list[tuple[Claimed, Outcome]]) -> list[Recorded | None]:
    """Write several outcomes in one transaction (one fsync for all of them).

    Each is written only while its claim is still ours: a lost lease skips
    that message (None), not the batch. The message rows are finished one by
    one (each UPDATE's row count says whether the claim held); what follows
    (recipients, attempts, usage) goes in one statement per kind for the batch.
    """
    now = now_utc()
    with gate.write(engine) as conn:
        won = [_finish(conn, claimed, outcome, now) for claimed, outcome in items]
        ours = [item for item, held in zip(items, won, strict=True) if held]
        _write_recipients(conn, [outcome for _, outcome in ours], [c.id for c, _ in ours])
        attempts = [_attempt_row(c.id, a, now) for c, o in ours for a in o.attempts]
        if attempts:
            conn.execute(_ATTEMPTS, attempts)
        finished = [(c.id, c.account_id) for c, o in ours if o.state in FINAL_STATES]
        usage = ledger.write_outcomes(conn, finished, now.date())
    return [
        Recorded(usage.get(claimed.id, [])) if held else None
        for (claimed, _), held in zip(items, won, strict=True)
    ]


# The per-message statements of a delivery outcome, prepared once: building
# SQLAlchemy constructs per message cost more than running them (profiled).
_FINISH = text(
    "UPDATE messages SET state = :state, reason = :reason, locked_by = NULL, "
    "locked_until = NULL, attempts = attempts + :tries, finished_at = :finished_at, "
    "next_attempt_at = COALESCE(:next_at, next_attempt_at) "
    "WHERE id = :id AND locked_by = :token"
).bindparams(
    bindparam("finished_at", type_=UTCDateTime()), bindparam("next_at", type_=UTCDateTime())
)
_DELIVERED = text("UPDATE recipients SET state = 'delivered' WHERE id = :id")
_FAILED = text("UPDATE recipients SET state = 'failed', reply = :reply WHERE id = :id")
_FAIL_PENDING = text(
    "UPDATE recipients SET state = 'failed', reply = :reply "
    "WHERE message_id = :id AND state = 'pending'"
)
_ATTEMPTS = insert(AttemptRow)


def _finish(conn: Connection, claimed: Claimed, outcome: Outcome, now: dt.datetime) -> bool:
    """The message row's new state, if the claim is still ours."""
    final = outcome.state in FINAL_STATES
    params = {
        "state": outcome.state,
        "reason": outcome.reason,
        "tries": len(outcome.attempts),
        "finished_at": now if final else None,
        "next_at": outcome.next_attempt_at,
        "id": claimed.id,
        "token": claimed.token,
    }
    return bool(conn.execute(_FINISH, params).rowcount == 1)


def _attempt_row(message_id: str, a: Attempt, now: dt.datetime) -> dict[str, object]:
    return {
        "message_id": message_id,
        "provider": a.provider,
        "transport": a.transport,
        "result": a.result,
        "code": a.code,
        "text": (a.text or "")[:2000],
        "provider_message_id": a.provider_message_id,
        "duration": a.duration,
        "at": now,
    }


def _write_recipients(conn: Connection, outcomes: list[Outcome], ids: list[str]) -> None:
    delivered = [{"id": rid} for o in outcomes for rid in o.delivered]
    if delivered:
        conn.execute(_DELIVERED, delivered)
    failed = [{"id": r, "reply": t[:2000]} for o in outcomes for r, t in o.failed.items()]
    if failed:
        conn.execute(_FAILED, failed)
    # Whatever was still pending when a message failed (expiry) fails too.
    pending = [
        {"id": mid, "reply": o.reason}
        for o, mid in zip(outcomes, ids, strict=True)
        if o.state == MessageState.FAILED
    ]
    if pending:
        conn.execute(_FAIL_PENDING, pending)


def release_lease(engine: Engine, token: str, ids: Collection[str] | None = None) -> int:
    """Give back every message a claim still holds (graceful shutdown), or only ``ids``."""
    where = [Message.locked_by == token]
    if ids is not None:
        if not ids:
            return 0
        where.append(Message.id.in_(list(ids)))
    with gate.write(engine) as conn:
        return int(
            conn.execute(
                update(Message).where(*where).values(locked_by=None, locked_until=None)
            ).rowcount
        )


def postpone(engine: Engine, token: str, message_id: str, at: dt.datetime) -> bool:
    """Give one claim back due at ``at``, nothing else changed: not sent (its
    provider's ceiling held it back), so no attempt and no state change."""
    with gate.write(engine) as conn:
        done = conn.execute(
            update(Message)
            .where(Message.id == message_id, Message.locked_by == token)
            .values(locked_by=None, locked_until=None, next_attempt_at=at)
        ).rowcount
    return bool(done)


def take_back(engine: Engine, identity: str, token: str) -> int:
    """Free the claims an earlier run of this identity left (killed, so never released).

    Only this node's own identity: nobody else can be delivering them, so they
    are due again at once instead of after the lease.
    """
    with gate.write(engine) as conn:
        return int(
            conn.execute(
                update(Message)
                .where(
                    Message.locked_by.startswith(identity + "#", autoescape=True),
                    Message.locked_by != token,
                )
                .values(locked_by=None, locked_until=None)
            ).rowcount
        )


def queue_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(Message.state, func.count()).group_by(Message.state)).all()
    counts: Counter[str] = Counter({str(s): 0 for s in MessageState})
    counts.update({state: n for state, n in rows})
    return dict(counts)


def due_soon(engine: Engine, now: dt.datetime | None = None) -> bool:
    now = now or now_utc()
    with engine.connect() as conn:
        return (
            conn.execute(
                select(Message.id)
                .where(and_(Message.state.in_(DUE_STATES), Message.next_attempt_at <= now))
                .limit(1)
            ).first()
            is not None
        )
