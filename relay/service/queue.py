"""The queue as an operator sees it: list, show, retry, release, discard."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from relay.core.errors import Conflict, Invalid, NotFound
from relay.core.outcomes import DUE_STATES, MessageState
from relay.queue import held
from relay.queue.store import now_utc
from relay.service import scope
from relay.service.accounts import check_sender, get_account
from relay.service.audit import arg, audited, held_mail
from relay.store.models import Account, Attempt, Message, Recipient

STATES = tuple(s.value for s in MessageState)


@dataclass
class MessageView:
    message: Message
    account: str
    recipients: list[Recipient]
    attempts: list[Attempt]


def list_messages(
    engine: Engine, state: str | None = None, limit: int = 100
) -> list[tuple[Message, str]]:
    if state is not None and state not in STATES:
        raise Invalid(f"state must be one of {', '.join(STATES)}", "state")
    query = (
        select(Message, Account.name)
        .join(Account, Account.id == Message.account_id)
        .order_by(Message.created_at.desc())
        .limit(limit)
    )
    if state:
        query = query.where(Message.state == state)
    with Session(engine) as session:
        return [(m, a) for m, a in session.execute(query).all()]


def show_message(engine: Engine, queue_id: str) -> MessageView:
    with Session(engine) as session:
        row = session.execute(
            select(Message, Account.name)
            .join(Account, Account.id == Message.account_id)
            .where(Message.id == queue_id)
        ).first()
        if row is None:
            raise NotFound(f"message {queue_id} is not in the queue")
        rcpts = list(
            session.scalars(
                select(Recipient).where(Recipient.message_id == queue_id).order_by(Recipient.id)
            )
        )
        attempts = list(
            session.scalars(
                select(Attempt).where(Attempt.message_id == queue_id).order_by(Attempt.id)
            )
        )
        return MessageView(row[0], row[1], rcpts, attempts)


@audited("message.retry", arg("queue_id"), scope.of_message("queue_id"))
def retry_message(engine: Engine, queue_id: str) -> None:
    """Make a deferred (or queued) message due now."""
    with Session(engine) as session, session.begin():
        msg = session.get(Message, queue_id)
        if msg is None:
            raise NotFound(f"message {queue_id} is not in the queue")
        if msg.state not in DUE_STATES:
            raise Conflict(
                f"message {queue_id} is {msg.state}; only queued or deferred "
                "messages can be retried"
            )
        session.execute(
            update(Message)
            .where(Message.id == queue_id)
            .values(next_attempt_at=now_utc(), state=MessageState.QUEUED)
        )


def _paused_ids(
    engine: Engine, queue_id: str | None, sender: str | None, account: str | None
) -> list[str]:
    if queue_id:
        with Session(engine) as session:
            msg = session.get(Message, queue_id)
            if msg is None:
                raise NotFound(f"message {queue_id} is not in the queue")
            if msg.state != MessageState.PAUSED:
                raise Conflict(f"message {queue_id} is {msg.state}, not paused")
        return [queue_id]
    if not (sender or account):
        raise Invalid("name a message ID, --sender or --account", "id")
    account_id = None
    if account:
        with Session(engine) as session:
            account_id = get_account(session, account).id
    return [m[0] for m in held.paused(engine, account_id, check_sender(sender) if sender else None)]


@audited("message.release", held_mail, scope.of_held("queue_id", "account"))
def release_messages(
    engine: Engine,
    queue_id: str | None = None,
    *,
    sender: str | None = None,
    account: str | None = None,
) -> list[str]:
    """Deliver paused mail now, whatever held it (one message, or in bulk)."""
    return held.release(engine, _paused_ids(engine, queue_id, sender, account))


@audited("message.discard", held_mail, scope.of_held("queue_id", "account"))
def discard_messages(
    engine: Engine,
    queue_id: str | None = None,
    *,
    sender: str | None = None,
    account: str | None = None,
) -> held.LedgerRows:
    """Drop paused mail for good; it is recorded as dropped."""
    ids = _paused_ids(engine, queue_id, sender, account)
    return held.discard(engine, ids, "discarded by the operator")
