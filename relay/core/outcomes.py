"""One vocabulary for what happens to a message: states, results, attempts, outcomes.

The queue writes these, the delivery worker decides them, the providers'
chain reports attempts in them, accounting counts them. They live here, at
the bottom of the layers, so that none of those has to import another to
speak of a message.

States and results are ``StrEnum``: each member equals the string stored in
the database and shown by the API and the CLI (``MessageState.DELIVERED ==
"delivered"``), so the rows and the output are what they were with bare
strings, and a typo is a type error instead of a state nobody handles.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum


class MessageState(StrEnum):
    """``messages.state``: where a message is in the queue."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    PAUSED = "paused"  # held: never claimed, leaves only by release, discard or expiry
    DELIVERED = "delivered"
    FAILED = "failed"
    DROPPED = "dropped"


# States a worker may claim (when due), and states a message never leaves.
DUE_STATES = (MessageState.QUEUED, MessageState.DEFERRED)
FINAL_STATES = (MessageState.DELIVERED, MessageState.FAILED, MessageState.DROPPED)


class RecipientState(StrEnum):
    """``recipients.state``: a recipient is pending until it has a final state."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DROPPED = "dropped"
    # On the account's suppression list at intake: never sent, never charged.
    SUPPRESSED = "suppressed"


class Result(StrEnum):
    """``attempts.result``: what one try of one leg came to (a metrics label too)."""

    DELIVERED = "delivered"
    PARTIAL = "partial"  # taken, with some recipients refused
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    PAYLOAD = "payload"  # the API refused the form of the request (PayloadRejected)
    CREDENTIALS = "credentials"
    UNKNOWN = "unknown"  # sent, no answer: the provider may have it


@dataclass(frozen=True)
class Attempt:
    """One try of one provider by one transport (a row of the attempts table).

    The chain reports it as each leg ends; the worker keeps it as is and the
    queue writes it with the outcome.
    """

    provider: str
    transport: str  # api | smtp | file
    result: Result
    duration: float  # seconds, monotonic clock
    code: str | None = None
    text: str | None = None
    provider_message_id: str | None = None
    retry_after: float | None = None
    queue_id: str = ""


@dataclass
class Claimed:
    """A message a worker holds under its lease, with what delivering it needs."""

    id: str
    account_id: int
    provider_id: int | None
    mail_from: str
    campaign: str | None
    attempts: int
    created_at: dt.datetime
    expires_at: dt.datetime
    token: str
    account_name: str = ""
    data: bytes = b""
    # (recipient row id, address, kind) of recipients not yet delivered
    recipients: list[tuple[int, str, str]] = field(default_factory=list)
    # The transport whose last attempt had an unknown outcome: this pass may
    # use that leg only (the provider may have the message already).
    pinned: str | None = None
    # The account's tracking settings (None: the provider's own default).
    open_tracking: bool | None = None
    click_tracking: bool | None = None


@dataclass
class Outcome:
    """What one delivery pass decided for a claimed message."""

    state: MessageState  # delivered | deferred | failed | paused
    attempts: list[Attempt]
    delivered: list[int] = field(default_factory=list)  # recipient row ids
    failed: dict[int, str] = field(default_factory=dict)  # row id -> reply
    reason: str | None = None
    next_attempt_at: dt.datetime | None = None
    fell_back: bool = False  # went by SMTP although the provider has an API
    # Not sent: the provider's ceiling or pause held it back (no attempt, no
    # backoff); the worker gives the claim back due at ``next_attempt_at``.
    throttled: bool = False


@dataclass(frozen=True)
class Recorded:
    """An outcome was written; ``usage`` holds the ledger rows it added (kind, event, n)."""

    usage: list[tuple[str, str, int]]
