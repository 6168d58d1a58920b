"""The queue as an operator sees it: list, show, retry."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from relay.core.errors import Conflict, Invalid, NotFound
from relay.queue.store import now_utc
from relay.store.models import Account, Attempt, Message, Recipient

STATES = ("queued", "deferred", "paused", "delivered", "failed", "dropped")


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


def retry_message(engine: Engine, queue_id: str) -> None:
    """Make a deferred (or queued) message due now."""
    with Session(engine) as session, session.begin():
        msg = session.get(Message, queue_id)
        if msg is None:
            raise NotFound(f"message {queue_id} is not in the queue")
        if msg.state not in ("queued", "deferred"):
            raise Conflict(
                f"message {queue_id} is {msg.state}; only queued or deferred "
                "messages can be retried"
            )
        session.execute(
            update(Message)
            .where(Message.id == queue_id)
            .values(next_attempt_at=now_utc(), state="queued")
        )
