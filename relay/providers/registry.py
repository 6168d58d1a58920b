"""From a provider row (kind, options, secrets) to a ready :class:`ProviderChain`.

Each kind is one record, ``KIND`` in the provider's own module
(:class:`~relay.providers.kind.ProviderKind`), collected in :data:`KINDS`::

    sendgrid   api: SendGrid v3  -> smtp: smtp.sendgrid.net:587, user apikey
    sparkpost  api: Transmissions -> smtp: smtp.sparkpostmail.com:587, SMTP_Injection
    mailgun    api: messages.mime -> smtp: smtp.mailgun.org:587, postmaster@DOMAIN
    ses        api: SES v2 SendEmail -> smtp: email-smtp.{region}.amazonaws.com:587,
               the access key id and the SMTP password derived from its secret
    smtp       smtp: the operator's server (smtp_host required)
    outbox     file: .eml files in outbox_dir (demo and tests)

For sendgrid, sparkpost, mailgun and ses the SMTP host, port and user default to
the provider's own relay; ``api_url`` and the ``smtp_*`` options override them
(an EU account, or the emulator). The legs follow the secrets: ``api_key``
makes the API leg; ``smtp_password`` makes the SMTP leg, and so does the API
key of SendGrid and SparkPost, which their relays take as the password. So a
SendGrid or SparkPost provider is API and SMTP (``api_key``), SMTP only
(``smtp_password`` alone), or both with their own credentials.

Options (non-secret, stored in clear): see :data:`OPTIONS`. Secrets:
``api_key``, ``smtp_password`` (plain strings or ``Secret``; they are held as
``Secret`` and never printed).

HTTP: every provider shares the ``http`` client it is given (one pool for the
process, see :func:`make_http_client`), except one that needs its own socket
settings (``source_address``, ``allow_insecure_tls``): it gets a client of its
own, closed by its ``aclose()``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from relay.core.errors import Invalid
from relay.core.message import OutboundMessage, make_message_id
from relay.core.settings import Secret
from relay.providers import mailgun, outbox, sendgrid, ses, smtp, sparkpost
from relay.providers.base import Health, Provider, Receipt
from relay.providers.chain import AttemptHook, CircuitBreaker, Leg, ProviderChain
from relay.providers.http import ShardedTransport
from relay.providers.kind import ApiFactory, ProviderKind, SmtpRelay
from relay.providers.smtp import TLS_MODES, SmtpEndpoint, SmtpTransport

KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (sendgrid.KIND, sparkpost.KIND, mailgun.KIND, ses.KIND, smtp.KIND, outbox.KIND)
}
DEFAULT_TIMEOUT = 30.0

# key -> (accepted types, description). Anything else in options is refused.
OPTIONS: dict[str, tuple[tuple[type, ...], str]] = {
    "api_url": ((str,), "API base URL (default the provider's; EU or an emulator)"),
    "smtp_host": ((str,), "SMTP server (required for kind smtp)"),
    "smtp_port": ((int,), "SMTP port (587; 465 means implicit TLS unless smtp_tls says)"),
    "smtp_user": ((str,), "SMTP login (default: the provider's relay user)"),
    "smtp_tls": ((str,), "implicit | starttls | none"),
    "allow_insecure_tls": ((bool,), "accept an unverifiable certificate"),
    "ip_pool": ((str,), "IP pool for messages without one of their own"),
    "source_address": ((str,), "local IP address to connect from (static egress)"),
    "test_address": ((str,), "address the provider must accept in a test send"),
    "timeout": ((int, float), "seconds for an API request or an SMTP command"),
    "smtp_pool_size": ((int,), "SMTP connections kept per endpoint (10)"),
    "smtp_max_messages": ((int,), "messages per SMTP connection, 0 = no cap"),
    "helo_hostname": ((str,), "name to say in EHLO (default: the host's FQDN)"),
    "domain": ((str,), "sending domain the provider is bound to (used by routing)"),
    "directory": ((str,), "outbox only: where the .eml files go (default outbox_dir)"),
    # Kinds whose API needs more than a key (Mailgun, Amazon SES).
    "region": ((str,), "the provider's region: Mailgun us|eu, an AWS region for SES"),
    "sending_domain": ((str,), "Mailgun: the sending domain messages go through"),
    "configuration_set": ((str,), "Amazon SES: the configuration set for events"),
    "access_key_id": ((str,), "Amazon SES: the IAM access key id"),
    # The provider's own ceilings, honoured across processes (issue 14).
    "max_rate": ((int, float), "messages per second to this provider, all processes"),
    "max_connections": ((int,), "concurrent deliveries to this provider, all processes"),
}
MAX_RATE = 100_000.0  # messages a second: far above any provider's published ceiling
MAX_CONNECTIONS = 10_000
SECRETS = ("api_key", "smtp_password", "webhook_key", "secret_access_key")


def make_http_client(
    *,
    source_address: str | None = None,
    verify: bool | ssl.SSLContext = True,
    timeout: float = DEFAULT_TIMEOUT,
    max_connections: int = 100,
    trust_env: bool = True,
) -> httpx.AsyncClient:
    """The pooled HTTP client providers share (one per process, or per egress address):
    ``max_connections`` kept alive, in small pools (:class:`ShardedTransport`)."""
    transport = ShardedTransport(
        max_connections, verify=verify, local_address=source_address, keepalive_expiry=30.0
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=trust_env)


# -- validation --------------------------------------------------------------


def validate_options(
    kind: str, options: Mapping[str, Any], secrets: Mapping[str, Any] | None = None
) -> None:
    """Refuse a provider row that cannot work, naming the field (``Invalid.field``)."""
    record = kind_of(kind)
    for key, value in options.items():
        _check_type(key, value)
    _check_values(options)
    if record.check_row is not None:
        record.check_row(options, secrets)
    if secrets is not None:
        _check_secrets(record, secrets)


def kind_of(kind: str) -> ProviderKind:
    """The record of ``kind``; ``Invalid`` (field ``kind``) for one we do not know."""
    if kind not in KINDS:
        raise Invalid(f"unknown provider kind {kind!r}; one of {', '.join(KINDS)}", "kind")
    return KINDS[kind]


def _check_type(key: str, value: Any) -> None:
    if key not in OPTIONS:
        raise Invalid(f"unknown option {key!r}", key)
    types, _ = OPTIONS[key]
    if value is None:
        return
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        raise Invalid(f"{key} must be {names}, not {type(value).__name__}", key)


def _check_values(options: Mapping[str, Any]) -> None:
    port = options.get("smtp_port")
    if port is not None and not 0 < port < 65536:
        raise Invalid(f"smtp_port {port} is not a port number", "smtp_port")
    if options.get("smtp_tls") not in (None, *TLS_MODES):
        raise Invalid(f"smtp_tls must be one of {', '.join(TLS_MODES)}", "smtp_tls")
    timeout = options.get("timeout")
    if timeout is not None and timeout <= 0:
        raise Invalid("timeout must be more than 0 seconds", "timeout")
    if options.get("api_url") is not None:
        _check_url(options["api_url"])
    if options.get("source_address"):
        try:
            ipaddress.ip_address(options["source_address"])
        except ValueError:
            raise Invalid("source_address must be an IP address", "source_address") from None
    test = options.get("test_address")
    if test is not None and "@" not in test:
        raise Invalid("test_address must be an email address", "test_address")
    for key in ("smtp_pool_size", "smtp_max_messages"):
        if options.get(key) is not None and options[key] < (1 if key == "smtp_pool_size" else 0):
            raise Invalid(f"{key} is out of range", key)
    rate = options.get("max_rate")
    if rate is not None and not 0 < rate <= MAX_RATE:
        raise Invalid(f"max_rate must be more than 0 and at most {MAX_RATE:g}/s", "max_rate")
    conns = options.get("max_connections")
    if conns is not None and not 1 <= conns <= MAX_CONNECTIONS:
        raise Invalid(f"max_connections must be 1 to {MAX_CONNECTIONS}", "max_connections")


def parse_rate(value: str) -> float | str:
    """``N/s``, ``N/min`` or ``N/h`` (a bare N is per second) as messages a second;
    ``off`` as "" (clears the option on edit). ``Invalid`` (field max_rate) otherwise."""
    text = value.strip().lower()
    if text == "off":
        return ""
    number, _, unit = text.partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}.get(unit.strip())
    try:
        rate = float(number) / per if per else math.nan
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate) or not 0 < rate <= MAX_RATE:
        raise Invalid(
            f"max rate {value!r}: give N/s, N/min or N/h, more than 0 and at most "
            f"{MAX_RATE:g}/s, or off",
            "max_rate",
        )
    return rate


def parse_connections(value: str) -> int | str:
    """A whole number from 1 to MAX_CONNECTIONS, or ``off`` as "" (clears it)."""
    text = value.strip().lower()
    if text == "off":
        return ""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_CONNECTIONS:
        raise Invalid(
            f"max connections {value!r}: give 1 to {MAX_CONNECTIONS}, or off", "max_connections"
        )
    return count


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise Invalid(f"api_url {url!r} is not a URL", "api_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Invalid("api_url must be an http or https URL", "api_url")


def _check_secrets(record: ProviderKind, secrets: Mapping[str, Any]) -> None:
    for key in secrets:
        if key not in SECRETS:
            raise Invalid(f"unknown secret {key!r}", key)
    if record.api is not None and not transports(record.name, secrets):
        need = record.api_secret
        if record.smtp is None:
            raise Invalid(f"a {record.name} provider needs {need}", need)
        raise Invalid(
            f"a {record.name} provider needs {need} (its API), smtp_password (its SMTP "
            "relay), or both",
            need,
        )
    if secrets.get("webhook_key"):
        if record.webhook is None:
            raise Invalid(f"a {record.name} provider has no event webhook", "webhook_key")
        record.webhook.check_key(secrets["webhook_key"])


def transports(kind: str, secrets: Mapping[str, Any]) -> list[str]:
    """The legs a row of ``kind`` with these secrets has, in order: api, smtp, file.

    The API leg needs ``api_key`` (SES: ``secret_access_key``); a provider's
    SMTP relay takes ``smtp_password``, or the API's secret where the
    provider's relay takes it (SendGrid, SparkPost) or derives its password
    from it (SES). A custom smtp provider is always its SMTP leg.
    """
    record = kind_of(kind)
    if record.file is not None:
        return ["file"]
    out = []
    if record.api is not None and secrets.get(record.api_secret):
        out.append("api")
    if record.smtp is not None and (
        record.api is None
        or secrets.get("smtp_password")
        or (record.smtp.key_is_password and secrets.get(record.api_secret))
    ):
        out.append("smtp")
    return out


def effective_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The row's options over those its kind derives from them (Mailgun's region)."""
    record = kind_of(kind)
    implied = record.defaults(options) if record.defaults is not None else {}
    return {**implied, **{k: v for k, v in options.items() if v is not None}}


# -- building ----------------------------------------------------------------


def _secret(secrets: Mapping[str, Any], key: str) -> Secret:
    value = secrets.get(key)
    if isinstance(value, Secret):
        return value
    return Secret(str(value) if value else "")


def _tls_mode(options: Mapping[str, Any], port: int) -> str:
    mode = options.get("smtp_tls")
    if mode:
        return str(mode)
    return "implicit" if port == 465 else "starttls"  # RFC 8314 3.3: 465 is implicit TLS


def _endpoint(
    relay: SmtpRelay,
    options: Mapping[str, Any],
    secrets: Mapping[str, Any],
    tls_context: ssl.SSLContext | None,
) -> SmtpEndpoint:
    port = int(options.get("smtp_port") or relay.port)
    password = _secret(secrets, "smtp_password")
    if not password and relay.key_is_password:
        password = _secret(secrets, "api_key")
    user = options.get("smtp_user") or relay.user or None
    if relay.login is not None:  # derived from the row (SES)
        derived_user, derived = relay.login(options, secrets)
        user, password = options.get("smtp_user") or derived_user or None, Secret(derived)
    return SmtpEndpoint(
        host=relay.host_for(options),
        port=port,
        tls=_tls_mode(options, port),
        username=user,
        password=password,
        auth_mechanism=relay.auth_mechanism,
        allow_insecure_tls=bool(options.get("allow_insecure_tls")),
        source_address=options.get("source_address") or None,
        local_hostname=options.get("helo_hostname") or None,
        timeout=float(options.get("timeout") or 60.0),
        pool_size=int(options.get("smtp_pool_size") or 10),
        max_messages_per_connection=_cap(relay, options),
        tls_context=tls_context,
    )


def _cap(relay: SmtpRelay, options: Mapping[str, Any]) -> int:
    cap = options.get("smtp_max_messages")
    if cap is not None:
        return int(cap)
    return relay.messages_per_connection


def _http_for(
    options: Mapping[str, Any], http: httpx.AsyncClient | None, tls_context: ssl.SSLContext | None
) -> tuple[httpx.AsyncClient, bool]:
    """The shared client, or (when the provider needs its own sockets) a new owned one."""
    source = options.get("source_address") or None
    insecure = bool(options.get("allow_insecure_tls"))
    if http is not None and not source and not insecure:
        return http, False
    verify: bool | ssl.SSLContext = False if insecure else (tls_context or True)
    timeout = float(options.get("timeout") or DEFAULT_TIMEOUT)
    return make_http_client(source_address=source, verify=verify, timeout=timeout), True


def _api_leg(
    api: ApiFactory,
    name: str,
    url: str,
    options: Mapping[str, Any],
    secrets: Mapping[str, Any],
    client: tuple[httpx.AsyncClient, bool],
    timeout: float,
) -> Leg:
    http, owned = client
    key = _secret(secrets, "api_key")
    every = {k: _secret(secrets, k) for k in SECRETS if secrets.get(k)}
    leg = api(
        name,
        key,
        http=http,
        api_url=url,
        timeout=timeout,
        own_http=owned,
        options=options,
        secrets=every,
    )
    return Leg("api", leg)


class _DefaultPool:
    """A leg that gives messages without an IP pool the provider's ``ip_pool`` option."""

    def __init__(self, provider: Provider, ip_pool: str) -> None:
        self.provider = provider
        self.ip_pool = ip_pool
        self.name = provider.name

    def __repr__(self) -> str:
        return f"{self.provider!r} (ip_pool {self.ip_pool!r})"

    async def send(self, message: OutboundMessage) -> Receipt:
        if not message.ip_pool:
            message = dataclasses.replace(message, ip_pool=self.ip_pool)
        return await self.provider.send(message)

    async def check(self) -> Health:
        return await self.provider.check()

    async def aclose(self) -> None:
        await self.provider.aclose()


def _with_pool(leg: Leg, options: Mapping[str, Any]) -> Leg:
    pool = options.get("ip_pool")
    return Leg(leg.transport, _DefaultPool(leg.provider, pool)) if pool else leg


def build_provider(
    kind: str,
    name: str,
    options: Mapping[str, Any],
    secrets: Mapping[str, Any],
    *,
    http: httpx.AsyncClient | None = None,
    outbox_dir: str | Path = "var/outbox",
    tls_context: ssl.SSLContext | None = None,
    breaker: CircuitBreaker | None = None,
    on_attempt: AttemptHook | None = None,
) -> ProviderChain:
    """The provider for one row. Raises ``Invalid`` (with ``.field``) for a bad row.

    ``tls_context`` replaces the system trust store for both legs (a private CA,
    or the emulator's); ``on_attempt`` sees every attempt of every message.
    """
    validate_options(kind, options, secrets)
    record = KINDS[kind]
    chain_options: dict[str, Any] = {"breaker": breaker, "on_attempt": on_attempt}
    if record.file is not None:
        directory = options.get("directory") or outbox_dir
        return ProviderChain(name, Leg("file", record.file(name, directory)), **chain_options)
    options = effective_options(kind, options)
    legs = _legs(record, name, options, secrets, http, tls_context)
    if record.api is not None:  # ip_pool is the API providers' option, for both legs
        legs = [_with_pool(leg, options) for leg in legs]
    return ProviderChain(name, *legs, **chain_options)


def _legs(
    record: ProviderKind,
    name: str,
    options: Mapping[str, Any],
    secrets: Mapping[str, Any],
    http: httpx.AsyncClient | None,
    tls_context: ssl.SSLContext | None,
) -> list[Leg]:
    """The kind's network legs in order (its API first, then its SMTP relay), those
    its secrets make (:func:`transports`)."""
    legs = []
    present = transports(record.name, secrets)
    if record.api is not None and "api" in present:
        url = record.url_for(options)
        timeout = float(options.get("timeout") or DEFAULT_TIMEOUT)
        client = _http_for(options, http, tls_context)
        legs.append(_api_leg(record.api, name, url, options, secrets, client, timeout))
    if record.smtp is not None and "smtp" in present:
        endpoint = _endpoint(record.smtp, options, secrets, tls_context)
        transport = SmtpTransport(name, endpoint, prepare=record.smtp.prepare_of(options))
        legs.append(Leg("smtp", transport))
    return legs


def make_test_message(
    mail_from: str, to: str, *, hostname: str = "relay.invalid", queue_id: str = "test"
) -> OutboundMessage:
    """A small message for "test provider" (send it with ``chain.send``)."""
    data = (
        f"From: <{mail_from}>\r\nTo: <{to}>\r\nSubject: Relay provider test\r\n"
        f"Message-ID: {make_message_id(hostname)}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "This message tests a provider configured in Relay.\r\n"
    ).encode()
    return OutboundMessage(queue_id, mail_from, [(to, "to")], data)
