"""Mailgun: the Messages API for MIME (``POST /v3/{domain}/messages.mime``) and its SMTP relay.

The official SDKs are not used (synchronous, and they build the message from
fields): we send the documented multipart form through the shared
``httpx.AsyncClient``. Mailgun takes the MIME as it is, so the ``message``
part is the message as received with its Bcc removed (Mailgun would show it
to everyone), and the envelope is the ``to`` fields: every recipient, To, Cc
and Bcc alike, one field each. The sending domain (``sending_domain``) is in
the path; the API key is HTTP basic auth as user ``api``
(https://documentation.mailgun.com/docs/mailgun/api-reference/authentication).

Options, as Mailgun names them ("Sending options": HTTP option / SMTP header)::

    o:tag                X-Mailgun-Tag               the campaign (ASCII, 128 chars)
    o:sending-ip-pool    X-Mailgun-Sending-Ip-Pool   the message's IP pool
    o:tracking-opens     X-Mailgun-Track-Opens       yes|no, the account's setting
    o:tracking-clicks    X-Mailgun-Track-Clicks      yes|no, the account's setting
    v:relay_message_id   X-Mailgun-Variables         Relay's ids, back as
    v:relay_recipient_id                             "user-variables" in events

Relay's ids are user variables of the whole message, as SendGrid's shared
personalization carries them: the message id always, the recipient id when
the message has one recipient; with several, the webhook matches the event's
recipient within the message. (``recipient-variables`` would give each
recipient its own, but it turns on batch sending: each recipient then sees
only their own address in To, which changes the message.)

Region: ``us`` (default) is api.mailgun.net and smtp.mailgun.org, ``eu`` is
api.eu.mailgun.net and smtp.eu.mailgun.org; ``api_url`` and ``smtp_host``
override them (the emulator).

Statuses and what they become (:data:`MAILGUN_STATUS`)::

    200        accepted; "id" is Mailgun's Message-Id
    400        PermanentError: Mailgun refused the message (a bad address, no From)
    401, 403   CredentialsError (wrong key; or the domain may not send:
               a sandbox's unauthorized recipient, a disabled account)
    404        CredentialsError: the sending domain is unknown to this key's
               account (or in the other region): the operator's fix
    413        PermanentError: too large (Mailgun takes 25 MB)
    429        TransientError, retry_after from Retry-After
    5xx        TransientError; so are timeouts and connection errors

SMTP relay: smtp.mailgun.org (smtp.eu.mailgun.org), 587 STARTTLS. Its
credentials are the domain's own (Sending > Domain settings > SMTP
credentials), not the API key: user ``smtp_user``, default
``postmaster@DOMAIN``, password ``smtp_password``. The bytes get the same
options as headers, Bcc removed, unless the client wrote its own.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import httpx

from relay.core.errors import (
    CredentialsError,
    Invalid,
    PermanentError,
    ProviderError,
    TransientError,
)
from relay.core.message import OutboundMessage
from relay.providers import mailgun_events
from relay.providers.base import Health, Receipt
from relay.providers.headers import has_field, header_field, without_bcc
from relay.providers.http import HttpApi
from relay.providers.kind import ProviderKind, SmtpRelay, Webhook

API_URL = "https://api.mailgun.net"
EU_API_URL = "https://api.eu.mailgun.net"
SMTP_HOST = "smtp.mailgun.org"
EU_SMTP_HOST = "smtp.eu.mailgun.org"
SMTP_PORT = 587
REGIONS = {"us": (API_URL, SMTP_HOST), "eu": (EU_API_URL, EU_SMTP_HOST)}
API_USER = "api"
TAG_MAX = 128  # "Tags are case insensitive and should be ascii only. Maximum tag length is 128"
VARIABLES_HEADER = "X-Mailgun-Variables"

MAILGUN_STATUS: dict[int, type[ProviderError] | None] = {
    200: None,
    400: PermanentError,
    401: CredentialsError,
    403: CredentialsError,
    404: CredentialsError,
    413: PermanentError,
    429: TransientError,
}


def classify(status: int) -> type[ProviderError] | None:
    """The table, with the classes of statuses it does not name."""
    if status in MAILGUN_STATUS:
        return MAILGUN_STATUS[status]
    if 200 <= status < 300:
        return None
    return PermanentError if 400 <= status < 500 else TransientError


def defaults(options: Mapping[str, Any]) -> dict[str, Any]:
    """The region's API URL and SMTP host, and the domain's SMTP user."""
    api_url, smtp_host = REGIONS.get(str(options.get("region") or "us"), REGIONS["us"])
    out: dict[str, Any] = {"api_url": api_url, "smtp_host": smtp_host}
    domain = options.get("sending_domain")
    if domain:
        out["smtp_user"] = f"postmaster@{domain}"
    return out


def check_row(options: Mapping[str, Any], secrets: Mapping[str, Any] | None) -> None:
    """A Mailgun row names its sending domain and a region Mailgun has."""
    region = options.get("region")
    if region is not None and region not in REGIONS:
        raise Invalid(f"region must be one of {', '.join(REGIONS)} for Mailgun", "region")
    domain = options.get("sending_domain")
    if not domain:
        raise Invalid(
            "a mailgun provider needs sending_domain (its domain in Mailgun)", "sending_domain"
        )
    if "/" in str(domain) or "." not in str(domain) or " " in str(domain):
        raise Invalid(f"sending_domain {domain!r} is not a domain name", "sending_domain")


def tag(campaign: str) -> str:
    """The campaign as a Mailgun tag: ASCII only, at most 128 characters."""
    return campaign.encode("ascii", "ignore").decode("ascii")[:TAG_MAX]


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def options_of(message: OutboundMessage) -> list[tuple[str, str]]:
    """The ``o:`` and ``v:`` fields of one message (the same for every recipient)."""
    fields: list[tuple[str, str]] = []
    if message.campaign and tag(message.campaign):
        fields.append(("o:tag", tag(message.campaign)))
    if message.ip_pool:
        fields.append(("o:sending-ip-pool", message.ip_pool))
    if message.open_tracking is not None:
        fields.append(("o:tracking-opens", _yes_no(message.open_tracking)))
    if message.click_tracking is not None:
        fields.append(("o:tracking-clicks", _yes_no(message.click_tracking)))
    ids = message.delivery_ids([a for a, _ in message.recipients])
    fields += [(f"v:{key}", value) for key, value in ids.items()]
    return fields


def form(message: OutboundMessage) -> tuple[bytes, str]:
    """The multipart/form-data body (RFC 7578) and its Content-Type for one message.

    httpx's own multipart encoder, through a request that is never sent: the
    body is then bytes, so the leg's one ``_request`` path (and its error
    translation) sends it like every other provider's.
    """
    data = [("to", address) for address, _ in message.recipients] + options_of(message)
    files = {"message": ("message.mime", without_bcc(message.data), "message/rfc822")}
    request = httpx.Request("POST", "http://mailgun.invalid/", data=_as_dict(data), files=files)
    return request.read(), request.headers["content-type"]


def _as_dict(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    """httpx takes repeated fields as lists, in order."""
    out: dict[str, list[str]] = {}
    for key, value in fields:
        out.setdefault(key, []).append(value)
    return out


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return response.text[:200].strip() or f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


class MailgunApi(HttpApi):
    """The API leg of a Mailgun provider."""

    label = "Mailgun"
    default_url = API_URL

    @property
    def domain(self) -> str:
        return str(self.options.get("sending_domain") or "")

    def _headers(self) -> dict[str, str]:
        # RFC 7617 basic auth, user "api", the key as password.
        token = base64.b64encode(f"{API_USER}:{self._key.reveal()}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    async def send(self, message: OutboundMessage) -> Receipt:
        if not message.recipients:
            raise PermanentError("no recipients", transport="api")
        body, content_type = form(message)
        path = f"/v3/{self.domain}/messages.mime"
        response = await self._request("POST", path, body, {"Content-Type": content_type})
        cls = classify(response.status_code)
        if cls is None:
            ident = _json_field(response, "id")
            return Receipt("api", ident, _message(response))
        text = _message(response)
        if response.status_code == 404:
            text = f"{text} (sending domain {self.domain} in {self.api_url})"
        raise cls(
            text,
            response.status_code,
            transport="api",
            retry_after=_retry_after(response) if response.status_code == 429 else None,
        )

    async def check(self) -> Health:
        """The key works and the sending domain is Mailgun's and may send (its state)."""
        try:
            response = await self._request("GET", f"/v4/domains/{self.domain}")
        except ProviderError as exc:
            return Health(False, str(exc))
        if response.status_code != 200:
            return Health(False, f"{response.status_code} {_message(response)}")
        try:
            domain = response.json().get("domain") or {}
        except (ValueError, AttributeError):
            domain = {}
        state = str(domain.get("state") or "unknown")
        if domain.get("is_disabled") or state == "disabled":
            reason = domain.get("disabled") or {}
            words = reason.get("reason") if isinstance(reason, dict) else None
            return Health(
                False, f"domain {self.domain} is disabled" + (f": {words}" if words else "")
            )
        if state == "active":
            return Health(True, f"{self.api_url}: domain {self.domain} is active")
        return Health(
            True, f"{self.api_url}: domain {self.domain} is {state} (verify its DNS records)"
        )


def _json_field(response: httpx.Response, key: str) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return str(value) if value else None


def smtp_headers(message: OutboundMessage) -> bytes:
    """The API's options as Mailgun's SMTP headers, each only if the client wrote none."""
    ids = message.delivery_ids([a for a, _ in message.recipients])
    fields = [(VARIABLES_HEADER, json.dumps(ids))]
    names = {
        "o:tag": "X-Mailgun-Tag",
        "o:sending-ip-pool": "X-Mailgun-Sending-Ip-Pool",
        "o:tracking-opens": "X-Mailgun-Track-Opens",
        "o:tracking-clicks": "X-Mailgun-Track-Clicks",
    }
    fields += [(names[k], v) for k, v in options_of(message) if k in names]
    return b"".join(
        header_field(name, value) for name, value in fields if not has_field(message.data, name)
    )


def prepare_smtp(message: OutboundMessage) -> bytes:
    """The bytes for Mailgun's SMTP relay: its headers on top, Bcc removed."""
    return smtp_headers(message) + without_bcc(message.data)


KIND = ProviderKind(
    "mailgun",
    api=MailgunApi,
    api_url=API_URL,
    smtp=SmtpRelay(SMTP_HOST, SMTP_PORT, "", prepare=prepare_smtp, key_is_password=False),
    check_row=check_row,
    statuses=MAILGUN_STATUS,
    webhook=Webhook(
        mailgun_events.authenticate,
        mailgun_events.parse_events,
        mailgun_events.check_key,
        mailgun_events.SETUP,
    ),
    defaults=defaults,
)
