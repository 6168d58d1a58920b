"""Relay's ids and the account's tracking settings, from the queue to the provider and back.

SMTP in, the worker claims (load_claimed joins the account's tracking
columns), the emulated provider gets the recipient row ids, and its events,
posted to a loopback receiver, carry them back. On both databases.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.store.models import Account, Recipient
from tests.support import RelayThread, Tenant, message
from tests.test_delivery import route_to, send, wait_for


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    from tests.conftest import _database

    yield from _database(request.param, tmp_path)


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[tuple[str, dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/events"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        assert isinstance(self.server, Receiver)
        self.server.posts.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def recipient_ids(engine: Engine, queue_id: str) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Recipient.address, Recipient.id).where(Recipient.message_id == queue_id)
        ).all()
    return {a: str(i) for a, i in rows}


def set_tracking(engine: Engine, account: str, opened: bool | None, clicked: bool | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Account)
            .where(Account.name == account)
            .values(open_tracking=opened, click_tracking=clicked)
        )


def test_sparkpost_gets_row_ids_and_tracking_and_its_events_carry_them_back(
    relay: RelayThread,
    tenant: Tenant,
    settings: Settings,
    engine: Engine,
    emulator: Emulator,
    receiver: Receiver,
) -> None:
    route_to(settings, engine, emulator, "sparkpost")
    set_tracking(engine, "acme", False, True)
    emulator.set_events_url("sparkpost", receiver.url, ("hook", "pw"))
    rcpts = ["bob@example.org", "bounce+x@example.org"]
    data = message(tenant.username, to="bob@example.org, bounce+x@example.org")
    queue_id = send(relay, tenant, rcpts, data)
    wait_for(engine, queue_id, ("delivered",))
    ids = recipient_ids(engine, queue_id)
    (body,) = emulator.sparkpost.accepted()
    assert body["metadata"] == {"relay_message_id": queue_id}
    assert {
        r["address"]["email"]: r["metadata"]["relay_recipient_id"] for r in body["recipients"]
    } == ids
    assert body["options"]["open_tracking"] is False and body["options"]["click_tracking"] is True
    emulator.wait_for_events()
    [(_, _, raw)] = receiver.posts
    events = [item["msys"]["message_event"] for item in json.loads(raw)]
    assert {e["rcpt_to"]: (e["type"], e["rcpt_meta"]["relay_recipient_id"]) for e in events} == {
        "bob@example.org": ("delivery", ids["bob@example.org"]),
        "bounce+x@example.org": ("bounce", ids["bounce+x@example.org"]),
    }
    assert all(e["rcpt_meta"]["relay_message_id"] == queue_id for e in events)


def test_sendgrid_without_tracking_settings_sends_none(
    relay: RelayThread,
    tenant: Tenant,
    settings: Settings,
    engine: Engine,
    emulator: Emulator,
    receiver: Receiver,
) -> None:
    route_to(settings, engine, emulator, "sendgrid")
    emulator.set_events_url("sendgrid", receiver.url)
    queue_id = send(
        relay,
        tenant,
        ["complaint+y@example.org"],
        message(tenant.username, to="complaint+y@example.org"),
    )
    wait_for(engine, queue_id, ("delivered",))
    [rid] = recipient_ids(engine, queue_id).values()
    (body,) = emulator.sendgrid.accepted()
    assert "tracking_settings" not in body
    assert body["personalizations"][0]["custom_args"] == {
        "relay_message_id": queue_id,
        "relay_recipient_id": rid,
    }
    emulator.wait_for_events()
    [(_, headers, raw)] = receiver.posts
    assert "X-Twilio-Email-Event-Webhook-Signature" in headers
    events = json.loads(raw)
    assert [(e["event"], e["relay_message_id"], e["relay_recipient_id"]) for e in events] == [
        ("delivered", queue_id, rid),
        ("spamreport", queue_id, rid),
    ]
