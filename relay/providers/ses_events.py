"""Amazon SES events through Amazon SNS: signed posts, verified, read into ``ProviderEvent``.

SES publishes a configuration set's events (or an identity's notifications)
to an SNS topic; an HTTPS subscription of the topic posts each one to the
webhook URL as JSON with ``Type``:

* ``SubscriptionConfirmation``: verified, then Relay GETs its ``SubscribeURL``
  (https://docs.aws.amazon.com/sns/latest/dg/SendMessageToHttp.prepare.html);
* ``Notification``: verified, its ``Message`` is the SES event JSON
  (https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html);
* ``UnsubscribeConfirmation``: verified and acknowledged, nothing stored.

Verification (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html):
the canonical string is ``Name\\nvalue\\n`` for the fields of the type, in
order; ``SignatureVersion`` 1 signs it with RSA PKCS#1 v1.5 over SHA1, 2 over
SHA256, with the key of the X.509 certificate at ``SigningCertURL``. That URL
(and a ``SubscribeURL``) must be https on ``sns.<region>.amazonaws.com`` (or
``.amazonaws.com.cn``) and in the topic's region; anything else is refused
before any request, so a forged post cannot make Relay fetch another host.
Certificates are cached by URL. The ``webhook_key`` of an SES provider is the
topic's ARN: a post from any other topic is refused.

Ids: Relay's message id rides in the message's tags (``mail.tags``, lists of
strings); the event's recipient address is matched within that message by
``relay.webhooks.store``. The SES event id is the SNS ``MessageId`` with the
address, as one notification may name several recipients. Opens, clicks
and unsubscribes name no recipient: they count only for a one-recipient message.

Tests run the whole path on loopback with their own CA: :func:`trust_for_tests`
allows one ``host:port`` over https verified by that CA. It is test-only;
production code never calls it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import ssl
from collections.abc import Mapping
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.core.errors import Invalid, WebhookRefused
from relay.core.events import BounceClass, EventType, ProviderEvent
from relay.core.message import MESSAGE_ID_KEY, RECIPIENT_ID_KEY

# arn:aws:sns:us-east-1:123456789012:relay-events (aws-cn, aws-us-gov partitions too)
TOPIC_ARN = re.compile(
    r"^arn:aws(?:-cn|-us-gov)?:sns:([a-z0-9-]+):(\d{12}):([A-Za-z0-9_-]{1,256})$"
)
_SNS_HOST = re.compile(r"^sns\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
FETCH_TIMEOUT = 10.0
MAX_CERT_BYTES = 64 * 1024
_CACHE_SIZE = 32

_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]

SETUP = (
    "Amazon SES (events through Amazon SNS):\n"
    "  1. SNS console > Topics > Create topic (Standard), e.g. relay-events, in the\n"
    "     provider's region. Copy its ARN, then run:\n"
    "     relay provider edit NAME --webhook-key TOPIC_ARN\n"
    "  2. In the topic: Create subscription, protocol HTTPS, endpoint: the URL above,\n"
    "     raw message delivery off. Relay confirms the subscription by itself.\n"
    "  3. SES console > Configuration sets > the set named by --configuration-set >\n"
    "     Event destinations > Add destination: Send, Rendering failure, Reject,\n"
    "     Delivery, Hard bounce, Complaint, Delivery delay, Subscription (Open and\n"
    "     Click if you track them); destination type Amazon SNS, the topic above."
)

# Test-only: (host:port) -> the context that verifies its certificate.
_test_hosts: dict[str, ssl.SSLContext] = {}
_certificates: dict[str, rsa.RSAPublicKey] = {}


def trust_for_tests(host_port: str, context: ssl.SSLContext | None) -> None:
    """Allow certificate and subscription URLs on ``host:port`` (loopback tests only);
    ``None`` withdraws it and forgets the certificates fetched from there."""
    if context is None:
        _test_hosts.pop(host_port, None)
        for url in [u for u in _certificates if httpx.URL(u).netloc.decode() == host_port]:
            del _certificates[url]
        return
    _test_hosts[host_port] = context


def check_key(key: str) -> None:
    if not TOPIC_ARN.match(key.strip()):
        raise Invalid(
            "the Amazon SES webhook key is the SNS topic's ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)",
            "webhook_key",
        )


def _document(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the body is not JSON", "body") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Type"), str):
        raise Invalid("the body is not an Amazon SNS message", "body")
    return doc


def _signed_document(body: bytes) -> dict[str, Any]:
    """The SNS document, or 401 when it is not one (no signature to check)."""
    try:
        doc = _document(body)
    except Invalid as exc:
        raise WebhookRefused(f"not a signed Amazon SNS message: {exc}", 401) from None
    if doc["Type"] not in _SIGNED_FIELDS or not doc.get("Signature"):
        raise WebhookRefused("not a signed Amazon SNS message", 401)
    return doc


def _topic_region(key: str, doc: Mapping[str, Any]) -> str:
    """The topic's region, once the post is shown to come from the provider's topic."""
    if doc.get("TopicArn") != key.strip():
        raise WebhookRefused("the message is from another SNS topic")
    match = TOPIC_ARN.match(key.strip())
    if match is None:
        raise WebhookRefused("the provider's webhook key is not a topic ARN")
    return match.group(1)


def _trusted_url(url: Any, region: str) -> tuple[str, ssl.SSLContext | bool]:
    """``url`` if Relay may fetch it: https on SNS in the topic's region (or a test host)."""
    if not isinstance(url, str):
        raise WebhookRefused("the message names no URL to fetch")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise WebhookRefused("the message's URL is not a URL") from None
    if parsed.scheme != "https":
        raise WebhookRefused(f"refusing to fetch {url!r}: not https")
    test = _test_hosts.get(f"{parsed.host}:{parsed.port}")
    if test is not None:
        return url, test
    match = _SNS_HOST.match(parsed.host)
    if match is None or parsed.port not in (None, 443) or match.group(1) != region:
        raise WebhookRefused(f"refusing to fetch {url!r}: not Amazon SNS in {region}")
    return url, True


async def _get(url: str, verify: ssl.SSLContext | bool) -> bytes:
    try:
        async with httpx.AsyncClient(verify=verify, timeout=FETCH_TIMEOUT, trust_env=False) as http:
            response = await http.get(url, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise WebhookRefused(f"could not fetch {url}: {type(exc).__name__}", 503) from exc
    if response.status_code != 200:
        raise WebhookRefused(f"{url} answered {response.status_code}", 503)
    return response.content[:MAX_CERT_BYTES]


async def _certificate(url: str, region: str) -> rsa.RSAPublicKey:
    if url in _certificates:
        return _certificates[url]
    target, verify = _trusted_url(url, region)
    pem = await _get(target, verify)
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        raise WebhookRefused("the signing certificate is not a PEM certificate") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise WebhookRefused("the signing certificate's key is not RSA")
    if len(_certificates) >= _CACHE_SIZE:
        _certificates.pop(next(iter(_certificates)))
    _certificates[url] = key
    return key


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The string SNS signs: ``Name\\nvalue\\n`` for each field of the type present, in order."""
    lines = []
    for name in _SIGNED_FIELDS[doc["Type"]]:
        if name in doc and doc[name] is not None:
            lines.append(f"{name}\n{doc[name]}\n")
    return "".join(lines).encode("utf-8")


def verify(doc: Mapping[str, Any], key: rsa.RSAPublicKey) -> None:
    """The document's signature holds under ``key`` (SignatureVersion 1: SHA1, 2: SHA256)."""
    algorithm: hashes.HashAlgorithm
    version = str(doc.get("SignatureVersion", ""))
    if version == "1":
        algorithm = hashes.SHA1()
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        raise WebhookRefused(f"unknown SignatureVersion {version!r}")
    try:
        signature = base64.b64decode(str(doc.get("Signature", "")), validate=True)
        key.verify(signature, canonical(doc), padding.PKCS1v15(), algorithm)
    except (InvalidSignature, binascii.Error, ValueError):
        raise WebhookRefused("the SNS signature does not verify") from None


async def receive(key: str, headers: Mapping[str, str], body: bytes) -> str | None:
    """Fetch the signing certificate (once); confirm a subscription; None for events.

    The certificate then sits in the cache that :func:`authenticate` reads.
    """
    doc = _signed_document(body)
    region = _topic_region(key, doc)
    public = await _certificate(str(doc.get("SigningCertURL")), region)
    verify(doc, public)
    if doc["Type"] == "SubscriptionConfirmation":
        target, trust = _trusted_url(doc.get("SubscribeURL"), region)
        await _get(target, trust)
        return f"subscription to {doc['TopicArn']} confirmed"
    if doc["Type"] == "UnsubscribeConfirmation":
        return f"unsubscribed from {doc['TopicArn']}"
    return None


def authenticate(key: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """The post is from the provider's topic and signed by SNS (certificate from ``receive``)."""
    doc = _signed_document(body)
    region = _topic_region(key, doc)
    url = str(doc.get("SigningCertURL"))
    _trusted_url(url, region)
    public = _certificates.get(url)
    if public is None:
        raise WebhookRefused("the signing certificate was not fetched")
    verify(doc, public)


def _time(value: Any) -> dt.datetime:
    if isinstance(value, str):
        try:
            at = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        except ValueError:
            pass
    return dt.datetime.now(dt.UTC)


def _mail(event: Mapping[str, Any]) -> dict[str, Any]:
    mail = event.get("mail")
    return mail if isinstance(mail, dict) else {}


def _tag(mail: Mapping[str, Any], name: str) -> str | None:
    tags = mail.get("tags")
    values = tags.get(name) if isinstance(tags, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return values if isinstance(values, str) else None


def _addresses(items: Any, key: str = "emailAddress") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get(key), str):
            out.append((item[key], item))
        elif isinstance(item, str):
            out.append((item, {}))
    return out


def _only_recipient(mail: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    destination = _addresses(mail.get("destination"))
    return destination if len(destination) == 1 else []


def _ses_event(event: Mapping[str, Any]) -> list[tuple[EventType, str, dict[str, Any], Any]]:
    """(type, address, per-recipient detail, the type's object) for each recipient named."""
    name = str(event.get("eventType") or event.get("notificationType") or "")
    mail = _mail(event)
    part = event.get(name[:1].lower() + name[1:]) if name else None
    part = part if isinstance(part, dict) else {}
    out: list[tuple[EventType, str, dict[str, Any], Any]] = []
    if name == "Bounce":
        rows = _addresses(part.get("bouncedRecipients"))
        out = [(EventType.BOUNCE, a, d, part) for a, d in rows]
    elif name == "Complaint":
        rows = _addresses(part.get("complainedRecipients"))
        out = [(EventType.COMPLAINT, a, d, part) for a, d in rows]
    elif name == "Delivery":
        out = [(EventType.DELIVERED, a, d, part) for a, d in _addresses(part.get("recipients"))]
    elif name == "DeliveryDelay":
        rows = _addresses(part.get("delayedRecipients"))
        out = [(EventType.DEFERRED, a, d, part) for a, d in rows]
    elif name == "Reject":
        rows = _addresses(mail.get("destination"))
        out = [(EventType.DROPPED, a, d, part) for a, d in rows]
    elif name in ("Open", "Click", "Subscription"):
        kind = {
            "Open": EventType.OPEN,
            "Click": EventType.CLICK,
            "Subscription": EventType.UNSUBSCRIBE,
        }[name]
        out = [(kind, a, d, part) for a, d in _only_recipient(mail)]
    return out


def _detail(kind: EventType, item: Mapping[str, Any], part: Mapping[str, Any]) -> str | None:
    words = (
        item.get("diagnosticCode")
        or item.get("status")
        or part.get("smtpResponse")
        or part.get("reason")
        or part.get("complaintFeedbackType")
        or part.get("delayType")
        or part.get("link")
    )
    if kind is EventType.BOUNCE and part.get("bounceType"):
        prefix = f"{part['bounceType']}/{part.get('bounceSubType', '')}"
        words = f"{prefix}: {words}" if words else prefix
    return str(words)[:2000] if words else None


def _recipient_id(mail: Mapping[str, Any]) -> int | None:
    value = _tag(mail, RECIPIENT_ID_KEY)
    return int(value) if value and value.isdigit() else None


def parse_events(body: bytes) -> list[ProviderEvent]:
    """The events of one SNS notification (none for the other types)."""
    doc = _document(body)
    if doc["Type"] != "Notification":
        return []
    try:
        event = json.loads(str(doc.get("Message", "")))
    except ValueError:
        raise Invalid("the notification's Message is not JSON", "Message") from None
    if not isinstance(event, dict):
        raise Invalid("the notification's Message is not an SES event", "Message")
    mail = _mail(event)
    message_id = _tag(mail, MESSAGE_ID_KEY)
    recipient_id = _recipient_id(mail)
    sns_id = str(doc.get("MessageId") or "")
    events = []
    for kind, address, item, part in _ses_event(event):
        bounce = None
        if kind is EventType.BOUNCE:
            hard = part.get("bounceType") == "Permanent"
            bounce = BounceClass.HARD if hard else BounceClass.SOFT
        events.append(
            ProviderEvent(
                provider_event_id=f"{sns_id}:{address}"[:200],
                type=kind,
                address=address,
                at=_time(part.get("timestamp") or mail.get("timestamp") or doc.get("Timestamp")),
                message_id=message_id,
                recipient_id=recipient_id,
                bounce_class=bounce,
                detail=_detail(kind, item, part),
            )
        )
    return events
