"""Mailgun's webhooks: the signature and the event, read into ``ProviderEvent``.

Mailgun posts one event per request, JSON
``{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}``.
The signature is the hex HMAC-SHA256, keyed with the account's HTTP webhook
signing key, of the timestamp followed by the token
(https://documentation.mailgun.com/docs/mailgun/user-manual/tracking-messages/#securing-webhooks).
We compare it in constant time and refuse a timestamp more than five minutes
off, so a captured request cannot be played later; within those minutes a
replay is the same ``event-data.id`` again, which the events table takes once.

Events (``event-data.event``) and what they are to Relay::

    delivered                        DELIVERED
    failed, severity permanent       BOUNCE: hard when Mailgun's reason is
                                     "bounce" (the address is bad), else soft
                                     (generic, old, espblock: the message, not
                                     the address); DROPPED when Mailgun did not
                                     send it for its own suppression list
                                     (reason suppress-bounce/-complaint/-unsubscribe)
    failed, severity temporary       DEFERRED: Mailgun is still trying
    rejected                         DROPPED: Mailgun would not take it
    complained                       COMPLAINT
    unsubscribed                     UNSUBSCRIBE
    opened, clicked                  OPEN, CLICK
    accepted                         skipped: Mailgun queued it, nothing to act on

Relay's ids come back in ``event-data.user-variables`` (``v:`` fields of the
API, ``X-Mailgun-Variables`` on SMTP).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from relay.core.errors import Invalid, WebhookRefused
from relay.core.events import BounceClass, EventType, ProviderEvent

# A signed request older (or newer) than this is a replay, not a retry.
MAX_SKEW = 300.0
KEY_MIN = 16

_TYPES: dict[str, EventType] = {
    "delivered": EventType.DELIVERED,
    "rejected": EventType.DROPPED,
    "complained": EventType.COMPLAINT,
    "unsubscribed": EventType.UNSUBSCRIBE,
    "opened": EventType.OPEN,
    "clicked": EventType.CLICK,
}
_SUPPRESSED = frozenset({"suppress-bounce", "suppress-complaint", "suppress-unsubscribe"})

SETUP = (
    "Mailgun: Sending > Webhooks (choose the sending domain, and the region of the\n"
    "  account: US or EU). Add webhook for each event: Delivered messages, Permanent\n"
    "  failure, Temporary failure, Spam complaints, Unsubscribes (Opens and Clicks if\n"
    "  you track them); URL: the URL above. Then under Sending > Webhooks (or Settings >\n"
    "  API Security), copy the HTTP webhook signing key and run:\n"
    "  relay provider edit NAME --webhook-key SIGNING_KEY"
)


def check_key(key: str) -> None:
    """The HTTP webhook signing key as Mailgun shows it: one word, not short."""
    if len(key.strip()) < KEY_MIN or any(c.isspace() for c in key.strip()):
        raise Invalid(
            "the Mailgun webhook key must be the HTTP webhook signing key as Mailgun shows it",
            "webhook_key",
        )


def signature(key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256 of timestamp + token under the signing key."""
    digest = hmac.new(key.strip().encode(), (timestamp + token).encode(), hashlib.sha256)
    return digest.hexdigest()


def _body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the body is not JSON", "body") from None
    if not isinstance(data, dict):
        raise Invalid("the body is not a Mailgun webhook object", "body")
    return data


def authenticate(key: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Verify the signature in the body and refuse a timestamp more than five minutes off."""
    try:
        signed = _body(body).get("signature")
    except Invalid:
        signed = None
    if not isinstance(signed, dict):
        raise WebhookRefused("the request is not signed", 401)
    timestamp, token, given = (signed.get(k) for k in ("timestamp", "token", "signature"))
    if not all(isinstance(v, (str, int)) and str(v) for v in (timestamp, token, given)):
        raise WebhookRefused("the request is not signed", 401)
    try:
        sent = float(str(timestamp))
    except ValueError:
        raise WebhookRefused("malformed signature timestamp", 401) from None
    if abs(now - sent) > MAX_SKEW:
        raise WebhookRefused("the signature's timestamp is stale")
    expected = signature(key, str(timestamp), str(token))
    if not hmac.compare_digest(expected.encode(), str(given).encode()):
        raise WebhookRefused("the signature does not verify")


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _type(data: Mapping[str, Any]) -> tuple[EventType, BounceClass | None] | None:
    name = str(data.get("event", ""))
    if name in _TYPES:
        return _TYPES[name], None
    if name != "failed":
        return None
    if data.get("severity") == "temporary":
        return EventType.DEFERRED, None
    reason = str(data.get("reason") or "")
    if reason in _SUPPRESSED:
        return EventType.DROPPED, None
    return EventType.BOUNCE, BounceClass.HARD if reason == "bounce" else BounceClass.SOFT


def _time(value: Any) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (TypeError, ValueError, OverflowError):
        return dt.datetime.now(dt.UTC)


def _detail(data: Mapping[str, Any]) -> str | None:
    status = data.get("delivery-status")
    if isinstance(status, dict):
        words = status.get("description") or status.get("message")
        if words:
            code = status.get("code")
            return f"{code} {words}" if code else str(words)
    for key in ("reason", "url"):
        if data.get(key):
            return str(data[key])
    return None


def _event(data: Mapping[str, Any]) -> ProviderEvent | None:
    kind = _type(data)
    event_id, address = data.get("id"), data.get("recipient")
    if kind is None or not isinstance(event_id, str) or not isinstance(address, str):
        return None
    variables = data.get("user-variables")
    variables = variables if isinstance(variables, dict) else {}
    message_id = variables.get("relay_message_id")
    detail = _detail(data)
    return ProviderEvent(
        provider_event_id=event_id[:200],
        type=kind[0],
        address=address,
        at=_time(data.get("timestamp")),
        message_id=message_id if isinstance(message_id, str) else None,
        recipient_id=_int(variables.get("relay_recipient_id")),
        bounce_class=kind[1],
        detail=detail[:2000] if detail else None,
    )


def parse_events(body: bytes) -> list[ProviderEvent]:
    """The event of one request (Mailgun posts them one by one); unknown kinds: none."""
    data = _body(body).get("event-data")
    if not isinstance(data, dict):
        raise Invalid("the body has no event-data object", "event-data")
    event = _event(data)
    return [event] if event is not None else []
