"""SparkPost's webhooks: basic authentication, batches, and events read into ``ProviderEvent``.

SparkPost posts batches: a JSON array of ``{"msys": {"<class>_event": {...}}}``
with ``X-MessageSystems-Batch-ID``, retried (same id) until it gets a 2xx, so
a batch is taken once by its id. Authentication is HTTP basic auth, set on
the webhook in the console (https://developers.sparkpost.com/api/webhooks/).
Metadata Relay sends with each delivery comes back as ``rcpt_meta`` (and
``rcpt_meta`` merged over ``metadata``); bounce classes are SparkPost's
(https://support.sparkpost.com/docs/deliverability/bounce-classification-codes):
10 invalid recipient, 30 no RCPT, 90 unsubscribe are hard; the rest (20-25
soft, DNS, mailbox full, too large, timeout, admin; 50-54 blocks; 60-100)
are not a dead address.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
from collections.abc import Mapping
from typing import Any

from relay.core.errors import Invalid, WebhookRefused
from relay.core.events import BounceClass, EventType, ProviderEvent
from relay.providers.kind import json_array

BATCH_ID = "x-messagesystems-batch-id"
HARD_BOUNCE_CLASSES = frozenset({10, 30, 90})

_TYPES: dict[str, EventType] = {
    "delivery": EventType.DELIVERED,
    "delay": EventType.DEFERRED,
    "bounce": EventType.BOUNCE,
    "out_of_band": EventType.BOUNCE,
    "policy_rejection": EventType.DROPPED,
    "spam_complaint": EventType.COMPLAINT,
    "list_unsubscribe": EventType.UNSUBSCRIBE,
    "link_unsubscribe": EventType.UNSUBSCRIBE,
    "open": EventType.OPEN,
    "initial_open": EventType.OPEN,
    "click": EventType.CLICK,
}
_CLASSES = ("message_event", "track_event", "unsubscribe_event")

SETUP = (
    "SparkPost: Configuration > Webhooks > New Webhook.\n"
    "  Target URL: the URL above. Events: Delivery, Delay, Bounce, Out of Band,\n"
    "  Policy Rejection, Spam Complaint, List Unsubscribe, Link Unsubscribe (Open and\n"
    "  Click if you track them). Authentication: Basic Auth; choose a user name and a\n"
    "  long random password, then run:\n"
    "  relay provider edit NAME --webhook-key USER:PASSWORD"
)


def check_key(key: str) -> None:
    user, sep, password = key.partition(":")
    if not sep or not user or not password:
        raise Invalid("the SparkPost webhook key must be USER:PASSWORD", "webhook_key")


def authenticate(key: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """HTTP basic auth (RFC 7617) against ``USER:PASSWORD``, compared in constant time."""
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise WebhookRefused("basic authentication required", 401)
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise WebhookRefused("malformed basic authentication", 401) from None
    if not hmac.compare_digest(given, key.encode("utf-8")):
        raise WebhookRefused("wrong user name or password")


def batch_id(headers: Mapping[str, str]) -> str | None:
    return headers.get(BATCH_ID) or None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _time(value: Any) -> dt.datetime:
    """SparkPost's timestamps: Unix seconds as a string, or ISO 8601 in newer payloads."""
    seconds = _int(value)
    if seconds is not None:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    if isinstance(value, str):
        try:
            at = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        except ValueError:
            pass
    return dt.datetime.now(dt.UTC)


def _event(body: Mapping[str, Any]) -> ProviderEvent | None:
    kind = _TYPES.get(str(body.get("type", "")))
    event_id, address = body.get("event_id"), body.get("rcpt_to")
    if kind is None or not isinstance(event_id, str) or not isinstance(address, str):
        return None
    meta: dict[str, Any] = {}
    for key in ("metadata", "rcpt_meta"):
        if isinstance(body.get(key), dict):
            meta.update(body[key])
    bounce = None
    if kind is EventType.BOUNCE:
        hard = _int(body.get("bounce_class")) in HARD_BOUNCE_CLASSES
        bounce = BounceClass.HARD if hard else BounceClass.SOFT
    detail = body.get("raw_reason") or body.get("reason") or body.get("fbtype")
    detail = detail or body.get("target_link_url")
    message_id = meta.get("relay_message_id")
    return ProviderEvent(
        provider_event_id=event_id[:200],
        type=kind,
        address=address,
        at=_time(body.get("timestamp")),
        message_id=message_id if isinstance(message_id, str) else None,
        recipient_id=_int(meta.get("relay_recipient_id")),
        bounce_class=bounce,
        detail=str(detail)[:2000] if detail else None,
    )


def parse_events(body: bytes) -> list[ProviderEvent]:
    """The events of one batch; classes and types Relay does not act on are skipped."""
    items = json_array(body)
    events: list[ProviderEvent] = []
    for item in items:
        msys = item.get("msys") if isinstance(item, dict) else None
        if not isinstance(msys, dict):
            continue
        for cls in _CLASSES:
            if isinstance(msys.get(cls), dict):
                event = _event(msys[cls])
                if event is not None:
                    events.append(event)
    return events
