"""Live provider instances, built from provider rows and reused across messages.

A provider's connections (the pooled HTTP client, SMTP sessions) live as
long as its instance; an instance is rebuilt when its row changes (another
node may edit it), which is looked at most every few seconds per provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from relay.core.crypto import SecretBox
from relay.core.errors import ConfigError
from relay.core.message import OutboundMessage
from relay.providers.base import Provider, Receipt
from relay.queue.store import AttemptRecord
from relay.store.models import Provider as ProviderRow

REFRESH = 5.0  # seconds between looks at a provider's row


class ProviderPool:
    def __init__(
        self,
        engine: Engine,
        box: SecretBox,
        outbox_dir: Path,
        build: Callable[..., Provider] | None = None,
    ) -> None:
        self._engine = engine
        self._box = box
        self._outbox_dir = outbox_dir
        self._build = build or _default_build
        self._live: dict[int, tuple[str, float, Provider]] = {}
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

    async def get(self, provider_id: int) -> Provider:
        live = self._live.get(provider_id)
        if live is not None and time.monotonic() - live[1] < REFRESH:
            return live[2]
        async with self._lock:
            name, kind, options, secrets, fingerprint = await asyncio.to_thread(
                self._row, provider_id
            )
            live = self._live.get(provider_id)
            if live is not None and live[0] == fingerprint:
                self._live[provider_id] = (fingerprint, time.monotonic(), live[2])
                return live[2]
            provider = self._build(kind, name, options, secrets, outbox_dir=self._outbox_dir)
            self._live[provider_id] = (fingerprint, time.monotonic(), provider)
        if live is not None:
            await live[2].aclose()
        return provider

    async def send(
        self,
        provider: Provider,
        message: OutboundMessage,
        on_attempt: Callable[[AttemptRecord], None],
    ) -> Receipt:
        """Send through ``provider``; chains report each attempt through ``on_attempt``."""
        send_with = getattr(provider, "send_recorded", None)
        if send_with is not None:
            receipt: Receipt = await send_with(message, on_attempt)
            return receipt
        return await provider.send(message)

    async def aclose(self) -> None:
        for _, _, provider in self._live.values():
            await provider.aclose()
        self._live.clear()


def _default_build(
    kind: str, name: str, options: dict[str, Any], secrets: dict[str, str], *, outbox_dir: Path
) -> Provider:
    if kind == "outbox":
        from relay.providers.outbox import OutboxProvider

        return OutboxProvider(name, options.get("directory") or outbox_dir)
    raise ConfigError(f"provider kind {kind!r} is not available")
