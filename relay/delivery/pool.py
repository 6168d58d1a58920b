"""Live provider instances, built from provider rows and reused across messages.

A provider's connections (the pooled HTTP client, SMTP sessions) live as
long as its instance; an instance is rebuilt when its row changes (another
node may edit it), which is looked at most every few seconds per provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from relay.core.crypto import SecretBox
from relay.core.errors import ConfigError, Invalid
from relay.core.message import OutboundMessage
from relay.core.outcomes import Attempt
from relay.delivery.throttle import Limits
from relay.providers.base import Receipt
from relay.providers.chain import CircuitBreaker, ProviderChain
from relay.providers.registry import build_provider, make_http_client
from relay.store.models import Provider as ProviderRow

REFRESH = 5.0  # seconds between looks at a provider's row


class ProviderPool:
    def __init__(
        self,
        engine: Engine,
        box: SecretBox,
        outbox_dir: Path,
        hostname: str = "relay.localhost",
        tls_context: ssl.SSLContext | None = None,
        on_circuit_open: Callable[[int], None] | None = None,
        http_connections: int = 100,
    ) -> None:
        self._engine = engine
        # Told the provider id when a provider's circuit opens (a notice to its owner).
        self._on_circuit_open = on_circuit_open
        self._box = box
        self._outbox_dir = outbox_dir
        self._hostname = hostname
        self._tls_context = tls_context
        # One pooled HTTP client for every provider of the process, with as many
        # connections as deliveries may be in flight (a request waiting for a
        # connection would wait on us, not on the provider).
        self._http = make_http_client(max_connections=http_connections)
        self._live: dict[int, tuple[str, float, ProviderChain]] = {}
        # Each provider's ceilings (max_rate, max_connections), from the same row.
        self._limits: dict[int, Limits] = {}
        self._lock = asyncio.Lock()

    def _row(self, provider_id: int) -> tuple[str, str, dict[str, Any], dict[str, str], str]:
        with Session(self._engine) as session:
            row = session.get(ProviderRow, provider_id)
        if row is None:
            raise ConfigError(f"provider #{provider_id} no longer exists")
        options = dict(row.options or {})
        if row.domain:
            options.setdefault("domain", row.domain)
        fingerprint = hashlib.sha256(
            json.dumps([row.kind, options, row.secrets], sort_keys=True, default=str).encode()
        ).hexdigest()
        return row.name, row.kind, options, self._box.open(row.secrets), fingerprint

    async def get(self, provider_id: int) -> ProviderChain:
        live = self._live.get(provider_id)
        if live is not None and time.monotonic() - live[1] < REFRESH:
            return live[2]
        async with self._lock:
            name, kind, options, secrets, fingerprint = await asyncio.to_thread(
                self._row, provider_id
            )
            self._limits[provider_id] = Limits.of(options)
            live = self._live.get(provider_id)
            if live is not None and live[0] == fingerprint:
                self._live[provider_id] = (fingerprint, time.monotonic(), live[2])
                return live[2]
            # EHLO says our configured name: aiosmtplib would otherwise look up
            # the host's FQDN, a blocking DNS query.
            options.setdefault("helo_hostname", self._hostname)
            try:
                provider = build_provider(
                    kind,
                    name,
                    options,
                    secrets,
                    http=self._http,
                    outbox_dir=self._outbox_dir,
                    tls_context=self._tls_context,
                    breaker=self._breaker(provider_id),
                )
            except Invalid as exc:
                raise ConfigError(f"provider {name}: {exc}") from exc
            self._live[provider_id] = (fingerprint, time.monotonic(), provider)
        if live is not None:
            await live[2].aclose()
        return provider

    def limits(self, provider_id: int) -> Limits:
        """The provider's ceilings as of its last look (``get`` reads them)."""
        return self._limits.get(provider_id) or Limits()

    def _breaker(self, provider_id: int) -> CircuitBreaker | None:
        if self._on_circuit_open is None:
            return None  # the chain's default
        hook = self._on_circuit_open
        return CircuitBreaker(on_open=lambda: hook(provider_id))

    async def send(
        self,
        provider: ProviderChain,
        message: OutboundMessage,
        attempts: list[Attempt],
        only: str | None = None,
    ) -> Receipt:
        """Send through the chain, collecting each of its attempts (the attempt rows).

        ``only``: the one leg this pass may use (see ``ProviderChain.send``).
        """
        return await provider.send(message, on_attempt=attempts.append, only=only)

    async def aclose(self) -> None:
        for _, _, provider in self._live.values():
            await provider.aclose()
        self._live.clear()
        await self._http.aclose()
