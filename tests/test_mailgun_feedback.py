"""Mailgun's feedback loop end to end, on both databases, with no mocks.

A real relay sends through the emulated Mailgun (its API, and its SMTP relay
when the API fails), which posts signed events to the relay's webhook URL one
by one as Mailgun does. A bounce through either leg reaches the suppression
list; a forged, a stale and an unsigned post are refused; a replayed event
changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from relay.core.crypto import secret_box
from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.service import providers
from relay.store.models import Event, Suppression
from tests.support import RelayThread, Tenant, make_settings, message
from tests.test_delivery import route_to, send, wait_for
from tests.test_delivery_ids import recipient_ids, set_tracking

TEST_ADDRESS = "ops@agency.test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    port = _free_port()
    return make_settings(
        tmp_path / "var",
        db_url,
        webhooks={"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
    )


@pytest.fixture
def hook_url(settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator) -> str:
    """acme sends through the emulated Mailgun, whose events come back signed."""
    route_to(settings, engine, emulator, "mailgun", test_address=TEST_ADDRESS)
    box = secret_box(settings)
    config = providers.load_config(engine, box, "mailgun-emu")
    config.secrets["webhook_key"] = emulator.mailgun_signing_key
    providers.save_edit(engine, box, config)
    found = providers.webhook(engine, box, "mailgun-emu", settings.webhooks.public_url)
    assert found.key_set and "Mailgun" in found.setup
    emulator.set_events_url("mailgun", found.url)
    return found.url


@pytest.fixture
def served(settings: Settings, engine: Engine, hook_url: str) -> Iterator[RelayThread]:
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


def suppressed(engine: Engine, address: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(Suppression.reason).where(Suppression.address == address)
        ).scalar()


def until_suppressed(engine: Engine, address: str, reason: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if suppressed(engine, address) == reason:
            return
        time.sleep(0.05)
    raise AssertionError(f"{address} never suppressed as {reason}")


def events(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Event)).scalar())


def signed(key: str, event: dict[str, Any], *, at: float | None = None) -> bytes:
    """A body as Mailgun posts it, signed with ``key`` at ``at`` (now)."""
    stamp, token = str(int(at if at is not None else time.time())), "t" * 50
    digest = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    body = {"signature": {"timestamp": stamp, "token": token, "signature": digest}}
    return json.dumps({**body, "event-data": event}).encode()


def post(url: str, body: bytes) -> int:
    headers = {"Content-Type": "application/json"}
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def test_bounces_through_either_leg_reach_the_suppression_list(
    served: RelayThread, tenant: Tenant, engine: Engine, emulator: Emulator, hook_url: str
) -> None:
    # 1. Through the API: the bounce comes back with Relay's ids and suppresses.
    gone = "bounce+api@example.org"
    first = send(served, tenant, [gone, "ok@example.org"], message(tenant.username, to=gone))
    wait_for(engine, first, ("delivered",))
    [form] = emulator.mailgun.accepted()
    assert form["to"] == [gone, "ok@example.org"] and form["v:relay_message_id"] == [first]
    emulator.wait_for_events()
    until_suppressed(engine, gone, "hard_bounce")
    assert suppressed(engine, "ok@example.org") is None

    # 2. The API fails: the SMTP relay carries it, X-Mailgun-Variables carries
    #    the ids, and that bounce suppresses too.
    emulator.mailgun.fail(503, count=5)
    lost = "bounce+smtp@example.org"
    second = send(served, tenant, [lost], message(tenant.username, to=lost))
    wait_for(engine, second, ("delivered",))
    [sent] = emulator.smtp.messages
    assert sent.user == "postmaster@mg.example.com" and b"X-Mailgun-Variables" in sent.data
    emulator.wait_for_events()
    until_suppressed(engine, lost, "hard_bounce")

    # 3. Forged, stale and unsigned posts are refused; a replay stores nothing.
    stored = events(engine)
    last = next(p for p in reversed(emulator.events.posted) if p.kind == "mailgun")
    event = last.events[0]
    assert post(hook_url, signed("not-the-signing-key-at-all", event)) == 403
    stale = signed(emulator.mailgun_signing_key, event, at=time.time() - 3600)
    assert post(hook_url, stale) == 403
    assert post(hook_url, json.dumps({"event-data": event}).encode()) == 401
    replay = signed(emulator.mailgun_signing_key, event)
    assert post(hook_url, replay) == 200 and post(hook_url, replay) == 200
    assert events(engine) == stored


def test_row_ids_and_tracking_ride_as_user_variables_and_options(
    served: RelayThread, tenant: Tenant, engine: Engine, emulator: Emulator
) -> None:
    set_tracking(engine, "acme", True, False)
    bob = "bob@example.org"
    queued = send(served, tenant, [bob], message(tenant.username, to=bob))
    wait_for(engine, queued, ("delivered",))
    [form] = emulator.mailgun.accepted()
    assert form["v:relay_message_id"] == [queued]
    assert form["v:relay_recipient_id"] == [recipient_ids(engine, queued)[bob]]
    assert (form["o:tracking-opens"], form["o:tracking-clicks"]) == (["yes"], ["no"])
    emulator.wait_for_events()
    with engine.connect() as conn:
        types = set(conn.execute(select(Event.type).where(Event.message_id == queued)).scalars())
    assert types == {"delivered"}
