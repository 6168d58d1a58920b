"""Stored provider events turned into suppressions (an ``EventSink``).

- a hard bounce (or a bounce the provider did not class) suppresses as
  ``hard_bounce``: the address does not exist;
- a complaint as ``complaint``, an unsubscribe as ``unsubscribe``;
- a soft bounce only once ``[suppression] soft_bounce_limit`` soft bounces in
  a row reached the address: counted in the ``events`` table since the
  address's last ``delivered`` event for the account, so one delivery resets
  the count. That row expires after ``[suppression] soft_bounce_ttl``.

Each goes to the account of the message the event is about (the event's
``account_id``), never to its agency. The sink runs in a worker thread after
the events' commit; a failure is logged, never raised into the receiver.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from sqlalchemy import Engine, func, select

from relay.core.events import AccountEvent, BounceClass, EventSink, EventType
from relay.core.settings import Settings, SuppressionSettings
from relay.store.models import Event
from relay.suppression import lists

log = logging.getLogger("relay.suppression")

_REASON = {EventType.COMPLAINT: lists.COMPLAINT, EventType.UNSUBSCRIBE: lists.UNSUBSCRIBE}


def soft_bounces_in_a_row(engine: Engine, account_id: int, address: str) -> int:
    """Soft bounces of ``address`` for the account since its last delivery.

    Rows are read by the lowered address and compared as ``lists.normalise``
    does in Python, so a local part in another case is another address.
    """
    key = lists.normalise(address)
    query = select(Event.address, Event.type, Event.bounce_class, Event.at).where(
        Event.account_id == account_id,
        func.lower(Event.address) == key.lower(),
        Event.type.in_((EventType.DELIVERED, EventType.BOUNCE)),
    )
    with engine.connect() as conn:
        rows = [r for r in conn.execute(query).all() if _same(r.address, key)]
    delivered = [r.at for r in rows if r.type == EventType.DELIVERED]
    since = max(delivered) if delivered else None
    return sum(
        1
        for r in rows
        if r.type == EventType.BOUNCE
        and r.bounce_class == BounceClass.SOFT
        and (since is None or r.at > since)
    )


def _same(address: str, key: str) -> bool:
    try:
        return lists.normalise(address) == key
    except Exception:
        return False


def apply(engine: Engine, settings: SuppressionSettings, item: AccountEvent) -> bool:
    """The suppression one stored event calls for, if any; True when the list changed."""
    event = item.event
    detail = event.detail or f"{event.type} event {event.provider_event_id}"
    if event.type == EventType.BOUNCE and event.bounce_class != BounceClass.SOFT:
        reason, expires = lists.HARD_BOUNCE, None
    elif event.type in _REASON:
        reason, expires = _REASON[event.type], None
    elif event.type == EventType.BOUNCE:
        n = soft_bounces_in_a_row(engine, item.account_id, event.address)
        if n < settings.soft_bounce_limit:
            return False
        reason = lists.SOFT_BOUNCE
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.soft_bounce_ttl)
        detail = f"{n} soft bounces in a row; last: {detail}"
    else:
        return False
    _, changed = lists.add(
        engine, item.account_id, event.address, reason, "event", detail, expires_at=expires
    )
    return changed


def events_sink(engine: Engine, settings: Settings | SuppressionSettings) -> EventSink:
    """The sink the app hands the webhook receiver (``relay.app``): the whole
    settings or their ``[suppression]`` section."""
    if isinstance(settings, Settings):
        settings = settings.suppression
    section = settings

    def sink(events: Sequence[AccountEvent]) -> None:
        for item in events:
            try:
                if apply(engine, section, item):
                    log.info(
                        "suppressed: account_id=%d address=<%s> after %s event",
                        item.account_id,
                        item.event.address,
                        item.event.type,
                    )
            except Exception as exc:  # one bad event must not lose the others
                log.warning("suppression from event %d failed: %s", item.id, exc)

    return sink
