"""The queue listing the admin API pages through: filters, a tenant's scope, cursors.

Newest first by (created_at, id); the cursor is that key of the last row
shown (see ``relay.service.pages``). Kept apart from ``relay.service.queue``
(the operator's verbs on one message) while that module has another owner;
its rules (the states) are imported from there, not repeated.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ColumnElement, Engine, and_, func, or_, select
from sqlalchemy.orm import Session

from relay.core.errors import Invalid
from relay.queue import held
from relay.service import scope
from relay.service.accounts import check_sender
from relay.service.pages import Page, check_limit, decode_cursor, encode_cursor
from relay.service.queue import STATES
from relay.service.scope import Scope
from relay.store.models import Account, Message


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
