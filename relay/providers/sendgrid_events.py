"""SendGrid's Event Webhook: its signature and its events, read into ``ProviderEvent``.

SendGrid posts a JSON array of events; with "Signed Event Webhook Requests"
on, each request carries ``X-Twilio-Email-Event-Webhook-Signature`` (base64
DER ECDSA-SHA256 over the timestamp header followed by the raw body) and
``X-Twilio-Email-Event-Webhook-Timestamp``, verified with the public key the
console shows (base64 DER). The ``sendgrid`` package's event-webhook helper
does the verification, as SendGrid documents
(https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features).
Custom args Relay sends with each delivery come back as top-level keys of
each event (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event).
"""

from __future__ import annotations

import binascii
import datetime as dt
from collections.abc import Mapping
from typing import Any

from relay.core.errors import Invalid, WebhookRefused
from relay.core.events import BounceClass, EventType, ProviderEvent
from relay.providers.kind import json_array

SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"
# A signed request older (or newer) than this is a replay, not a retry.
MAX_SKEW = 300.0

# SendGrid's event names and Relay's; ``processed`` and ``group_resubscribe``
# say nothing about a recipient that Relay acts on and are left out.
_TYPES: dict[str, EventType] = {
    "delivered": EventType.DELIVERED,
    "deferred": EventType.DEFERRED,
    "bounce": EventType.BOUNCE,
    "dropped": EventType.DROPPED,
    "spamreport": EventType.COMPLAINT,
    "unsubscribe": EventType.UNSUBSCRIBE,
    "group_unsubscribe": EventType.UNSUBSCRIBE,
    "open": EventType.OPEN,
    "click": EventType.CLICK,
}

SETUP = (
    "SendGrid: Settings > Mail Settings > Event Webhooks > Create new webhook.\n"
    "  Post URL: the URL above. Actions to be posted: Delivered, Deferred, Bounced,\n"
    "  Dropped, Spam Reports, Unsubscribes, Group Unsubscribes (Opens and Clicks if\n"
    "  you track them). Turn on Signed Event Webhook Requests under Security features,\n"
    "  copy the Verification Key it shows, then run:\n"
    "  relay provider edit NAME --webhook-key VERIFICATION_KEY"
)


def check_key(key: str) -> None:
    """The verification key as SendGrid shows it: base64 DER of an EC public key."""
    from sendgrid.helpers.eventwebhook import EventWebhook

    try:
        EventWebhook().convert_public_key_to_ecdsa(key.strip())
    except (ValueError, TypeError) as exc:
        raise Invalid(
            "the SendGrid webhook key must be the Verification Key as the console shows it",
            "webhook_key",
        ) from exc


def authenticate(key: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Verify the signature and refuse a timestamp more than five minutes off."""
    from sendgrid.helpers.eventwebhook import EventWebhook

    signature, timestamp = headers.get(SIGNATURE), headers.get(TIMESTAMP)
    if not signature or not timestamp:
        raise WebhookRefused("the request is not signed", 401)
    try:
        sent = float(timestamp)
        payload = body.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise WebhookRefused("malformed signature headers or body", 401) from None
    if abs(now - sent) > MAX_SKEW:
        raise WebhookRefused("the signature's timestamp is stale")
    helper = EventWebhook()
    try:
        public_key = helper.convert_public_key_to_ecdsa(key.strip())
        ok = helper.verify_signature(payload, signature, timestamp, public_key)
    except (ValueError, TypeError, binascii.Error):
        ok = False
    if not ok:
        raise WebhookRefused("the signature does not verify")


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _event(item: Mapping[str, Any]) -> ProviderEvent | None:
    kind = _TYPES.get(str(item.get("event", "")))
    event_id, address = item.get("sg_event_id"), item.get("email")
    if kind is None or not isinstance(event_id, str) or not isinstance(address, str):
        return None
    bounce = None
    if kind is EventType.BOUNCE:
        # type "bounce": the receiving server said the address is bad; "blocked":
        # it refused this message for now (reputation, content).
        bounce = BounceClass.SOFT if item.get("type") == "blocked" else BounceClass.HARD
    stamp = _int(item.get("timestamp"))
    at = dt.datetime.fromtimestamp(stamp, dt.UTC) if stamp is not None else dt.datetime.now(dt.UTC)
    detail = item.get("reason") or item.get("response") or item.get("url")
    message_id = item.get("relay_message_id")
    return ProviderEvent(
        provider_event_id=event_id[:200],
        type=kind,
        address=address,
        at=at,
        message_id=message_id if isinstance(message_id, str) else None,
        recipient_id=_int(item.get("relay_recipient_id")),
        bounce_class=bounce,
        detail=str(detail)[:2000] if detail else None,
    )


def parse_events(body: bytes) -> list[ProviderEvent]:
    """The events of one request (a JSON array); unknown kinds are skipped."""
    items = json_array(body)
    events = [_event(item) for item in items if isinstance(item, dict)]
    return [e for e in events if e is not None]
