"""What the console's dashboard shows that no other service reads: the queue by
state and the accounts' standing, within a scope (the caller's, as for the API)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from relay.core.outcomes import MessageState
from relay.service.scope import Scope
from relay.store.models import Account, Message

# States worth a count on the dashboard: mail that is not finished.
OPEN_STATES = (MessageState.QUEUED, MessageState.DEFERRED, MessageState.PAUSED)


@dataclass(frozen=True)
class Standing:
    """An account as the reputation judge left it."""

    account: str
    agency: str | None
    suspended_at: dt.datetime | None
    suspended_reason: str | None


def queue_counts(engine: Engine, seen_by: Scope) -> dict[str, int]:
    """Messages not yet finished, by state (every open state present, zero if none)."""
    query = (
        select(Message.state, func.count())
        .where(Message.state.in_([s.value for s in OPEN_STATES]))
        .group_by(Message.state)
    )
    if seen_by.accounts is not None:
        query = query.where(Message.account_id.in_(seen_by.accounts))
    with Session(engine) as session:
        found = {state: int(n) for state, n in session.execute(query).all()}
    return {s.value: found.get(s.value, 0) for s in OPEN_STATES}


def standings(engine: Engine, seen_by: Scope) -> list[Standing]:
    """The accounts a scope sees, agencies first, each with its suspension if any."""
    with Session(engine) as session:
        rows = list(session.scalars(select(Account).order_by(Account.name)))
    names = {a.id: a.name for a in rows}
    seen = [a for a in rows if seen_by.sees(a.id)]
    seen.sort(key=lambda a: (a.parent_id is not None, a.name))
    return [
        Standing(
            a.name,
            names.get(a.parent_id) if a.parent_id else None,
            a.suspended_at,
            a.suspended_reason,
        )
        for a in seen
    ]
