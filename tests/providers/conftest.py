"""Fixtures for the provider tests: the emulator on loopback, HTTP, providers, the schema.

Everything runs against the project's emulator over real HTTP and SMTP on
127.0.0.1; nothing of ours is mocked and nothing leaves loopback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from relay.emulator import Emulator, serve_emulator
from relay.providers.chain import CircuitBreaker, ProviderChain
from relay.providers.registry import build_provider, make_http_client

API_KEY = "SG.test-key-7f3a9c"  # what the emulator accepts; must never show in errors
# Shape-only copy of SendGrid's published schema; tests/specs/README.md names its source.
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "specs" / "sendgrid-mail-send.shape.json"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = await serve_emulator(api_key=API_KEY)
    try:
        yield emu
    finally:
        await emu.aclose()


@pytest.fixture
async def tls_emulator() -> AsyncIterator[Emulator]:
    emu = await serve_emulator(api_key=API_KEY, starttls=True, smtps_port=0)
    try:
        yield emu
    finally:
        await emu.aclose()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env off: a proxy from the environment must not catch loopback calls.
    client = make_http_client(trust_env=False)
    try:
        yield client
    finally:
        await client.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeProvider = Callable[..., ProviderChain]


@pytest.fixture
async def make_provider(emulator: Emulator, http: httpx.AsyncClient) -> AsyncIterator[MakeProvider]:
    """build_provider pointed at the emulator; every provider made is closed after."""
    made: list[ProviderChain] = []

    def make(
        kind: str,
        *,
        breaker: CircuitBreaker | None = None,
        secrets: dict[str, Any] | None = None,
        **options: Any,
    ) -> ProviderChain:
        opts = emulator.provider_options(kind) | options
        if kind == "smtp":
            opts.setdefault("smtp_user", "apikey")
        default = {"api_key": API_KEY} if kind != "smtp" else {"smtp_password": API_KEY}
        if kind == "mailgun":  # its SMTP credentials are not the API key
            default["smtp_password"] = API_KEY
        chain = build_provider(
            kind, f"test-{kind}", opts, secrets or default, http=http, breaker=breaker
        )
        made.append(chain)
        return chain

    try:
        yield make
    finally:
        for chain in made:
            await chain.aclose()


@pytest.fixture(scope="session")
def sendgrid_schema() -> Callable[[dict[str, Any]], None]:
    """Validate a payload against SendGrid's published request schema (tests/specs)."""
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )

    def validate(payload: dict[str, Any]) -> None:
        errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.path))
        assert not errors, "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors)

    return validate
