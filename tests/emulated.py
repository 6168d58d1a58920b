"""The provider emulator on a thread of its own, for tests that drive the relay.

The relay runs on one thread (``RelayThread``), the emulator on another, and
they talk over real HTTP and SMTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sqlalchemy import Engine

from relay.core.crypto import secret_box
from relay.core.settings import Settings
from relay.emulator import Emulator, serve_emulator
from relay.service import providers

API_KEY = "SG.relay-test-key-0123456789"


class EmulatorThread:
    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = {"api_key": API_KEY, **kwargs}
        self.emulator: Emulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.emulator = await serve_emulator(**self._kwargs)
        self._ready.set()
        await self._stop.wait()
        await self.emulator.aclose()

    def start(self) -> Emulator:
        self._thread.start()
        assert self._ready.wait(20), "emulator did not start"
        assert self.emulator is not None
        return self.emulator

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


def add_emulated_provider(
    settings: Settings,
    engine: Engine,
    emulator: Emulator,
    name: str,
    kind: str,
    account: str,
    **options: Any,
) -> int:
    """A provider of ``kind`` pointed at the emulator (no live check: tests do that)."""
    opts = {**emulator.provider_options(kind), **options}
    secrets = {"api_key": API_KEY} if kind != "smtp" else {}
    if kind == "smtp":
        opts.setdefault("smtp_user", "apikey")
        secrets["smtp_password"] = API_KEY
    if kind == "mailgun":  # its SMTP relay has credentials of its own
        secrets["smtp_password"] = API_KEY
    config = providers.ProviderConfig(name, kind, opts, secrets)
    return providers.add_provider(engine, secret_box(settings), account, config).id
