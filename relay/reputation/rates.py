"""Hard-bounce and complaint rates per account over rolling windows.

The numerator is the ``events`` table (hard bounces, complaints), by the time
the provider says the event happened. The denominator is the usage ledger's
``delivered`` recipients whose message finished inside the window, not the
providers' ``delivered`` events: the ledger counts every recipient Relay
handed to a provider, for every provider kind, once (its unique key), whether
or not the provider's webhook is set up to send ``delivered`` events (they
are optional in SendGrid's console and SparkPost's); and it is the population
the providers themselves judge (SendGrid and SparkPost compute bounce and
spam rates over mail sent through them, not over mail that reached inboxes).
The ledger row's ``day`` narrows the scan to its index; the message's
``finished_at`` places it exactly in the window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, and_, case, func, select

from relay.core.events import BounceClass, EventType
from relay.store.models import Account, Event, Message, Usage

# Rolling windows, by the label the gauges carry.
WINDOWS: dict[str, dt.timedelta] = {"24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7)}
DELIVERED = "delivered"  # relay.accounting.ledger.DELIVERED


@dataclass(frozen=True)
class Rates:
    """One account's counts over one window."""

    window: str
    delivered: int
    hard_bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.hard_bounces / self.delivered if self.delivered else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.delivered if self.delivered else 0.0

    def judged(self, min_volume: int) -> bool:
        """Rates over too little mail say nothing: 1 bounce in 10 is not 10%."""
        return self.delivered >= min_volume


def window_start(now: dt.datetime, window: str, since: dt.datetime | None) -> dt.datetime:
    """The window's start, never before ``since`` (the account's last resume)."""
    start = now - WINDOWS[window]
    return max(start, since) if since is not None else start


_HARD = and_(Event.type == EventType.BOUNCE, Event.bounce_class == BounceClass.HARD)


def _delivered(
    conn: Connection, start: dt.datetime, account_ids: list[int] | None
) -> dict[int, int]:
    query = (
        select(Usage.account_id, func.coalesce(func.sum(Usage.recipients), 0))
        .join(Message, Message.id == Usage.message_id)
        .where(Usage.event == DELIVERED, Usage.day >= start.date(), Message.finished_at >= start)
        .group_by(Usage.account_id)
    )
    if account_ids is not None:
        query = query.where(Usage.account_id.in_(account_ids))
    return {int(a): int(n) for a, n in conn.execute(query).all()}


def _events(
    conn: Connection, start: dt.datetime, account_ids: list[int] | None
) -> dict[int, tuple[int, int]]:
    query = (
        select(
            Event.account_id,
            func.sum(case((_HARD, 1), else_=0)),
            func.sum(case((Event.type == EventType.COMPLAINT, 1), else_=0)),
        )
        .where(Event.type.in_((EventType.BOUNCE, EventType.COMPLAINT)), Event.at >= start)
        .group_by(Event.account_id)
    )
    if account_ids is not None:
        query = query.where(Event.account_id.in_(account_ids))
    return {int(a): (int(b or 0), int(c or 0)) for a, b, c in conn.execute(query).all()}


def account_rates(
    conn: Connection, account_id: int, now: dt.datetime, since: dt.datetime | None = None
) -> list[Rates]:
    """The account's rates in every window, counted from ``since`` at the earliest."""
    out = []
    for window in WINDOWS:
        start = window_start(now, window, since)
        delivered = _delivered(conn, start, [account_id]).get(account_id, 0)
        bounces, complaints = _events(conn, start, [account_id]).get(account_id, (0, 0))
        out.append(Rates(window, delivered, bounces, complaints))
    return out


def all_rates(conn: Connection, now: dt.datetime) -> dict[str, list[Rates]]:
    """Rates of every account with mail or events in the longest window, by name
    (for the gauges). Two grouped queries per window, whatever the number of accounts."""
    since = {
        int(a): s
        for a, s in conn.execute(select(Account.id, Account.reputation_since)).all()
        if s is not None
    }
    names = {int(a): str(n) for a, n in conn.execute(select(Account.id, Account.name)).all()}
    counted: dict[int, list[Rates]] = {}
    for window in WINDOWS:
        start = now - WINDOWS[window]
        delivered = _delivered(conn, start, None)
        events = _events(conn, start, None)
        for account_id in set(delivered) | set(events):
            b, c = events.get(account_id, (0, 0))
            counted.setdefault(account_id, []).append(
                Rates(window, delivered.get(account_id, 0), b, c)
            )
    for account_id in set(counted) & set(since):  # resumed: counted from the resume
        counted[account_id] = account_rates(conn, account_id, now, since[account_id])
    return {names[a]: _complete(r) for a, r in counted.items() if a in names}


def _complete(rates: Iterable[Rates]) -> list[Rates]:
    """Every window, in order: a window with nothing in it is all zeros."""
    found = {r.window: r for r in rates}
    return [found.get(w, Rates(w, 0, 0, 0)) for w in WINDOWS]
