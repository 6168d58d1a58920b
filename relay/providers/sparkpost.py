"""SparkPost: the Transmissions API (``POST /api/v1/transmissions``) and its SMTP relay.

The official ``sparkpost`` SDK (python-sparkpost) is not used: it is
synchronous (requests), so it would block the event loop or cost a thread per
send. We speak the documented HTTP through the shared ``httpx.AsyncClient``.

SparkPost takes the MIME as it is: ``content.email_rfc822`` holds the whole
message (and must be the only field of ``content``) with any Bcc header
removed; every envelope recipient is in ``recipients`` with ``header_to`` set
to the To header as written, so a Cc or Bcc recipient gets the same visible
headers as the To recipients. ``options.ip_pool`` carries the IP pool,
``campaign_id`` the campaign (cut to SparkPost's 64 bytes: it is a reporting
label, and a longer one would fail the message), substitutions are off so a
``{{`` in the message stays as written. Relay's ids ride in ``metadata``:
``relay_message_id`` for the transmission and, per recipient, both it and
``relay_recipient_id`` (so each event's ``rcpt_meta`` has both whether or not
SparkPost merges the transmission's metadata into it).
``options.open_tracking`` / ``click_tracking`` carry the account's tracking
settings when it has set them.

Statuses and SparkPost's error codes (``{"errors": [{"message", "code",
"description"}]}``) become our errors in :data:`SPARKPOST_STATUS`, refined by
:data:`SPARKPOST_CODES` (the codes of SparkPost's "Extended Error Codes")::

    200        accepted; results.total_rejected_recipients says how many were not
    400        PermanentError (1901/1902 generation failed or rejected, 5002 no
               valid recipient, 7000/7001 sending domain, 2008 sender address);
               but 1200/1305/1401 (our parameters) are PayloadRejected, and
               1502 (server resources unavailable) is TransientError
    401, 403   CredentialsError
    404        TransientError: api_url points nowhere (operator's fix)
    413        PermanentError: too large
    415, 422   PayloadRejected (1300 invalid data, 1301 field combination, 1400
               missing field, 3xxx MIME parsing, 10000 restricted header)
    420        TransientError: sending quota exhausted (hourly, or the sandbox's);
               it resets by itself, so the message waits rather than bounces
    429        TransientError, retry_after from Retry-After when given
    5xx        TransientError; so are timeouts and connection errors

A 200 can still reject recipients (suppression list, policy). SparkPost only
counts them, and does not say which:

* all rejected: ``PermanentError``, every recipient named with the count;
* some rejected: a receipt whose ``rejected`` has one entry under the key
  :data:`~relay.providers.chain.UNNAMED_RECIPIENTS` (``"*"``) saying how many
  of how many; the recipients themselves are taken as accepted (SparkPost's
  message events name them later).

A message that is not UTF-8 (8-bit bytes in another charset) cannot be a
JSON string without changing it: it raises ``PayloadRejected`` and goes by SMTP.

SMTP relay: smtp.sparkpostmail.com, 587 STARTTLS, AUTH LOGIN as
``SMTP_Injection`` with the API key, at most 100 messages a connection, the
campaign and IP pool in an ``X-MSYS-API`` header (SparkPost's SMTP API puts the
pool under ``options``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import orjson

from relay.core.errors import (
    CredentialsError,
    PayloadRejected,
    PermanentError,
    ProviderError,
    TransientError,
)
from relay.core.message import RECIPIENT_ID_KEY, OutboundMessage, split_header
from relay.providers import sparkpost_events
from relay.providers.base import Health, Receipt
from relay.providers.chain import UNNAMED_RECIPIENTS
from relay.providers.headers import has_field, header_field, without_bcc
from relay.providers.http import HttpApi
from relay.providers.kind import ProviderKind, SmtpRelay, Webhook

API_URL = "https://api.sparkpost.com"
EU_API_URL = "https://api.eu.sparkpost.com"
SMTP_HOST = "smtp.sparkpostmail.com"
SMTP_PORT = 587
SMTP_USER = "SMTP_Injection"
SMTP_MESSAGES_PER_CONNECTION = 100
CAMPAIGN_MAX_BYTES = 64

SPARKPOST_STATUS: dict[int, type[ProviderError] | None] = {
    200: None,
    400: PermanentError,
    401: CredentialsError,
    403: CredentialsError,
    404: TransientError,
    413: PermanentError,
    415: PayloadRejected,
    420: TransientError,
    422: PayloadRejected,
    429: TransientError,
}
SPARKPOST_CODES: dict[str, type[ProviderError]] = {
    "1200": PayloadRejected,  # invalid params
    "1305": PayloadRejected,  # input data not UTF-8 encoded
    "1401": PayloadRejected,  # required parameter missing
    "1502": TransientError,  # server resources unavailable: retry later
    "1900": TransientError,  # message generation module not available
}


def classify(status: int, code: str | None) -> type[ProviderError] | None:
    """The outcome of a transmissions response: status, then SparkPost's code."""
    if code in SPARKPOST_CODES and status >= 400:
        return SPARKPOST_CODES[code]
    if status in SPARKPOST_STATUS:
        return SPARKPOST_STATUS[status]
    if 200 <= status < 300:
        return None
    return PermanentError if 400 <= status < 500 else TransientError


def header_to(data: bytes) -> str | None:
    """The To field as written, unfolded; None when there is none."""
    head, _ = split_header(data)
    match = re.search(rb"(?im)^to[ \t]*:(.*(?:\r?\n[ \t].*)*)", head)
    if match is None:
        return None
    value = re.sub(rb"\r?\n(?=[ \t])", b"", match.group(1)).strip()
    return value.decode("utf-8", "replace") or None


def campaign_id(campaign: str) -> str:
    """The campaign cut to 64 bytes of UTF-8, on a character boundary."""
    return campaign.encode("utf-8")[:CAMPAIGN_MAX_BYTES].decode("utf-8", "ignore")


def transmission(message: OutboundMessage) -> dict[str, Any]:
    """The request body for one message."""
    try:
        rfc822 = without_bcc(message.data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejected(
            "the message is not UTF-8, so it cannot be a JSON string", transport="api"
        ) from exc
    to = header_to(message.data)
    options: dict[str, Any] = {"perform_substitutions": False}
    if message.ip_pool:
        options["ip_pool"] = message.ip_pool
    options.update(tracking_options(message))
    body: dict[str, Any] = {
        "recipients": [_recipient(message, address, to) for address, _ in message.recipients],
        "content": {"email_rfc822": rfc822},
        "options": options,
        "metadata": message.delivery_ids(),
    }
    if message.campaign:
        body["campaign_id"] = campaign_id(message.campaign)
    return body


def tracking_options(message: OutboundMessage) -> dict[str, bool]:
    """``options.open_tracking`` / ``click_tracking`` as the account set them.

    Unset (None) is left out: SparkPost's own account default applies.
    """
    out: dict[str, bool] = {}
    if message.open_tracking is not None:
        out["open_tracking"] = message.open_tracking
    if message.click_tracking is not None:
        out["click_tracking"] = message.click_tracking
    return out


def _recipient(message: OutboundMessage, address: str, to: str | None) -> dict[str, Any]:
    entry: dict[str, str] = {"email": address}
    if to:
        entry["header_to"] = to
    item: dict[str, Any] = {"address": entry}
    ids = message.delivery_ids([address])
    if RECIPIENT_ID_KEY in ids:
        # Both ids, not only the recipient's: rcpt_meta then holds them
        # whether or not SparkPost merges the transmission's metadata in.
        item["metadata"] = ids
    return item


def _errors(data: Any) -> list[dict[str, Any]]:
    errors = data.get("errors") if isinstance(data, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _error_text(status: int, errors: list[dict[str, Any]]) -> str:
    parts = [": ".join(str(e[k]) for k in ("message", "description") if e.get(k)) for e in errors]
    return "; ".join(p for p in parts if p) or f"HTTP {status}"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _results(message: OutboundMessage, results: dict[str, Any]) -> Receipt:
    rejected = int(results.get("total_rejected_recipients") or 0)
    accepted = int(results.get("total_accepted_recipients") or 0)
    ident = str(results["id"]) if results.get("id") is not None else None
    if not rejected:
        return Receipt("api", ident, f"accepted {accepted} recipients")
    text = f"SparkPost rejected {rejected} of {rejected + accepted} recipients"
    if not accepted:
        raise PermanentError(
            text, 200, transport="api", recipients={a: text for a, _ in message.recipients}
        )
    note = f"{text} (it does not say which; see its message events)"
    return Receipt("api", ident, note, rejected={UNNAMED_RECIPIENTS: note})


class SparkPostApi(HttpApi):
    """The API leg of a SparkPost provider."""

    label = "SparkPost"
    default_url = API_URL

    def _headers(self) -> dict[str, str]:
        # SparkPost takes the bare key, no "Bearer" (API reference, "Authentication").
        return {"Authorization": self._key.reveal(), "Content-Type": "application/json"}

    async def send(self, message: OutboundMessage) -> Receipt:
        if not message.recipients:
            raise PermanentError("no recipients", transport="api")
        body = orjson.dumps(transmission(message))  # compact UTF-8, as json.dumps said it
        response = await self._request("POST", "/api/v1/transmissions", body)
        data = _json(response)
        errors = _errors(data)
        code = str(errors[0].get("code")) if errors and errors[0].get("code") else None
        cls = classify(response.status_code, code)
        if cls is None:
            results = data.get("results") if isinstance(data, dict) else None
            return _results(message, results if isinstance(results, dict) else {})
        raise cls(
            _error_text(response.status_code, errors),
            f"{response.status_code}/{code}" if code else response.status_code,
            transport="api",
            retry_after=_retry_after(response) if response.status_code == 429 else None,
        )

    async def check(self) -> Health:
        """The key is valid. A 403 means valid but without Account read: fine for sending."""
        try:
            response = await self._request("GET", "/api/v1/account")
        except ProviderError as exc:
            return Health(False, str(exc))
        if response.status_code == 200:
            return Health(True, f"{self.api_url}: key accepted")
        if response.status_code == 403:
            return Health(True, f"{self.api_url}: key accepted (no Account read permission)")
        text = _error_text(response.status_code, _errors(_json(response)))
        return Health(False, f"{response.status_code} {text}")


def msys_api_header(message: OutboundMessage) -> bytes:
    """SparkPost's X-MSYS-API field (SMTP API): ids, campaign, IP pool, tracking.

    The metadata applies to every recipient (no per-recipient metadata on SMTP):
    the recipient id only when there is one recipient.
    """
    rcpts = [a for a, _ in message.recipients]
    value: dict[str, Any] = {"metadata": message.delivery_ids(rcpts)}
    if message.campaign:
        value["campaign_id"] = campaign_id(message.campaign)
    options: dict[str, Any] = tracking_options(message)
    if message.ip_pool:
        options["ip_pool"] = message.ip_pool
    if options:
        value["options"] = options
    return header_field("X-MSYS-API", json.dumps(value))


def prepare_smtp(message: OutboundMessage) -> bytes:
    """The bytes for SparkPost's SMTP relay: X-MSYS-API on top (unless the client
    wrote its own, which wins), Bcc removed."""
    data = without_bcc(message.data)
    return data if has_field(data, "X-MSYS-API") else msys_api_header(message) + data


KIND = ProviderKind(
    "sparkpost",
    api=SparkPostApi,
    api_url=API_URL,
    smtp=SmtpRelay(
        SMTP_HOST,
        SMTP_PORT,
        SMTP_USER,
        auth_mechanism="login",
        messages_per_connection=SMTP_MESSAGES_PER_CONNECTION,
        prepare=prepare_smtp,
    ),
    statuses=SPARKPOST_STATUS,
    webhook=Webhook(
        sparkpost_events.authenticate,
        sparkpost_events.parse_events,
        sparkpost_events.check_key,
        sparkpost_events.SETUP,
        sparkpost_events.batch_id,
    ),
)
