"""The providers' event webhooks, played: after each accepted delivery, events are posted.

What happens to a recipient is chosen by its local part, so a test (or an
operator trying ``relay emulate``) picks the outcome by address:

* ``bounce+...@``: SendGrid ``bounce`` of ``type`` ``bounce`` (5.1.1);
  SparkPost ``bounce`` with ``bounce_class`` 10 (Invalid Recipient: hard).
* ``softbounce+...@``: SendGrid ``bounce`` of ``type`` ``blocked`` (4.2.2,
  its temporary refusal); SparkPost ``bounce`` with ``bounce_class`` 22
  (Mailbox Full: soft).
* ``complaint+...@``: ``delivered`` then ``spamreport`` (SendGrid);
  ``delivery`` then ``spam_complaint`` (SparkPost).
* ``unsubscribe+...@``: ``delivered`` then ``unsubscribe`` (SendGrid);
  ``delivery`` then ``list_unsubscribe``, an ``unsubscribe_event`` (SparkPost).
* anything else: ``delivered`` (SendGrid), ``delivery`` (SparkPost).

Mailgun, by the same tags: ``failed`` with ``severity`` ``permanent`` and
``reason`` ``bounce`` (550 5.1.1); ``failed`` ``temporary`` (452 4.2.2, it
retries) then ``failed`` ``permanent`` ``old`` (it gave up: a soft bounce);
``delivered`` then ``complained``; ``delivered`` then
``unsubscribed``; else ``delivered``. A recipient the emulated API was told
to suppress gets ``failed``, ``permanent``, reason ``suppress-bounce``.

(``bounce@``, without a tag, counts too.) A deferral is not a soft bounce:
SendGrid's ``deferred`` means it is still trying, so the soft bounce is its
``blocked`` bounce, as its Event Webhook reference describes.

SendGrid (Event Webhook reference, "Event Webhook Security"): one POST of a
JSON array per accepted delivery; each event has ``email``, ``timestamp``,
``event``, ``sg_event_id``, ``sg_message_id``, ``smtp-id``, the
``custom_args`` (API) or ``unique_args`` (X-SMTPAPI) as top-level keys, and
``category`` when the message has categories. Signed with an ECDSA P-256 key
pair made at start: ``X-Twilio-Email-Event-Webhook-Signature`` is base64 DER
ECDSA-SHA256 over the timestamp header's value followed by the body;
:attr:`EventPoster.sendgrid_public_key` is the public key as SendGrid's
console shows it (base64 DER SubjectPublicKeyInfo).

SparkPost (Webhooks, "Event structure"): one POST of a batch
``[{"msys": {"message_event": {...}}}, ...]`` per accepted delivery, basic
auth when set, ``X-MessageSystems-Batch-ID`` unique per batch; each event
with ``type``, ``event_id``, ``message_id``, ``transmission_id``,
``rcpt_to``, ``raw_rcpt_to``, ``rcpt_meta`` (transmission metadata merged
with the recipient's), ``rcpt_tags``, ``timestamp`` (epoch seconds, a
string), ``campaign_id``, and ``bounce_class`` / ``error_code`` /
``raw_reason`` for bounces.

Mailgun (Webhooks, "Securing webhooks"): one POST per event,
``{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}``,
the signature the hex HMAC-SHA256 of timestamp + token under
:attr:`EventPoster.mailgun_key`; ``event-data`` has ``id``, ``event``,
``timestamp`` (float seconds), ``recipient``, ``user-variables`` (the ``v:``
fields, or ``X-Mailgun-Variables`` on SMTP), ``message.headers.message-id``,
and ``severity`` / ``reason`` / ``delivery-status`` for failures.

Posting is a task on the emulator's loop with a bounded timeout; a failure
is recorded in :attr:`EventPoster.posted` and never touches the delivery.
:meth:`EventPoster.flush` waits for the posts under way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.emulator.smtp import SinkMessage

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
BATCH_HEADER = "X-MessageSystems-Batch-ID"
POST_TIMEOUT = 5.0
KINDS = ("sendgrid", "sparkpost", "mailgun")

# What happens to a recipient, by the local part's tag.
DELIVERED = "delivered"
BOUNCE = "bounce"
SOFT_BOUNCE = "softbounce"
COMPLAINT = "complaint"
UNSUBSCRIBE = "unsubscribe"
_FATES = (BOUNCE, SOFT_BOUNCE, COMPLAINT, UNSUBSCRIBE)


def fate(address: str) -> str:
    """What the emulated provider does with mail to ``address`` (see the table above)."""
    local = address.rpartition("@")[0].lower()
    tag = local.split("+", 1)[0]
    return tag if tag in _FATES else DELIVERED


@dataclass(frozen=True)
class Recipient:
    """One recipient of an accepted delivery and the ids its events carry back."""

    address: str
    args: Mapping[str, str]  # SendGrid custom/unique args, or SparkPost rcpt_meta


@dataclass
class Posted:
    """One POST the emulator made (the test's view of the webhook traffic)."""

    kind: str
    url: str
    events: list[Any]
    status: int = 0  # 0: no answer (refused, timed out)
    error: str = ""


@dataclass
class _Target:
    url: str
    auth: tuple[str, str] | None = None


def _now() -> int:
    return int(time.time())


def _event_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")


def sendgrid_events(
    recipients: Iterable[Recipient], message_id: str, categories: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """SendGrid's events for an accepted message, per recipient by its fate."""
    out: list[dict[str, Any]] = []
    for index, rcpt in enumerate(recipients):
        base: dict[str, Any] = {
            **{k: v for k, v in rcpt.args.items() if isinstance(v, str)},
            "email": rcpt.address,
            "timestamp": _now(),
            "smtp-id": f"<{message_id}@emulator.relay.invalid>",
            "sg_message_id": f"{message_id}.filterdrecv-{index}.0",
        }
        if categories:
            base["category"] = list(categories)
        kind = fate(rcpt.address)
        if kind == BOUNCE:
            events = [
                {
                    "event": "bounce",
                    "type": "bounce",
                    "status": "5.1.1",
                    "reason": "550 5.1.1 The email account that you tried to reach does not exist",
                    "bounce_classification": "Invalid Address",
                }
            ]
        elif kind == SOFT_BOUNCE:
            events = [
                {
                    "event": "bounce",
                    "type": "blocked",
                    "status": "4.2.2",
                    "reason": "452 4.2.2 The email account that you tried to reach is over quota",
                    "bounce_classification": "Mailbox Unavailable",
                }
            ]
        else:
            events = [{"event": "delivered", "response": "250 2.0.0 OK"}]
            if kind == COMPLAINT:
                events.append({"event": "spamreport"})
            elif kind == UNSUBSCRIBE:
                events.append({"event": "unsubscribe"})
        out += [{**base, **e, "sg_event_id": _event_id()} for e in events]
    return out


def sparkpost_events(
    recipients: Iterable[Recipient],
    transmission_id: str,
    *,
    campaign_id: str = "",
    mail_from: str = "",
) -> list[dict[str, Any]]:
    """SparkPost's batch for an accepted transmission, per recipient by its fate."""
    out: list[dict[str, Any]] = []
    message_id = secrets.token_hex(10)
    for rcpt in recipients:
        base: dict[str, Any] = {
            "event_id": str(secrets.randbits(63)),
            "message_id": message_id,
            "transmission_id": transmission_id,
            "rcpt_to": rcpt.address.lower(),
            "raw_rcpt_to": rcpt.address,
            "rcpt_meta": dict(rcpt.args),
            "rcpt_tags": [],
            "timestamp": str(_now()),
            "campaign_id": campaign_id,
            "customer_id": "1",
            "msg_from": mail_from,
        }
        kind = fate(rcpt.address)
        if kind in (BOUNCE, SOFT_BOUNCE):
            hard = kind == BOUNCE
            reason = (
                "550 5.1.1 <{}>: Recipient address rejected: User unknown"
                if hard
                else "452 4.2.2 <{}>: Mailbox full"
            ).format(rcpt.address)
            bounce = {
                "type": "bounce",
                "bounce_class": "10" if hard else "22",
                "error_code": reason[:3],
                "raw_reason": reason,
                "reason": reason,
            }
            out.append({"msys": {"message_event": {**base, **bounce}}})
            continue
        delivery = {"type": "delivery", "queue_time": "1", "num_retries": "0"}
        out.append({"msys": {"message_event": {**base, **delivery}}})
        if kind == COMPLAINT:
            complaint = {"type": "spam_complaint", "fbtype": "abuse", "report_by": "emulator"}
            out.append({"msys": {"message_event": {**base, **complaint, "event_id": _num()}}})
        elif kind == UNSUBSCRIBE:
            unsub = {"type": "list_unsubscribe", "mailfrom": mail_from}
            out.append({"msys": {"unsubscribe_event": {**base, **unsub, "event_id": _num()}}})
    return out


def _num() -> str:
    return str(secrets.randbits(63))


def mailgun_events(
    recipients: Iterable[Recipient], message_id: str, suppressed: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Mailgun's ``event-data`` for an accepted message, per recipient by its fate."""
    skip = {a.lower() for a in suppressed}
    out: list[dict[str, Any]] = []
    for rcpt in recipients:
        base: dict[str, Any] = {
            "timestamp": time.time(),
            "recipient": rcpt.address,
            "recipient-domain": rcpt.address.rpartition("@")[2],
            "user-variables": dict(rcpt.args),
            "message": {"headers": {"message-id": message_id.strip("<>")}},
            "tags": [],
        }
        kind = fate(rcpt.address)
        events: list[dict[str, Any]]
        if rcpt.address.lower() in skip:
            events = [{"event": "failed", "severity": "permanent", "reason": "suppress-bounce"}]
        elif kind == BOUNCE:
            status = {"code": 550, "message": "5.1.1 The email account does not exist"}
            events = [
                {"event": "failed", "severity": "permanent", "reason": "bounce",
                 "delivery-status": status},
            ]  # fmt: skip
        elif kind == SOFT_BOUNCE:  # Mailgun retries, then gives up ("old")
            status = {"code": 452, "message": "4.2.2 The email account is over quota"}
            events = [
                {"event": "failed", "severity": "temporary", "reason": "generic",
                 "delivery-status": status},
                {"event": "failed", "severity": "permanent", "reason": "old",
                 "delivery-status": status},
            ]  # fmt: skip
        else:
            events = [{"event": "delivered", "delivery-status": {"code": 250, "message": "OK"}}]
            if kind == COMPLAINT:
                events.append({"event": "complained"})
            elif kind == UNSUBSCRIBE:
                events.append({"event": "unsubscribed"})
        out += [{**base, **e, "id": _event_id()} for e in events]
    return out


def mailgun_signed(key: str, event_data: Mapping[str, Any]) -> dict[str, Any]:
    """One webhook body: the event and Mailgun's signature (now, a fresh token)."""
    timestamp, token = str(_now()), secrets.token_hex(25)
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    signature = {"timestamp": timestamp, "token": token, "signature": digest}
    return {"signature": signature, "event-data": dict(event_data)}


@dataclass
class EventPoster:
    """Where each provider kind posts its events, and the posts made so far."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()), repr=False
    )
    mailgun_key: str = field(default_factory=lambda: "key-" + secrets.token_hex(16), repr=False)
    posted: list[Posted] = field(default_factory=list)
    _targets: dict[str, _Target] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, repr=False)
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)  # where posts run

    @property
    def sendgrid_public_key(self) -> str:
        """The verification key as SendGrid's console shows it: base64 DER SubjectPublicKeyInfo."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")

    def set_url(self, kind: str, url: str | None, auth: tuple[str, str] | None = None) -> None:
        """Post ``kind``'s events to ``url`` (None: stop); ``auth`` is SparkPost's basic auth."""
        if kind not in KINDS:
            raise ValueError(f"no events for provider kind {kind!r}")
        if url is None:
            self._targets.pop(kind, None)
        else:
            self._targets[kind] = _Target(url, auth)

    def url(self, kind: str) -> str | None:
        target = self._targets.get(kind)
        return target.url if target else None

    def sign(self, timestamp: str, body: bytes) -> str:
        """SendGrid's signature: base64 DER ECDSA-SHA256 over timestamp + body."""
        der = self.key.sign(timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(der).decode("ascii")

    def sendgrid(self, recipients: Sequence[Recipient], message_id: str, **kw: Any) -> None:
        """Post the events of an accepted SendGrid message (if a URL is set)."""
        if "sendgrid" in self._targets and recipients:
            self._post("sendgrid", sendgrid_events(recipients, message_id, **kw))

    def sparkpost(self, recipients: Sequence[Recipient], transmission_id: str, **kw: Any) -> None:
        """Post the batch of an accepted SparkPost transmission (if a URL is set)."""
        if "sparkpost" in self._targets and recipients:
            self._post("sparkpost", sparkpost_events(recipients, transmission_id, **kw))

    def mailgun(
        self, recipients: Sequence[Recipient], message_id: str = "", suppressed: Iterable[str] = ()
    ) -> None:
        """Post the events of an accepted Mailgun message, one request each (if a URL is set)."""
        if "mailgun" not in self._targets:
            return
        mid = message_id or f"<{secrets.token_hex(8)}@emulator.relay.invalid>"
        for event in mailgun_events(recipients, mid, suppressed):
            self._post("mailgun", [event])

    def _post(self, kind: str, events: list[Any]) -> None:
        target = self._targets[kind]
        record = Posted(kind, target.url, events)
        self.posted.append(record)
        self.loop = asyncio.get_running_loop()
        task = self.loop.create_task(self._send(target, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _headers(self, kind: str, body: bytes, target: _Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"relay-emulator/{kind}"}
        if kind == "mailgun":
            pass  # signed in the body
        elif kind == "sendgrid":
            timestamp = str(_now())
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = self.sign(timestamp, body)
        else:
            headers[BATCH_HEADER] = secrets.token_hex(16)
            if target.auth is not None:
                token = base64.b64encode(":".join(target.auth).encode()).decode("ascii")
                headers["Authorization"] = f"Basic {token}"
        return headers

    async def _send(self, target: _Target, record: Posted) -> None:
        if record.kind == "mailgun":  # one event, the signature made as it is sent
            body = json.dumps(mailgun_signed(self.mailgun_key, record.events[0])).encode("ascii")
        else:
            body = json.dumps(record.events).encode("ascii")
        headers = self._headers(record.kind, body, target)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=POST_TIMEOUT)
        try:
            response = await self._client.post(target.url, content=body, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        else:
            record.status = response.status_code

    async def flush(self) -> None:
        """Wait until every post started so far has been answered (or has failed).

        Bounded: each post has its own :data:`POST_TIMEOUT`.
        """
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def sendgrid_recipients(body: Mapping[str, Any]) -> list[Recipient]:
    """Each recipient of an accepted mail/send body with its personalization's custom_args."""
    top = body.get("custom_args") if isinstance(body.get("custom_args"), dict) else {}
    out = []
    for p in body.get("personalizations") or []:
        args = {**(top or {}), **(p.get("custom_args") or {})}
        for kind in ("to", "cc", "bcc"):
            out += [Recipient(e["email"], args) for e in p.get(kind) or []]
    return out


def sparkpost_recipients(
    body: Mapping[str, Any], suppressed: Iterable[str] = ()
) -> list[Recipient]:
    """Each accepted recipient of a transmission, with its rcpt_meta (metadata merged)."""
    skip = {a.lower() for a in suppressed}
    top = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    out = []
    for item in body.get("recipients") or []:
        address = item.get("address")
        email = address.get("email") if isinstance(address, dict) else address
        if not isinstance(email, str) or email.lower() in skip:
            continue
        meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
        out.append(Recipient(email, {**(top or {}), **(meta or {})}))
    return out


def mailgun_recipients(form: Mapping[str, Any], message_id: str) -> list[Recipient]:
    """Each ``to`` of an accepted messages.mime form, with its ``v:`` user variables."""
    variables = {
        k[2:]: str(v[0])
        for k, v in form.items()
        if k.startswith("v:") and v and isinstance(v[0], str)
    }
    return [Recipient(str(to), variables) for to in form.get("to") or []]


def _api_header(data: bytes, name: str) -> dict[str, Any] | None:
    value = BytesHeaderParser(policy=SMTPUTF8).parsebytes(data).get(name)
    if value is None:
        return None
    try:
        parsed = json.loads(str(value))
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def smtp_delivery(poster: EventPoster, message: SinkMessage) -> None:
    """Events for a message the SMTP sink took, by the provider API header it carries.

    ``X-SMTPAPI`` (SendGrid): its ``unique_args`` are the events' top-level
    keys; ``X-MSYS-API`` (SparkPost): its ``metadata`` is each ``rcpt_meta``;
    ``X-Mailgun-Variables`` (Mailgun): each event's ``user-variables``.
    A message with neither (a plain SMTP provider) posts nothing.
    """
    smtpapi = _api_header(message.data, "x-smtpapi")
    if smtpapi is not None:
        args = smtpapi.get("unique_args")
        args = args if isinstance(args, dict) else {}
        category = smtpapi.get("category")
        categories = [category] if isinstance(category, str) else list(category or [])
        rcpts = [Recipient(a, args) for a in message.rcpt_tos]
        poster.sendgrid(rcpts, secrets.token_urlsafe(16), categories=categories)
        return
    variables = _api_header(message.data, "x-mailgun-variables")
    if variables is not None:
        args = {k: str(v) for k, v in variables.items()}
        poster.mailgun([Recipient(a, args) for a in message.rcpt_tos])
        return
    msys = _api_header(message.data, "x-msys-api")
    if msys is not None:
        meta = msys.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        rcpts = [Recipient(a, meta) for a in message.rcpt_tos]
        campaign = str(msys.get("campaign_id") or "")
        poster.sparkpost(
            rcpts, str(secrets.randbits(63)), campaign_id=campaign, mail_from=message.mail_from
        )
