"""SendGrid: the v3 Web API (``POST /v3/mail/send``) and its SMTP relay.

The official ``sendgrid`` SDK is not used: it is synchronous (python-http-client
over urllib), so on the event loop it would block every other delivery, or
cost a thread per send. We speak the documented HTTP through the shared
``httpx.AsyncClient`` instead; the JSON comes from :mod:`relay.providers.sendgrid_json`.

Statuses of mail/send and what they become (:data:`SENDGRID_STATUS`, refined
by :func:`classify`)::

    200, 202   accepted (200: sandbox mode); X-Message-Id is the message id
    400        PayloadRejected: the API refused our JSON -> SMTP may carry it;
               but when every error names a sender or recipient address field
               (``from.email``, ``personalizations.0.to.1.email``) it is that
               address that is refused: PermanentError, no fallback
    401        CredentialsError
    403        CredentialsError (key lacks mail.send); but with field ``from``
               (no verified Sender Identity) PermanentError: the relay refuses it too
    404        TransientError: api_url points nowhere (operator's fix)
    413        PermanentError: too large
    415        PayloadRejected
    429        TransientError, retry_after from X-RateLimit-Reset (epoch seconds)
    other 4xx  PermanentError
    5xx        TransientError; so are timeouts and connection errors

A message over 1000 recipients goes as several requests. If a later request
fails after an earlier one was accepted, the message cannot be failed or
retried whole (some recipients have it): the receipt names the recipients not
sent in ``rejected`` with ``permanent=False`` so the worker retries only them.

SMTP relay: smtp.sendgrid.net, 587 STARTTLS (465 implicit TLS), user
``apikey``, the API key as password. The message goes as received plus an
``X-SMTPAPI`` header carrying the IP pool, categories, Relay's ids
(``unique_args``, returned in the events as the API's ``custom_args`` are) and
the account's tracking settings (``filters.opentrack`` / ``filters.clicktrack``),
unless the client wrote its own ``X-SMTPAPI``, which then wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from typing import Any

import httpx

from relay.core.errors import (
    CredentialsError,
    PayloadRejected,
    PermanentError,
    ProviderError,
    TransientError,
)
from relay.core.message import MalformedMessage, OutboundMessage, parse
from relay.providers import sendgrid_events, sendgrid_json
from relay.providers.base import Health, Receipt
from relay.providers.headers import has_field, header_field
from relay.providers.http import HttpApi
from relay.providers.kind import ProviderKind, SmtpRelay, Webhook

API_URL = "https://api.sendgrid.com"
EU_API_URL = "https://api.eu.sendgrid.com"
SMTP_HOST = "smtp.sendgrid.net"
SMTP_PORT = 587
SMTP_USER = "apikey"

SENDGRID_STATUS: dict[int, type[ProviderError] | None] = {
    200: None,
    202: None,
    400: PayloadRejected,
    401: CredentialsError,
    403: CredentialsError,
    404: TransientError,
    413: PermanentError,
    415: PayloadRejected,
    429: TransientError,
}
_ADDRESS_FIELD = re.compile(r"^(?:from\.email|personalizations\.(\d+)\.(to|cc|bcc)\.(\d+)\.email)$")


def status_error(status: int) -> type[ProviderError] | None:
    """The table, with the classes of statuses it does not name."""
    if status in SENDGRID_STATUS:
        return SENDGRID_STATUS[status]
    if 200 <= status < 300:
        return None
    return PermanentError if 400 <= status < 500 else TransientError


def _errors(body: bytes) -> list[dict[str, Any]]:
    try:
        data = json.loads(body)
    except ValueError:
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _error_text(status: int, errors: list[dict[str, Any]], body: bytes) -> str:
    parts = [
        str(e.get("message") or "") + (f" ({e['field']})" if e.get("field") else "") for e in errors
    ]
    text = "; ".join(p for p in parts if p)
    return text or body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"


def classify(status: int, errors: list[dict[str, Any]]) -> type[ProviderError] | None:
    """The outcome of a mail/send response: the table, refined by the error fields."""
    cls = status_error(status)
    fields = [str(e.get("field") or "") for e in errors]
    if status == 400 and fields and all(_ADDRESS_FIELD.match(f) for f in fields):
        return PermanentError
    if status == 403 and "from" in fields:
        return PermanentError
    return cls


def _refused_addresses(payload: sendgrid_json.Json, errors: list[dict[str, Any]]) -> dict[str, str]:
    """The recipients a 400 names, found in the request by their field path."""
    out: dict[str, str] = {}
    for error in errors:
        match = _ADDRESS_FIELD.match(str(error.get("field") or ""))
        if match and match.group(1) is not None:
            item = payload["personalizations"][int(match.group(1))]
            entry = item[match.group(2)][int(match.group(3))]
            out[entry["email"]] = str(error.get("message") or "refused")
    return out


def _retry_after(response: httpx.Response) -> float | None:
    reset = response.headers.get("x-ratelimit-reset")
    try:
        return max(0.0, float(reset) - time.time()) if reset else None
    except ValueError:
        return None


class SendGridApi(HttpApi):
    """The API leg of a SendGrid provider."""

    label = "SendGrid"
    default_url = API_URL

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._key.reveal()}",
            "Content-Type": "application/json",
        }

    async def _post(self, payload: sendgrid_json.Json, body: bytes) -> str | None:
        response = await self._request("POST", "/v3/mail/send", body)
        errors = _errors(response.content)
        cls = classify(response.status_code, errors)
        if cls is None:
            message_id: str | None = response.headers.get("x-message-id")
            return message_id
        raise cls(
            _error_text(response.status_code, errors, response.content),
            response.status_code,
            transport="api",
            retry_after=_retry_after(response) if response.status_code == 429 else None,
            recipients=_refused_addresses(payload, errors),
        )

    async def send(self, message: OutboundMessage) -> Receipt:
        try:
            return await self._send_requests(message)
        except PermanentError as exc:
            rest = _without_refused(message, exc)
            if rest is None:
                raise
            refused = exc.recipients
        # SendGrid refuses the whole request for one bad address; SMTP would refuse
        # only that RCPT. Do as SMTP does: send to the others, report the refused.
        receipt = await self._send_requests(rest)
        permanent = receipt.permanent if receipt.rejected else True
        return dataclasses.replace(
            receipt, rejected={**refused, **receipt.rejected}, permanent=permanent
        )

    async def _send_requests(self, message: OutboundMessage) -> Receipt:
        payloads = sendgrid_json.convert(message)
        bodies = [sendgrid_json.encode(p) for p in payloads]  # every limit checked before any send
        ids: list[str] = []
        for index, (payload, body) in enumerate(zip(payloads, bodies, strict=True)):
            try:
                ids.append(await self._post(payload, body) or "")
            except ProviderError as exc:
                if index == 0:
                    raise
                return _unfinished(payloads[index:], exc, ids)
        text = f"accepted in {len(ids)} requests" if len(ids) > 1 else "accepted"
        return Receipt("api", ",".join(i for i in ids if i) or None, text)

    async def check(self) -> Health:
        """The key works and may send (its scopes include mail.send)."""
        try:
            response = await self._request("GET", "/v3/scopes")
        except ProviderError as exc:
            return Health(False, str(exc))
        if response.status_code != 200:
            errors = _errors(response.content)
            text = _error_text(response.status_code, errors, response.content)
            return Health(False, f"{response.status_code} {text}")
        try:
            scopes = response.json().get("scopes", [])
        except (ValueError, AttributeError):
            scopes = []
        if "mail.send" not in scopes:
            return Health(False, "the API key lacks the mail.send scope")
        return Health(True, f"{self.api_url}: key accepted")


def _without_refused(message: OutboundMessage, exc: PermanentError) -> OutboundMessage | None:
    """The message without the recipients a 400 refused, if any recipient is left."""
    if isinstance(exc, PayloadRejected) or not exc.recipients:
        return None
    rest = [(a, k) for a, k in message.recipients if a not in exc.recipients]
    if not rest or len(rest) == len(message.recipients):
        return None
    return dataclasses.replace(message, recipients=rest)


def _unfinished(rest: list[sendgrid_json.Json], exc: ProviderError, ids: list[str]) -> Receipt:
    reason = f"not sent: {exc}"
    rejected = {addr: reason for payload in rest for addr in sendgrid_json.recipients_of(payload)}
    return Receipt(
        "api",
        ",".join(i for i in ids if i) or None,
        f"accepted {len(ids)} requests, then: {exc}",
        rejected,
        permanent=False,
    )


def smtpapi_header(message: OutboundMessage) -> bytes:
    """SendGrid's X-SMTPAPI field: what the API would have taken as JSON fields.

    ``unique_args`` apply to the whole message (the SMTP leg has no
    per-recipient ones): the recipient id only when there is one recipient.
    """
    rcpts = [a for a, _ in message.recipients]
    value: dict[str, Any] = {"unique_args": message.delivery_ids(rcpts)}
    with contextlib.suppress(PermanentError, MalformedMessage):
        categories = sendgrid_json.categories(parse(message.data).headers)
        if categories:
            value["category"] = categories
    if message.ip_pool:
        value["ip_pool"] = message.ip_pool
    filters = smtpapi_filters(message)
    if filters:
        value["filters"] = filters
    return header_field("X-SMTPAPI", json.dumps(value))


def smtpapi_filters(message: OutboundMessage) -> dict[str, Any]:
    """X-SMTPAPI ``filters`` for the tracking the account set (SMTP API, "Filters")."""
    filters: dict[str, Any] = {}
    settings = (("opentrack", message.open_tracking), ("clicktrack", message.click_tracking))
    for name, enabled in settings:
        if enabled is not None:
            filters[name] = {"settings": {"enable": int(enabled)}}
    return filters


def prepare_smtp(message: OutboundMessage) -> bytes:
    """The bytes for SendGrid's SMTP relay: as received, plus X-SMTPAPI."""
    if has_field(message.data, "X-SMTPAPI"):
        return message.data
    return smtpapi_header(message) + message.data


KIND = ProviderKind(
    "sendgrid",
    api=SendGridApi,
    api_url=API_URL,
    smtp=SmtpRelay(SMTP_HOST, SMTP_PORT, SMTP_USER, prepare=prepare_smtp),
    statuses=SENDGRID_STATUS,
    webhook=Webhook(
        sendgrid_events.authenticate,
        sendgrid_events.parse_events,
        sendgrid_events.check_key,
        sendgrid_events.SETUP,
    ),
)
