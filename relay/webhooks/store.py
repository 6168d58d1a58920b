"""Events stored once and tied to Relay's message and recipient, never to an address alone.

An event counts only when the ids Relay sent with the delivery name a message
of an account that uses this provider row (routed through it, or in the
owner's tree) and a recipient of that message with the event's address
(domain in any case, RFC 5321 2.4). A forged event naming another tenant's
message ids therefore ties to nothing. Each event is stored once per
(provider, provider event id) and a SparkPost batch once per batch id: a
replay changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.core.addresses import normalise_username
from relay.core.crypto import SecretBox
from relay.core.events import AccountEvent, ProviderEvent
from relay.store.models import Account, Event, Message, Recipient, WebhookBatch
from relay.store.models import Provider as ProviderRow


@dataclass(frozen=True)
class HookProvider:
    """The provider a webhook token names, with its ``webhook_key`` opened."""

    id: int
    kind: str
    account_id: int | None
    key: str | None


@dataclass
class Stored:
    """What one request came to (for the counter and the sinks)."""

    stored: list[AccountEvent] = field(default_factory=list)
    duplicate: list[ProviderEvent] = field(default_factory=list)
    unmatched: list[ProviderEvent] = field(default_factory=list)
    batch_seen: bool = False


def find_provider(engine: Engine, box: SecretBox, token: str) -> HookProvider | None:
    """The provider whose webhook token this is, or None."""
    if not token:
        return None
    with Session(engine) as session:
        row = session.scalar(select(ProviderRow).where(ProviderRow.webhook_token == token))
        if row is None:
            return None
        key = box.open(row.secrets).get("webhook_key") or None
        return HookProvider(row.id, row.kind, row.account_id, key)


def _same_address(a: str, b: str) -> bool:
    return normalise_username(a) == normalise_username(b)


def _match(session: Session, provider: HookProvider, event: ProviderEvent) -> Recipient | None:
    """The recipient the event is about, if its ids hold up (see the module's docstring)."""
    if not event.message_id:
        return None
    message = session.get(Message, event.message_id)
    if message is None:
        return None
    account = session.get_one(Account, message.account_id)
    uses = message.provider_id == provider.id or (
        provider.account_id is not None and provider.account_id in (account.id, account.parent_id)
    )
    if not uses:
        return None
    if event.recipient_id is not None:
        recipient = session.get(Recipient, event.recipient_id)
        if recipient is None or recipient.message_id != message.id:
            return None
        return recipient if _same_address(recipient.address, event.address) else None
    rows = session.scalars(select(Recipient).where(Recipient.message_id == message.id))
    return next((r for r in rows if _same_address(r.address, event.address)), None)


def _store(
    session: Session, provider: HookProvider, events: Sequence[ProviderEvent], batch: str | None
) -> Stored:
    result = Stored()
    if batch is not None:
        seen = select(WebhookBatch.id).where(
            WebhookBatch.provider_id == provider.id, WebhookBatch.batch_id == batch[:200]
        )
        if session.scalar(seen) is not None:
            result.batch_seen = True
            result.duplicate = list(events)
            return result
        session.add(WebhookBatch(provider_id=provider.id, batch_id=batch[:200]))
    ids = {e.provider_event_id for e in events}
    known = set(
        session.scalars(
            select(Event.provider_event_id).where(
                Event.provider_id == provider.id, Event.provider_event_id.in_(ids)
            )
        )
    )
    rows: list[tuple[Event, ProviderEvent]] = []
    for event in events:
        if event.provider_event_id in known:
            result.duplicate.append(event)
            continue
        recipient = _match(session, provider, event)
        if recipient is None:
            result.unmatched.append(event)
            continue
        known.add(event.provider_event_id)
        message = session.get_one(Message, recipient.message_id)
        row = Event(
            provider_id=provider.id,
            provider_event_id=event.provider_event_id,
            account_id=message.account_id,
            message_id=message.id,
            recipient_id=recipient.id,
            address=event.address[:320],
            type=event.type.value,
            bounce_class=event.bounce_class.value if event.bounce_class else None,
            detail=event.detail,
            at=event.at,
        )
        session.add(row)
        rows.append((row, event))
    session.flush()
    # The sinks get the ids as resolved, not as the provider sent them.
    result.stored = [
        AccountEvent(
            row.id,
            row.account_id,
            provider.id,
            replace(event, message_id=row.message_id, recipient_id=row.recipient_id),
        )
        for row, event in rows
    ]
    return result


def store_events(
    engine: Engine,
    provider: HookProvider,
    events: Sequence[ProviderEvent],
    batch: str | None = None,
) -> Stored:
    """Store what is new and tied to a recipient, in one transaction.

    Two deliveries of the same event at once both pass the look-up; the
    unique key stops the second, which is then read again as duplicates.
    """
    for attempt in (1, 2):
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return _store(session, provider, events, batch)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
