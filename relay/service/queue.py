"""The queue as an operator sees it: list, show, retry, release, discard.

The admin API, the console and the CLI page through the same listing
(``page_messages``): filters as SQL (state, account, sender, reason, campaign),
a tenant's scope, cursors. Newest first by (created_at, id); the cursor is that
key of the last row shown (see ``relay.service.pages``). Release and discard in
bulk select paused mail with the same filters, so "release all" moves exactly
what the listing of paused mail with those filters shows.
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
    """The first page of ``page_messages`` (kept for callers that want no cursor)."""
    return page_messages(engine, state=state, limit=limit).items


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
    engine: Engine,
    queue_id: str | None,
    sender: str | None,
    account: str | None,
    reason: str | None = None,
    campaign: str | None = None,
) -> list[str]:
    if queue_id:
        with Session(engine) as session:
            msg = session.get(Message, queue_id)
            if msg is None:
                raise NotFound(f"message {queue_id} is not in the queue")
            if msg.state != MessageState.PAUSED:
                raise Conflict(f"message {queue_id} is {msg.state}, not paused")
        return [queue_id]
    if not (sender or account or reason or campaign):
        raise Invalid("name a message ID, --sender, --account, --reason or --campaign", "id")
    where = _filters(MessageState.PAUSED.value, sender, reason, campaign, None)
    with Session(engine) as session:
        if account:
            where.append(Message.account_id == get_account(session, account).id)
        query = select(Message.id).where(*where).order_by(Message.created_at, Message.id)
        return list(session.scalars(query))


@audited("message.release", held_mail, scope.of_held("queue_id", "account"))
def release_messages(
    engine: Engine,
    queue_id: str | None = None,
    *,
    sender: str | None = None,
    account: str | None = None,
    reason: str | None = None,
    campaign: str | None = None,
) -> list[str]:
    """Deliver paused mail now, whatever held it: one message, or every paused
    message that the listing's filters (``page_messages``) select."""
    return held.release(engine, _paused_ids(engine, queue_id, sender, account, reason, campaign))


@audited("message.discard", held_mail, scope.of_held("queue_id", "account"))
def discard_messages(
    engine: Engine,
    queue_id: str | None = None,
    *,
    sender: str | None = None,
    account: str | None = None,
    reason: str | None = None,
    campaign: str | None = None,
) -> held.LedgerRows:
    """Drop paused mail for good (one, or by the listing's filters); recorded as dropped."""
    ids = _paused_ids(engine, queue_id, sender, account, reason, campaign)
    return held.discard(engine, ids, "discarded by the operator")


def page_messages(
    engine: Engine,
    seen_by: Scope = scope.EVERYTHING,
    *,
    state: str | None = None,
    account: str | None = None,
    sender: str | None = None,
    reason: str | None = None,
    campaign: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> Page[tuple[Message, str]]:
    """(message, account name) newest first, filtered, within ``seen_by``.

    ``sender``: an address or a domain, matched against the envelope sender and
    the header From (as release and discard by sender always have); ``reason``:
    words the reason contains, any case; ``campaign``: the campaign exactly."""
    limit = check_limit(limit)
    where = _filters(state, sender, reason, campaign, cursor)
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


# The longest reason words and campaign a filter takes (campaign: its column's size).
MAX_REASON = 200
MAX_CAMPAIGN = 200


def _filters(
    state: str | None,
    sender: str | None,
    reason: str | None,
    campaign: str | None,
    cursor: str | None,
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if state is not None:
        if state not in STATES:
            raise Invalid(f"state must be one of {', '.join(STATES)}", "state")
        where.append(Message.state == state)
    if sender is not None:
        where.append(_from_sender(check_sender(sender)))
    if reason is not None:
        words = reason.strip().lower()
        if not words or len(words) > MAX_REASON:
            raise Invalid(f"reason must be 1 to {MAX_REASON} characters", "reason")
        where.append(func.lower(Message.reason).contains(words, autoescape=True))
    if campaign is not None:
        if not campaign or len(campaign) > MAX_CAMPAIGN:
            raise Invalid(f"campaign must be 1 to {MAX_CAMPAIGN} characters", "campaign")
        where.append(Message.campaign == campaign)
    if cursor is not None:
        where.append(_after(cursor))
    return where


def _from_sender(pattern: str) -> ColumnElement[bool]:
    """An address matches the envelope sender or one of the header From addresses
    (stored joined by ", ", see ``relay.intake``); a domain every address in it.
    The same test as ``relay.queue.held``'s, in SQL so that it pages."""
    mail_from = func.lower(Message.mail_from)
    header = func.lower(func.coalesce(Message.header_from, ""))
    lit = _like_literal(pattern)
    if "@" in pattern:
        return or_(
            mail_from == pattern,
            header == pattern,
            header.like(f"{lit}, %", escape="\\"),
            header.like(f"%, {lit}", escape="\\"),
            header.like(f"%, {lit}, %", escape="\\"),
        )
    return or_(
        mail_from.like(f"%@{lit}", escape="\\"),
        header.like(f"%@{lit}", escape="\\"),
        header.like(f"%@{lit}, %", escape="\\"),
    )


def _like_literal(text: str) -> str:
    """``text`` matched literally by LIKE (a local part may hold ``_`` or ``%``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _after(cursor: str) -> ColumnElement[bool]:
    created, queue_id = decode_cursor(cursor, str, str)
    try:
        at = dt.datetime.fromisoformat(created)
    except ValueError:
        raise Invalid("cursor is not one this listing gave", "cursor") from None
    if at.tzinfo is None:
        raise Invalid("cursor is not one this listing gave", "cursor")
    return or_(Message.created_at < at, and_(Message.created_at == at, Message.id < queue_id))


def accounts_holding(
    engine: Engine,
    seen_by: Scope,
    sender: str | None = None,
    *,
    reason: str | None = None,
    campaign: str | None = None,
) -> list[str]:
    """The accounts within ``seen_by`` that hold paused mail these filters select."""
    where = _filters(MessageState.PAUSED.value, sender, reason, campaign, None)
    if seen_by.accounts is not None:
        where.append(Message.account_id.in_(seen_by.accounts))
    query = (
        select(Account.name)
        .distinct()
        .join(Message, Message.account_id == Account.id)
        .where(*where)
        .order_by(Account.name)
    )
    with Session(engine) as session:
        return list(session.scalars(query))
