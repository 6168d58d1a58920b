"""The outbox provider: each delivered message becomes an .eml file.

For the demo and for tests: the file is written whole (temporary name,
fsync, rename) so a reader never sees half a message.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from relay.core.errors import TransientError
from relay.core.message import OutboundMessage
from relay.providers.base import Health, Receipt
from relay.providers.kind import ProviderKind


class OutboxProvider:
    def __init__(self, name: str, directory: str | Path) -> None:
        self.name = name
        self.directory = Path(directory)

    def _write(self, message: OutboundMessage) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # mail is private
        final = self.directory / f"{message.queue_id}.eml"
        tmp = final.with_suffix(".tmp")
        envelope = f"X-Relay-Envelope-From: <{message.mail_from}>\r\n" + "".join(
            f"X-Relay-Envelope-To: <{a}>\r\n" for a, _ in message.recipients
        )
        with open(tmp, "wb") as fh:
            fh.write(envelope.encode("utf-8", "surrogateescape"))
            fh.write(message.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    async def send(self, message: OutboundMessage) -> Receipt:
        try:
            path = await asyncio.to_thread(self._write, message)
        except OSError as exc:
            raise TransientError(f"cannot write outbox: {exc.strerror}", transport="file") from exc
        return Receipt("file", message.queue_id, f"written to {path.name}")

    async def check(self) -> Health:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return Health(False, f"outbox {self.directory}: {exc.strerror}")
        ok = os.access(self.directory, os.W_OK)
        return Health(ok, f"outbox {self.directory}" + ("" if ok else " is not writable"))

    async def aclose(self) -> None:
        return None


# The demo's and the tests' provider: no API, no SMTP, no test message.
KIND = ProviderKind("outbox", file=OutboxProvider, test_send=False)
