"""Test helpers: settings for a temporary relay, a relay running on a thread, tenants.

The relay under test is the real one (``relay.app.Relay``) with real
listeners on 127.0.0.1 port 0, real TLS (its self-signed certificate) and a
real database; clients are real SMTP clients over sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import smtplib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvloop
from sqlalchemy import Engine

from relay.app import Relay
from relay.auth.passwords import make_hasher
from relay.core.crypto import secret_box
from relay.core.settings import ListenerSettings, Settings, load_settings
from relay.service import accounts, providers
from relay.store.engine import make_engine, migrate

PASSWORD = "correct-horse-battery"
LISTENERS = ("smtp", "submissions", "submission", "alt")


def make_settings(var: Path, database_url: str | None = None, **sections: Any) -> Settings:
    """Settings for a relay in ``var``: loopback listeners on port 0, cheap argon2."""
    overrides: dict[str, dict[str, Any]] = {
        "database": {"url": database_url or f"sqlite:///{var}/relay.db"},
        "server": {"var_dir": str(var), "hostname": "relay.test"},
        "admin": {"listen": "127.0.0.1:0"},
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 1024},
        "queue": {"poll_interval": 0.2, "retry_schedule": [1, 2, 4]},
        # Tests change a policy and send the next message at once: read the
        # generation before every message (tests/test_policy_cache.py tests the default).
        "policy": {"cache_seconds": 0},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    settings = load_settings(None, env={}, overrides=overrides)
    listeners = tuple(ListenerSettings(n, "127.0.0.1", 0) for n in LISTENERS)
    return replace(settings, listeners=listeners)


@dataclass
class Tenant:
    account: str
    domain: str
    username: str
    password: str


def seed_tenant(
    settings: Settings,
    engine: Engine,
    name: str = "acme",
    domain: str = "acme.test",
    agency: str = "agency",
    purpose: str = "transactional",
) -> Tenant:
    """An agency, a sub-account with a domain, one credential, its domain verified,
    and an outbox provider as the agency's default for itself and its sub-accounts."""
    if not any(a.name == agency for a, _ in accounts.list_accounts(engine)):
        accounts.create_account(engine, agency)
        outbox = {"directory": str(settings.var_path / "outbox")}
        config = providers.ProviderConfig(f"{agency}-outbox", "outbox", outbox, {})
        providers.add_provider(engine, secret_box(settings), agency, config)
        providers.set_default(engine, f"{agency}-outbox", agency, "own")
        providers.set_default(engine, f"{agency}-outbox", agency, "subaccounts")
    accounts.create_account(engine, name, agency=agency)
    accounts.add_domain(engine, domain, name)
    user = f"app@{domain}"
    accounts.create_credential(engine, make_hasher(settings), user, PASSWORD, purpose)
    accounts.verify_sender(engine, domain, name)
    return Tenant(name, domain, user, PASSWORD)


class RelayThread:
    """A real Relay on its own event loop in a background thread."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.database.url)
        self.relay: Relay | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            uvloop.run(self._serve())  # the loop production runs on
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.relay = Relay(self.settings, engine=self.engine)
        await self.relay.start()
        self._ready.set()
        await self._stopped.wait()
        await self.relay.stop(grace=2)

    def start(self) -> RelayThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop and self._stopped and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30)

    def port(self, name: str) -> int:
        assert self.relay is not None
        return next(i.port for i in self.relay.listeners if i.settings.name == name)

    def call(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the relay's loop (to poke its internals)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)


def client_context() -> ssl.SSLContext:
    # The relay's certificate is self-signed: these tests check the session,
    # not the chain (the chain is the operator's business).
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@contextlib.contextmanager
def connect(
    relay: RelayThread, listener: str, *, tls: bool = True, login: tuple[str, str] | None = None
) -> Iterator[smtplib.SMTP]:
    """An smtplib session on ``listener``: TLS (implicit or STARTTLS) and AUTH if asked."""
    port = relay.port(listener)
    client: smtplib.SMTP
    if listener == "submissions":
        client = smtplib.SMTP_SSL("127.0.0.1", port, context=client_context(), timeout=10)
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        client.ehlo("client.test")
        if tls and listener != "submissions":
            client.starttls(context=client_context())
            client.ehlo("client.test")
        if login:
            client.login(*login)
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.quit()
        client.close()


def auth_plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def message(
    sender: str,
    to: str = "bob@example.org",
    cc: str | None = None,
    bcc: str | None = None,
    subject: str = "Hello",
    body: str = "Hi there.\r\n",
    extra: str = "",
) -> bytes:
    lines = [f"From: Sender <{sender}>", f"To: {to}"]
    if cc:
        lines.append(f"Cc: {cc}")
    if bcc:
        lines.append(f"Bcc: {bcc}")
    lines.append(f"Subject: {subject}")
    text = "\r\n".join(lines) + "\r\n" + extra + "\r\n" + body
    return text.encode()


def fresh_engine(settings: Settings) -> Engine:
    engine = make_engine(settings.database.url)
    migrate(engine)
    return engine
