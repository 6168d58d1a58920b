"""What a kind of provider is: the one record each provider module exports.

A kind (``sendgrid``, ``sparkpost``, ``mailgun``, ``smtp``, ``outbox``) is its transports
and their defaults: the API leg's class and base URL, the SMTP relay's host,
port, user and login, what the SMTP leg adds to the bytes, the file leg of the
outbox, its rules for a row, whether the live check sends a test message, and
the table of its API's statuses. The module of the provider says all of it in
one :class:`ProviderKind` named ``KIND``; :mod:`relay.providers.registry`
collects the records and builds chains from them, and
:mod:`relay.service.provider_checks` reads them for where the transports
connect and how a provider is checked. A new provider is one module with its
``KIND`` (and its part of the emulator).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from relay.core.errors import Invalid, ProviderError
from relay.core.events import ProviderEvent
from relay.core.message import OutboundMessage
from relay.core.settings import Secret
from relay.providers.base import Provider

# What an SMTP leg does to the message bytes before sending them.
Prepare = Callable[[OutboundMessage], bytes]
# The SMTP login a kind derives from its row (options, secrets) -> (user, password),
# e.g. Amazon SES's password computed from the secret access key.
Login = Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[str, str]]
# Kind-specific rules of a row, after the common ones: (options, secrets or
# None when only the options are checked); raises ``Invalid`` naming the field.
CheckRow = Callable[[Mapping[str, Any], Mapping[str, Any] | None], None]
# Options a row implies (Mailgun's region: its API URL and SMTP host); the
# row's own options win over them.
Defaults = Callable[[Mapping[str, Any]], dict[str, Any]]


class ApiFactory(Protocol):
    """How the registry makes an API leg (an :class:`~relay.providers.http.HttpApi`)."""

    def __call__(
        self,
        name: str,
        api_key: Secret,
        *,
        http: httpx.AsyncClient,
        api_url: str | None = None,
        timeout: float = 30.0,
        own_http: bool = False,
        options: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Secret] | None = None,
    ) -> Provider: ...


class FileFactory(Protocol):
    """How the registry makes a file leg: a provider that writes each message."""

    def __call__(self, name: str, directory: str | Path) -> Provider: ...


@dataclass(frozen=True)
class SmtpRelay:
    """The SMTP leg's defaults; the ``smtp_*`` options override host, port and user.

    The password is ``smtp_password``, else the API key (as SendGrid and
    SparkPost take it, unless ``key_is_password`` is off), unless ``login``
    derives both from the row. ``host`` may hold ``{region}`` (the row's region
    option); ``prepare_for(options)`` is ``prepare`` when what it adds depends
    on the row.
    """

    host: str = ""  # "": the operator's server, named by the smtp_host option
    port: int = 587  # RFC 6409 submission; 465 is implicit TLS (RFC 8314 3.3)
    user: str = ""
    auth_mechanism: str | None = None  # "login" forces AUTH LOGIN; None: the best offered
    messages_per_connection: int = 0  # 0: no cap
    prepare: Prepare | None = None  # e.g. the provider's SMTP API header
    # SendGrid and SparkPost take the API key as the SMTP password; Mailgun's
    # SMTP credentials are their own (per domain), so only smtp_password serves.
    key_is_password: bool = True
    login: Login | None = None
    prepare_for: Callable[[Mapping[str, Any]], Prepare] | None = None

    def host_for(self, options: Mapping[str, Any]) -> str:
        """The relay's host for a row: the smtp_host option, else the default in its region."""
        return str(options.get("smtp_host") or self.host.format(region=options.get("region", "")))

    def prepare_of(self, options: Mapping[str, Any]) -> Prepare | None:
        return self.prepare_for(options) if self.prepare_for is not None else self.prepare


@dataclass(frozen=True)
class Webhook:
    """How a kind's event webhook is authenticated and read (its module says all of it).

    ``authenticate(key, headers, body, now)`` raises ``WebhookRefused`` (headers
    with lower-case names, ``now`` in Unix seconds); ``parse(body)`` returns the
    events it knows, raising ``Invalid`` on a body that is not the documented
    format; ``batch_id(headers)`` is the id of a retried batch, if the provider
    sends one; ``check_key`` refuses a ``webhook_key`` of the wrong shape
    (``Invalid``); ``setup`` is what the operator does in the provider's console.
    """

    authenticate: Callable[[str, Mapping[str, str], bytes, float], None]
    parse: Callable[[bytes], list[ProviderEvent]]
    check_key: Callable[[str], None]
    setup: str
    batch_id: Callable[[Mapping[str, str]], str | None] = lambda _headers: None
    # Awaited before ``authenticate`` where a post needs the network first:
    # ``receive(key, headers, body)`` fetches what authentication needs (SNS's
    # signing certificate) and returns a reply text when the post carried no
    # events and was handled (an SNS subscription confirmed); raises
    # ``WebhookRefused`` like ``authenticate``.
    receive: Callable[[str, Mapping[str, str], bytes], Awaitable[str | None]] | None = None


@dataclass(frozen=True)
class ProviderKind:
    """One kind of provider: its legs in order (API, then SMTP; or a file) and its rules."""

    name: str
    api: ApiFactory | None = None
    api_url: str = ""  # the API's base URL; the api_url option overrides it (EU, emulator)
    smtp: SmtpRelay | None = None
    file: FileFactory | None = None  # the outbox: messages become files, nothing is sent
    check_row: CheckRow | None = None
    # The live check sends a test message from the test address, which the
    # provider must then accept as a sender; a file proves nothing by it.
    test_send: bool = True
    # The API's statuses and the errors they become (None: accepted), as the
    # provider's module maps them.
    statuses: Mapping[int, type[ProviderError] | None] = field(default_factory=dict)
    # The provider's event webhook, if it has one Relay reads.
    webhook: Webhook | None = None
    defaults: Defaults | None = None
    # The secret the API leg cannot work without (SES: its secret access key).
    api_secret: str = "api_key"

    def url_for(self, options: Mapping[str, Any]) -> str:
        """The API's base URL for a row: api_url, else the default (in its region)."""
        return str(options.get("api_url") or self.api_url.format(region=options.get("region", "")))


def json_array(body: bytes) -> list[Any]:
    """A webhook body that both SendGrid and SparkPost send: one JSON array."""
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the body is not JSON", "body") from None
    if not isinstance(items, list):
        raise Invalid("the body is not a JSON array of events", "body")
    return items
