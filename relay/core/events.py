"""What providers tell Relay after a delivery: events, as every layer speaks of them.

A provider's webhook body is read by that provider's own code into
``ProviderEvent``; the webhook listener stores each one once (per provider
event id) and ties it to Relay's message and recipient through the ids Relay
sent along with the delivery, never through the event's address alone. Stored
events then go to the sinks the app wires (suppression lists, reputation),
as ``AccountEvent``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    """``events.type``: what happened to one recipient, in Relay's words."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCE = "bounce"
    DROPPED = "dropped"  # the provider would not send it (its own suppression, for one)
    COMPLAINT = "complaint"  # spam report
    UNSUBSCRIBE = "unsubscribe"
    OPEN = "open"
    CLICK = "click"


class BounceClass(StrEnum):
    HARD = "hard"  # the address does not exist: suppress at once
    SOFT = "soft"  # mailbox full, greylisting...: suppress only after several in a row


@dataclass(frozen=True)
class ProviderEvent:
    """One event as a provider reported it, read by that provider's module."""

    provider_event_id: str
    type: EventType
    address: str
    at: dt.datetime
    message_id: str | None = None  # Relay's queue id, from the ids sent with the delivery
    recipient_id: int | None = None  # Relay's recipient row id, likewise
    bounce_class: BounceClass | None = None
    detail: str | None = None


@dataclass(frozen=True)
class AccountEvent:
    """An event once stored: its row id, and the account and provider it belongs to."""

    id: int
    account_id: int
    provider_id: int
    event: ProviderEvent


# Called with the events just stored (after their commit), in a worker thread.
EventSink = Callable[[Sequence[AccountEvent]], None]


class NoticeKind(StrEnum):
    """What an account is told about (``notifications.kind``)."""

    CAMPAIGN_PAUSED = "campaign_paused"
    REPUTATION_WARNING = "reputation_warning"
    SUSPENDED = "suspended"
    PROVIDER_FAILED = "provider_failed"
    CIRCUIT_OPEN = "circuit_open"


@dataclass(frozen=True)
class Notice:
    """Something to tell an account, raised wherever it happens (intake, reputation,
    the provider chain, the live check) and delivered by the notifications service.

    ``dedupe_key`` makes it once only: e.g. ``campaign_paused:<account id>:<campaign>:<day>``.
    """

    account_id: int
    kind: NoticeKind
    dedupe_key: str
    subject: str
    detail: str


# Raising a notice never blocks and never fails the caller; the app wires the sender.
Notify = Callable[[Notice], None]
