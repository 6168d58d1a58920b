"""The queue as an operator sees it: list, show, retry, release, discard.

The admin API pages through the same listing (``page_messages``): filters, a
tenant's scope, cursors. Newest first by (created_at, id); the cursor is that
key of the last row shown (see ``relay.service.pages``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session

from relay.core.addresses import check_sender
from relay.core.errors import Conflict, Invalid, NotFound
from relay.core.outcomes import DUE_STATES, MessageState
from relay.queue import held
from relay.queue.store import now_utc
from relay.service import scope
from relay.service.accounts import get_account
from relay.service.audit import arg, audited, held_mail
from relay.service.pages import Page, check_limit, decode_cursor, encode_cursor
from relay.service.scope import Scope
from relay.store.models import Account, Attempt, Event, Message, Provider, Recipient

STATES = tuple(s.value for s in MessageState)


@dataclass(frozen=True)
class EventView:
    """What a provider reported about one recipient (``relay.webhooks``), oldest first."""

    at: dt.datetime
    type: str
    address: str
    bounce_class: str | None
    detail: str | None
    provider: str | None  # None once the provider row is removed


@dataclass
class MessageView:
    message: Message
    account: str
    recipients: list[Recipient]
    attempts: list[Attempt]
    events: list[EventView] = field(default_factory=list)


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
        found = session.execute(
            select(Event, Provider.name)
            .outerjoin(Provider, Provider.id == Event.provider_id)
            .where(Event.message_id == queue_id)
            .order_by(Event.at, Event.id)
        ).all()
        events = [
            EventView(e.at, e.type, e.address, e.bounce_class, e.detail, name) for e, name in found
        ]
        return MessageView(row[0], row[1], rcpts, attempts, events)


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


def page_messages(
    engine: Engine,
    seen_by: Scope = scope.EVERYTHING,
    *,
    state: str | None = None,
    account: str | None = None,
    sender: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> Page[tuple[Message, str]]:
    """(message, account name) newest first, filtered, within ``seen_by``."""
    limit = check_limit(limit)
    where = _filters(state, sender, cursor)
    if seen_by.accounts is not None:
        where.append(Message.account_id.in_(seen_by.accounts))
    query = (
        select(Message, Account.name)
        .join(Account, Account.id == Message.account_id)
        .order_by(Message.created_at.desc(), Message.id.desc())
    )
    with Session(engine) as session:
        if account is not None:
            where.append(Message.account_id == scope.visible_account(session, seen_by, account))
        rows = [(m, a) for m, a in session.execute(query.where(*where).limit(limit + 1)).all()]
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1][0] if rows else None
    return Page(
        rows, encode_cursor(last.created_at.isoformat(), last.id) if more and last else None
    )


def _filters(
    state: str | None, sender: str | None, cursor: str | None
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if state is not None:
        if state not in STATES:
            raise Invalid(f"state must be one of {', '.join(STATES)}", "state")
        where.append(Message.state == state)
    if sender is not None:
        where.append(_from_sender(check_sender(sender)))
    if cursor is not None:
        where.append(_after(cursor))
    return where


def _from_sender(pattern: str) -> ColumnElement[bool]:
    """An address matches the envelope sender; a domain every address in it.
    (``check_sender`` leaves no LIKE wildcard in a domain.)"""
    mail_from = func.lower(Message.mail_from)
    if "@" in pattern:
        return mail_from == pattern
    return mail_from.like(f"%@{pattern}")


def _after(cursor: str) -> ColumnElement[bool]:
    created, queue_id = decode_cursor(cursor, str, str)
    try:
        at = dt.datetime.fromisoformat(created)
    except ValueError:
        raise Invalid("cursor is not one this listing gave", "cursor") from None
    if at.tzinfo is None:
        raise Invalid("cursor is not one this listing gave", "cursor")
    return or_(Message.created_at < at, and_(Message.created_at == at, Message.id < queue_id))


def accounts_holding(engine: Engine, seen_by: Scope, sender: str) -> list[str]:
    """The accounts within ``seen_by`` that hold paused mail from ``sender``."""
    ids = {row[1] for row in held.paused(engine, None, check_sender(sender))}
    visible = sorted(i for i in ids if seen_by.sees(i))
    if not visible:
        return []
    with Session(engine) as session:
        query = select(Account.name).where(Account.id.in_(visible)).order_by(Account.name)
        return list(session.scalars(query))
