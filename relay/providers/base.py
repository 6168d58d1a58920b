"""The provider seam: one small contract every outbound service implements.

``send(message) -> Receipt``, ``check() -> Health``, ``aclose()``. A provider
raises only ``relay.core.errors`` exceptions (``TransientError``,
``PermanentError``, ``CredentialsError``), never an ``httpx`` or
``aiosmtplib`` one: each implementation translates at its boundary, from one
table of the provider's statuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from relay.core.message import OutboundMessage


@dataclass(frozen=True)
class Receipt:
    """A provider took the message (or some of its recipients)."""

    transport: str  # api | smtp | file
    provider_message_id: str | None = None
    text: str = ""
    # Recipients the provider refused although the request succeeded:
    # address -> the provider's words. Those not named here were accepted.
    rejected: dict[str, str] = field(default_factory=dict)
    permanent: bool = True  # whether the rejections above are permanent


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


@runtime_checkable
class Provider(Protocol):
    name: str

    async def send(self, message: OutboundMessage) -> Receipt: ...

    async def check(self) -> Health: ...

    async def aclose(self) -> None: ...
