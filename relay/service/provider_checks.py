"""Live checks of a provider: before it is saved, on demand, and its egress addresses.

The check is what the provider itself says: every transport connects and
accepts our credentials (``check()``), and the test address is accepted as a
sender (a test message from it, to it, through every transport). A provider
that fails is not saved, and the operator sees the provider's own words.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine

from relay.core.crypto import SecretBox
from relay.core.errors import Invalid, PermanentError, ProviderError
from relay.core.message import OutboundMessage
from relay.providers.base import Receipt
from relay.providers.chain import ProviderChain
from relay.providers.registry import (
    build_provider,
    effective_options,
    kind_of,
    make_test_message,
    transports,
)
from relay.service import providers
from relay.service.providers import ProviderConfig
from relay.store.models import Provider as ProviderRow


@dataclass(frozen=True)
class LegResult:
    transport: str
    ok: bool
    detail: str


# Told of each transport's result as it arrives (the CLI prints progress from it).
OnLeg = Callable[[LegResult], None]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    legs: list[LegResult]

    @property
    def detail(self) -> str:
        return "; ".join(f"{leg.transport}: {leg.detail}" for leg in self.legs)


async def add_checked(
    engine: Engine,
    box: SecretBox,
    account: str,
    config: ProviderConfig,
    hostname: str,
    check: bool = True,
    on_leg: OnLeg | None = None,
) -> tuple[ProviderRow, CheckResult | None]:
    """Add a provider after its live check (the one rule for the CLI and the API)."""
    config = providers.clean(config)
    if kind_of(config.kind).test_send and check and not config.options.get("test_address"):
        raise Invalid(
            "a test address is required (one the provider accepts as a sender), or skip the check",
            "test_address",
        )
    result = await _passes(config, hostname, "not saved", on_leg) if check else None
    row = await asyncio.to_thread(providers.add_provider, engine, box, account, config)
    return row, result


async def edit_checked(
    engine: Engine,
    box: SecretBox,
    name: str,
    options: dict[str, Any],
    secrets: dict[str, str],
    domain: str | None,
    hostname: str,
    check: bool = True,
    remove: Sequence[str] = (),
    on_leg: OnLeg | None = None,
) -> tuple[ProviderConfig, CheckResult | None]:
    """Apply an edit only if the edited provider passes its check: a wrong edit must
    not break every account that sends through it. ``remove``: secrets to drop."""
    current = await asyncio.to_thread(providers.load_config, engine, box, name)
    config = providers.edited(current, options, secrets, domain, remove)
    check = check and (bool(remove) or not _only_webhook_key(options, secrets, domain))
    what = "the edit was not applied"
    result = await _passes(config, hostname, what, on_leg) if check else None
    await asyncio.to_thread(providers.save_edit, engine, box, config)
    return config, result


def _only_webhook_key(options: dict[str, Any], secrets: dict[str, str], domain: str | None) -> bool:
    """An edit of the webhook key alone changes nothing the live check sends with."""
    given = {k for k, v in secrets.items() if v}
    unchanged = domain is None and all(v is None or v == "" for v in options.values())
    return unchanged and given == {"webhook_key"}


async def _passes(
    config: ProviderConfig, hostname: str, what: str, on_leg: OnLeg | None
) -> CheckResult:
    result = await live_check(config, hostname, on_leg=on_leg)
    if not result.ok:
        raise CheckFailed(config.name, what, result)
    return result


class CheckFailed(Invalid):
    """The provider's live check failed; ``result`` holds each transport's words."""

    def __init__(self, name: str, what: str, result: CheckResult) -> None:
        super().__init__(
            f"provider {name} failed its live check; {what}: {result.detail}", "provider"
        )
        self.result = result


def _build(
    config: ProviderConfig, hostname: str, tls_context: ssl.SSLContext | None
) -> ProviderChain:
    options = {**config.options, "helo_hostname": config.options.get("helo_hostname") or hostname}
    return build_provider(
        config.kind, config.name, options, config.secrets, tls_context=tls_context
    )


async def _send_each(
    chain: ProviderChain, mail_from: str, to: str, hostname: str, on_leg: OnLeg | None = None
) -> list[LegResult]:
    """One test message through every transport, each on its own (no fallback)."""
    results = []
    legs = [chain.primary] + ([chain.fallback] if chain.fallback else [])
    for leg in legs:
        message = make_test_message(mail_from, to, hostname=hostname)
        try:
            receipt = await leg.provider.send(message)
        except ProviderError as exc:
            results.append(LegResult(leg.transport, False, str(exc)))
        else:
            ok = not receipt.rejected
            text = receipt.text or receipt.provider_message_id or "accepted"
            results.append(LegResult(leg.transport, ok, text if ok else str(receipt.rejected)))
        if on_leg is not None:
            on_leg(results[-1])
    return results


async def live_check(
    config: ProviderConfig,
    hostname: str,
    tls_context: ssl.SSLContext | None = None,
    on_leg: OnLeg | None = None,
) -> CheckResult:
    """Credentials valid on every transport, and the test address accepted as a sender;
    ``on_leg`` hears each result as it arrives (a slow provider is not a silent one)."""
    chain = _build(config, hostname, tls_context)
    try:
        health = await chain.check()
        credentials = LegResult("check", health.ok, health.detail)
        test = config.options.get("test_address")
        done = not health.ok or not test or not kind_of(config.kind).test_send
        if on_leg is not None:
            on_leg(credentials)
        if done:
            return CheckResult(health.ok, [credentials])
        legs = await _send_each(chain, str(test), str(test), hostname, on_leg)
        return CheckResult(all(leg.ok for leg in legs), legs)
    finally:
        await chain.aclose()


async def test_send(
    config: ProviderConfig,
    to: str,
    hostname: str,
    tls_context: ssl.SSLContext | None = None,
    on_leg: OnLeg | None = None,
) -> CheckResult:
    """``relay provider test``: a message to ``to`` now, through each transport."""
    sender = str(config.options.get("test_address") or to)
    chain = _build(config, hostname, tls_context)
    try:
        legs = await _send_each(chain, sender, to, hostname, on_leg)
    finally:
        await chain.aclose()
    return CheckResult(all(leg.ok for leg in legs), legs)


async def send_message(
    config: ProviderConfig,
    message: OutboundMessage,
    hostname: str,
    tls_context: ssl.SSLContext | None = None,
) -> Receipt:
    """One message through the provider as delivery sends it (API leg, then SMTP);
    a recipient the provider refuses raises ``PermanentError`` with its words."""
    chain = _build(config, hostname, tls_context)
    try:
        receipt = await chain.send(message)
    finally:
        await chain.aclose()
    if receipt.rejected:
        raise PermanentError("; ".join(f"{k}: {v}" for k, v in receipt.rejected.items()))
    return receipt


def egress_addresses(config: ProviderConfig) -> list[tuple[str, str]]:
    """(transport, local address) the relay connects to the provider from.

    A configured ``source_address`` is what the provider sees. Without one it
    is the address of the route the kernel picks: a UDP ``connect`` chooses it
    without sending a packet (the host name is resolved, once).
    """
    source = config.options.get("source_address")
    targets = _targets(config)
    if source:
        return [(transport, str(source)) for transport, _, _ in targets]
    out = []
    for transport, host, port in targets:
        out.append((transport, _route_address(host, port)))
    return out


def _targets(config: ProviderConfig) -> list[tuple[str, str, int]]:
    """(transport, host, port) the provider's transports connect to (those it has)."""
    opts = effective_options(config.kind, config.options)
    kind = kind_of(config.kind)
    legs = transports(config.kind, config.secrets)
    out = []
    if kind.api is not None and "api" in legs:
        url = httpx.URL(kind.url_for(opts))
        out.append(("api", url.host, url.port or (443 if url.scheme == "https" else 80)))
    if kind.smtp is not None and "smtp" in legs:
        host, port = kind.smtp.host_for(opts), kind.smtp.port
        out.append(("smtp", host, int(opts.get("smtp_port") or port)))
    return out


def _route_address(host: str, port: int) -> str:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family[0], socket.SOCK_DGRAM) as sock:
            sock.connect(family[4])
            return str(sock.getsockname()[0])
    except OSError as exc:
        return f"unknown ({exc.strerror or exc})"
