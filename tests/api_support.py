"""Helpers for the admin API tests: a world of two agencies, tokens, an HTTP client.

The world, built through the service layer as an operator would:

    agency-a (agency)          agency-b (agency)
      a-one  a-one.test          b-one  b-one.test
      a-two  a-two.test

Each agency has an outbox provider ``<agency>-outbox``, its default and its
sub-accounts'. Each sub-account has a domain, a credential ``app@<domain>``,
its domain verified as a sender, one paused and one queued message, and an
SMTP provider of its own ``<sub>-smtp`` (nothing listens at it). Each account
has a token. The relay runs without delivery workers: queued mail stays queued.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update

from relay.auth.passwords import make_hasher
from relay.core.crypto import secret_box
from relay.core.settings import Settings
from relay.queue.spool import Acceptance, write_batch
from relay.service import accounts, providers, tokens
from relay.service.providers import ProviderConfig
from relay.store.models import Account, Message
from tests.support import PASSWORD, RelayThread, make_settings

SUBS = {"agency-a": ("a-one", "a-two"), "agency-b": ("b-one",)}


def api_settings(var: Path, database_url: str, **sections: Any) -> Settings:
    """No delivery workers (queued mail stays put); DNS pointed at a port that never answers."""
    base: dict[str, dict[str, Any]] = {
        "queue": {"workers": False},
        "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": 0.3},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return make_settings(var, database_url, **base)


@dataclass
class Tenant:
    account: str
    agency: str | None
    token: str
    provider: str
    domain: str | None = None
    username: str | None = None
    paused: str | None = None
    queued: str | None = None


@dataclass
class World:
    operator: str
    tenants: dict[str, Tenant] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tenant:
        return self.tenants[name]


def build_world(settings: Settings, engine: Engine) -> World:
    world = World(tokens.create_token(engine, None, operator=True).token)
    for agency, subs in SUBS.items():
        accounts.create_account(engine, agency)
        outbox = ProviderConfig(
            f"{agency}-outbox", "outbox", {"directory": str(settings.var_path / "outbox")}, {}
        )
        providers.add_provider(engine, secret_box(settings), agency, outbox)
        for scope in ("own", "subaccounts"):
            providers.set_default(engine, outbox.name, agency, scope)
        token = tokens.create_token(engine, agency).token
        world.tenants[agency] = Tenant(agency, None, token, outbox.name)
        for sub in subs:
            world.tenants[sub] = _sub_account(settings, engine, sub, agency)
    return world


def _sub_account(settings: Settings, engine: Engine, name: str, agency: str) -> Tenant:
    account = accounts.create_account(engine, name, agency=agency)
    domain = f"{name}.test"
    accounts.add_domain(engine, domain, name)
    username = f"app@{domain}"
    accounts.create_credential(engine, make_hasher(settings), username, PASSWORD)
    accounts.verify_sender(engine, domain, name)
    paused = put_message(engine, account.id, username, "paused")
    queued = put_message(engine, account.id, username, "queued")
    smtp = ProviderConfig(
        f"{name}-smtp",
        "smtp",
        {"smtp_host": "127.0.0.1", "smtp_port": 2, "smtp_user": "relay"},
        {"smtp_password": f"smtp-secret-of-{name}"},
    )
    providers.add_provider(engine, secret_box(settings), name, smtp)
    token = tokens.create_token(engine, name).token
    return Tenant(name, agency, token, smtp.name, domain, username, paused, queued)


def put_message(engine: Engine, account_id: int, sender: str, state: str, age: float = 0) -> str:
    """A message as the spool writes it, then set to ``state`` (and made ``age`` s older)."""
    acc = Acceptance(
        account_id=account_id,
        mail_from=sender,
        header_from=sender,
        data=f"From: {sender}\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nhi\r\n".encode(),
        recipients=[("x@example.org", "to"), ("y@example.org", "bcc")],
        state="paused" if state == "paused" else "queued",
        reason="sender not verified" if state == "paused" else None,
    )
    write_batch(engine, [acc], 3600)
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    with engine.begin() as conn:
        conn.execute(
            update(Message)
            .where(Message.id == acc.queue_id)
            .values(state=state, created_at=created)
        )
    return acc.queue_id


def account_id(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        found = conn.execute(Account.__table__.select().where(Account.name == name)).first()
    assert found is not None
    return int(found.id)


class Api:
    """httpx against the relay's admin listener, as one token."""

    def __init__(self, relay: RelayThread, token: str | None) -> None:
        assert relay.relay is not None and relay.relay.admin_port
        self.base = f"http://127.0.0.1:{relay.relay.admin_port}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.base + "/api/v1", headers=headers, timeout=10)

    def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.client.request(method, path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self("POST", path, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self("DELETE", path, **kw)

    def close(self) -> None:
        self.client.close()


def error(response: httpx.Response) -> dict[str, Any]:
    """The error object of a 4xx answer, checked to have exactly our shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "field"}, body
    return dict(body["error"])


def local_cli_reads(settings: Settings, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Point the local command line at the same database and var/ as ``settings``
    (plus ``env``), and away from any configuration of the machine running the tests."""
    base = {
        "RELAY_DATABASE_URL": settings.database.url,
        "RELAY_SERVER_VAR_DIR": settings.server.var_dir,
        "RELAY_SERVER_HOSTNAME": settings.server.hostname,
    }
    for key, value in {**base, **env}.items():
        monkeypatch.setenv(key, value)
    for key in ("RELAY_CONFIG", "RELAY_URL", "RELAY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
