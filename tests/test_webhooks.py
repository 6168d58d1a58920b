"""The webhook listener: providers' events authenticated, stored once, tied to Relay's ids.

Real parts: a relay with its public listener, real HTTP, real SMTP to make the
messages, SQLite and PostgreSQL. SendGrid's signature is made here the way
SendGrid makes it (ECDSA P-256, SHA-256 over timestamp + body, base64 DER),
with a key pair of our own whose public half is given as the console shows it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from relay.core.crypto import secret_box
from relay.core.events import AccountEvent, BounceClass, EventType
from relay.core.settings import Settings
from relay.providers import sendgrid_events, sparkpost_events
from relay.service import providers
from relay.store.models import Event, Provider, Recipient, WebhookBatch
from tests.support import (
    RelayThread,
    Tenant,
    connect,
    fresh_engine,
    make_settings,
    message,
    seed_tenant,
)

SPARKPOST_KEY = "hooks:s3cret-password"


class Keys:
    """A SendGrid-style signing key pair."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: str) -> str:
        signature = self.private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()


class Sinks:
    def __init__(self) -> None:
        self.calls: list[list[AccountEvent]] = []
        self.lock = threading.Lock()

    def __call__(self, events: Sequence[AccountEvent]) -> None:
        with self.lock:
            self.calls.append(list(events))


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def hook_settings(tmp_path: Path, any_db_url: str) -> Settings:
    return make_settings(
        tmp_path / "var",
        any_db_url,
        webhooks={"listen": "127.0.0.1:0", "public_url": "https://hooks.relay.test"},
        queue={"workers": False},
    )


@pytest.fixture
def hook_engine(hook_settings: Settings) -> Iterator[Engine]:
    engine = fresh_engine(hook_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def tenants(hook_settings: Settings, hook_engine: Engine, keys: Keys) -> dict[str, Tenant]:
    """Two tenants of one agency, one of another; SendGrid and SparkPost rows with webhooks."""
    acme = seed_tenant(hook_settings, hook_engine)
    beta = seed_tenant(hook_settings, hook_engine, "beta", "beta.test")
    other = seed_tenant(hook_settings, hook_engine, "other", "other.test", agency="rival")
    box = secret_box(hook_settings)
    for agency, name, kind, key in (
        ("agency", "sg", "sendgrid", keys.public),
        ("agency", "sp", "sparkpost", SPARKPOST_KEY),
        ("rival", "rival-sg", "sendgrid", keys.public),
    ):
        config = providers.ProviderConfig(name, kind, {}, {"api_key": "k", "webhook_key": key})
        providers.add_provider(hook_engine, box, agency, config)
        with Session(hook_engine) as session, session.begin():
            session.execute(
                update(Provider).where(Provider.name == name).values(webhook_token=f"tok-{name}")
            )
    return {"acme": acme, "beta": beta, "other": other}


@pytest.fixture
def sinks() -> Sinks:
    return Sinks()


@pytest.fixture
def relay_with_sinks(
    hook_settings: Settings, hook_engine: Engine, tenants: dict[str, Tenant], sinks: Sinks
) -> Iterator[RelayThread]:
    thread = RelayThread(hook_settings, hook_engine)
    # RelayThread builds the Relay inside its loop; wire the sink on the class
    # instance right after it is made, before start() reads it.
    from relay import app as app_module

    original_init = app_module.Relay.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.event_sinks.append(sinks)

    app_module.Relay.__init__ = init  # type: ignore[method-assign]
    try:
        thread.start()
    finally:
        app_module.Relay.__init__ = original_init  # type: ignore[method-assign]
    yield thread
    thread.stop()


def send(relay: RelayThread, tenant: Tenant, *to: str) -> str:
    """Mail through the relay; returns its queue id."""
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as smtp:
        smtp.mail(tenant.username)
        for address in to:
            smtp.rcpt(address)
        code, reply = smtp.data(message(tenant.username, to=", ".join(to)))
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def recipient_ids(engine: Engine, queue_id: str) -> dict[str, int]:
    with Session(engine) as session:
        rows = session.scalars(select(Recipient).where(Recipient.message_id == queue_id))
        return {r.address: r.id for r in rows}


def url(relay: RelayThread, token: str) -> str:
    assert relay.relay is not None and relay.relay.webhooks_port
    return f"http://127.0.0.1:{relay.relay.webhooks_port}/hooks/{token}"


def sendgrid_event(event_id: str, kind: str, address: str, **extra: Any) -> dict[str, Any]:
    return {
        "email": address,
        "timestamp": int(time.time()),
        "event": kind,
        "sg_event_id": event_id,
        "sg_message_id": "sg.1",
        **extra,
    }


def post_sendgrid(
    relay: RelayThread,
    keys: Keys,
    events: list[dict[str, Any]],
    *,
    token: str = "tok-sg",
    timestamp: str | None = None,
    tamper: bool = False,
) -> httpx.Response:
    body = json.dumps(events).encode()
    stamp = timestamp or str(int(time.time()))
    signature = keys.sign(body, stamp)
    if tamper:
        body = body.replace(b"bounce", b"open_")
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }
    return httpx.post(url(relay, token), content=body, headers=headers, timeout=10)


def stored(engine: Engine) -> list[Event]:
    with Session(engine) as session:
        return list(session.scalars(select(Event).order_by(Event.id)))


def test_signed_sendgrid_batch_is_stored_and_tied_to_message_and_recipient(
    relay_with_sinks: RelayThread,
    hook_engine: Engine,
    tenants: dict[str, Tenant],
    keys: Keys,
    sinks: Sinks,
) -> None:
    relay = relay_with_sinks
    queue_id = send(relay, tenants["acme"], "gone@example.org", "fine@example.org")
    ids = recipient_ids(hook_engine, queue_id)
    ids_for = {"relay_message_id": queue_id}
    events = [
        sendgrid_event(
            "e1",
            "bounce",
            "gone@EXAMPLE.org",
            type="bounce",
            reason="550 5.1.1 no such user",
            relay_recipient_id=str(ids["gone@example.org"]),
            **ids_for,
        ),
        # Only the message id: the recipient is found by address within it.
        sendgrid_event("e2", "delivered", "fine@example.org", **ids_for),
        sendgrid_event("e3", "processed", "fine@example.org", **ids_for),  # not an event of ours
        sendgrid_event("e4", "bounce", "fine@example.org", type="blocked", **ids_for),
    ]
    response = post_sendgrid(relay, keys, events)
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 3, "duplicate": 0, "unmatched": 0}
    rows = stored(hook_engine)
    assert [(r.provider_event_id, r.type, r.bounce_class) for r in rows] == [
        ("e1", "bounce", "hard"),
        ("e2", "delivered", None),
        ("e4", "bounce", "soft"),
    ]
    assert {r.message_id for r in rows} == {queue_id}
    assert rows[0].recipient_id == ids["gone@example.org"]
    assert rows[1].recipient_id == ids["fine@example.org"]
    assert rows[0].detail == "550 5.1.1 no such user"
    # The sinks got the stored events once, with the ids as resolved.
    assert len(sinks.calls) == 1
    got = sinks.calls[0]
    assert [e.event.provider_event_id for e in got] == ["e1", "e2", "e4"]
    assert got[1].event.recipient_id == ids["fine@example.org"]
    assert got[0].event.bounce_class is BounceClass.HARD
    assert {e.account_id for e in got} == {rows[0].account_id}
    # A replay of the same events changes nothing and reaches no sink.
    again = post_sendgrid(relay, keys, events)
    assert again.json() == {"stored": 0, "duplicate": 3, "unmatched": 0}
    assert len(stored(hook_engine)) == 3
    assert len(sinks.calls) == 1
    assert relay.relay is not None
    counter = relay.relay.metrics.webhook_events
    assert counter.labels("sendgrid", "bounce", "stored")._value.get() == 2
    assert counter.labels("sendgrid", "bounce", "duplicate")._value.get() == 2


def test_bad_signature_stale_or_unsigned_sendgrid_posts_store_nothing(
    relay_with_sinks: RelayThread, hook_engine: Engine, tenants: dict[str, Tenant], keys: Keys
) -> None:
    relay = relay_with_sinks
    queue_id = send(relay, tenants["acme"], "gone@example.org")
    events = [
        sendgrid_event("e1", "bounce", "gone@example.org", type="bounce", relay_message_id=queue_id)
    ]
    tampered = post_sendgrid(relay, keys, events, tamper=True)
    assert tampered.status_code == 403
    assert tampered.json()["error"]["code"] == "forbidden"
    other_keys = Keys()
    assert post_sendgrid(relay, other_keys, events).status_code == 403
    stale = str(int(time.time()) - 301)
    response = post_sendgrid(relay, keys, events, timestamp=stale)
    assert response.status_code == 403 and "stale" in response.json()["error"]["message"]
    future = str(int(time.time()) + 400)
    assert post_sendgrid(relay, keys, events, timestamp=future).status_code == 403
    unsigned = httpx.post(url(relay, "tok-sg"), content=json.dumps(events), timeout=10)
    assert unsigned.status_code == 401
    assert unsigned.json()["error"]["code"] == "unauthorized"
    unknown = post_sendgrid(relay, keys, events, token="tok-nobody")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert stored(hook_engine) == []
    # The same events, signed and fresh, are taken.
    assert post_sendgrid(relay, keys, events).json()["stored"] == 1


def test_events_naming_another_accounts_message_or_recipient_are_not_stored(
    relay_with_sinks: RelayThread, hook_engine: Engine, tenants: dict[str, Tenant], keys: Keys
) -> None:
    relay = relay_with_sinks
    acme_id = send(relay, tenants["acme"], "a@example.org")
    beta_id = send(relay, tenants["beta"], "b@example.org")
    rival_id = send(relay, tenants["other"], "c@example.org")
    acme_rcpt = recipient_ids(hook_engine, acme_id)["a@example.org"]
    events = [
        # A message of a tenant outside this provider's tree (the rival agency's).
        sendgrid_event("x1", "spamreport", "c@example.org", relay_message_id=rival_id),
        # A recipient id of another message, with the right message id.
        sendgrid_event(
            "x2",
            "bounce",
            "b@example.org",
            type="bounce",
            relay_message_id=beta_id,
            relay_recipient_id=acme_rcpt,
        ),
        # The right ids, another address.
        sendgrid_event(
            "x3",
            "bounce",
            "someone@example.org",
            type="bounce",
            relay_message_id=acme_id,
            relay_recipient_id=acme_rcpt,
        ),
        # No ids at all: the address alone ties to nothing.
        sendgrid_event("x4", "bounce", "a@example.org", type="bounce"),
        # A message id that does not exist.
        sendgrid_event("x5", "bounce", "a@example.org", type="bounce", relay_message_id="nope"),
    ]
    response = post_sendgrid(relay, keys, events)
    assert response.json() == {"stored": 0, "duplicate": 0, "unmatched": 5}
    # The rival agency's own provider does take its tenant's event.
    rival = post_sendgrid(relay, keys, events[:1], token="tok-rival-sg")
    assert rival.json() == {"stored": 1, "duplicate": 0, "unmatched": 0}
    assert [r.provider_event_id for r in stored(hook_engine)] == ["x1"]


def sparkpost_batch(queue_id: str, rcpt_id: int | None, address: str, *ids: str) -> bytes:
    meta: dict[str, Any] = {"relay_message_id": queue_id}
    if rcpt_id is not None:
        meta["relay_recipient_id"] = str(rcpt_id)
    items: list[dict[str, Any]] = []
    for n, event_id in enumerate(ids):
        body = {
            "type": "bounce" if n == 0 else "spam_complaint",
            "event_id": event_id,
            "rcpt_to": address,
            "rcpt_meta": meta,
            "timestamp": str(int(time.time())),
            "bounce_class": "10",
            "raw_reason": "550 5.1.1 unknown user",
        }
        items.append({"msys": {"message_event": body}})
    items.append({"msys": {"track_event": {"type": "amp_open", "event_id": "z"}}})
    return json.dumps(items).encode()


def post_sparkpost(
    relay: RelayThread, body: bytes, batch: str, auth: tuple[str, str] | None
) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-MessageSystems-Batch-ID": batch}
    return httpx.post(url(relay, "tok-sp"), content=body, headers=headers, auth=auth, timeout=10)


def test_sparkpost_basic_auth_and_batches_taken_once(
    relay_with_sinks: RelayThread, hook_engine: Engine, tenants: dict[str, Tenant]
) -> None:
    relay = relay_with_sinks
    queue_id = send(relay, tenants["beta"], "gone@example.org")
    rcpt = recipient_ids(hook_engine, queue_id)["gone@example.org"]
    body = sparkpost_batch(queue_id, rcpt, "gone@example.org", "s1", "s2")
    user, password = SPARKPOST_KEY.split(":")
    assert post_sparkpost(relay, body, "b1", None).status_code == 401
    wrong = post_sparkpost(relay, body, "b1", (user, "guess"))
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    with Session(hook_engine) as session:
        assert session.scalar(select(func.count()).select_from(WebhookBatch)) == 0
    assert stored(hook_engine) == []
    good = post_sparkpost(relay, body, "b1", (user, password))
    assert good.json() == {"stored": 2, "duplicate": 0, "unmatched": 0}
    rows = stored(hook_engine)
    assert [(r.type, r.bounce_class, r.recipient_id) for r in rows] == [
        ("bounce", "hard", rcpt),
        ("complaint", None, rcpt),
    ]
    # SparkPost retries a batch by its id: taken once.
    assert post_sparkpost(relay, body, "b1", (user, password)).json()["stored"] == 0
    # Another batch repeating an event id: the event is still stored once.
    again = post_sparkpost(relay, body, "b2", (user, password))
    assert again.json() == {"stored": 0, "duplicate": 2, "unmatched": 0}
    assert len(stored(hook_engine)) == 2


def test_parsers_read_the_documented_formats() -> None:
    sg = sendgrid_events.parse_events(
        json.dumps(
            [
                {
                    "event": "group_unsubscribe",
                    "sg_event_id": "a",
                    "email": "x@y.z",
                    "timestamp": 1700000000,
                    "relay_recipient_id": 7,
                    "relay_message_id": "m",
                },
                {"event": "click", "sg_event_id": "b", "email": "x@y.z", "url": "https://u"},
                {"event": "dropped", "sg_event_id": "c", "email": "x@y.z", "reason": "Bounced"},
            ]
        ).encode()
    )
    assert [(e.type, e.recipient_id, e.detail) for e in sg] == [
        (EventType.UNSUBSCRIBE, 7, None),
        (EventType.CLICK, None, "https://u"),
        (EventType.DROPPED, None, "Bounced"),
    ]
    assert sg[0].at.timestamp() == 1700000000
    sp = sparkpost_events.parse_events(
        json.dumps(
            [
                {
                    "msys": {
                        "message_event": {
                            "type": "bounce",
                            "event_id": "1",
                            "bounce_class": "22",
                            "rcpt_to": "x@y.z",
                        }
                    }
                },
                {
                    "msys": {
                        "unsubscribe_event": {
                            "type": "link_unsubscribe",
                            "event_id": "2",
                            "rcpt_to": "x@y.z",
                        }
                    }
                },
                {
                    "msys": {
                        "message_event": {
                            "type": "out_of_band",
                            "event_id": "3",
                            "bounce_class": "30",
                            "rcpt_to": "x@y.z",
                        }
                    }
                },
                {
                    "msys": {
                        "track_event": {
                            "type": "click",
                            "event_id": "4",
                            "rcpt_to": "x@y.z",
                            "timestamp": "2024-01-02T03:04:05.000Z",
                        }
                    }
                },
            ]
        ).encode()
    )
    assert [(e.type, e.bounce_class) for e in sp] == [
        (EventType.BOUNCE, BounceClass.SOFT),
        (EventType.UNSUBSCRIBE, None),
        (EventType.BOUNCE, BounceClass.HARD),
        (EventType.CLICK, None),
    ]
    assert sp[3].at.year == 2024


# -- the command line and the API -------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from relay.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_provider_webhook_prints_the_url_and_webhook_key_is_sealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keys: Keys
) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert run(capsys, "account", "create", "agency")[0] == 0
    for name, kind in (("sg", "sendgrid"), ("sp", "sparkpost"), ("box", "outbox")):
        extra = ["--directory", str(tmp_path / "out")] if kind == "outbox" else ["--api-key", "k"]
        argv = ("provider", "add", name, "--account", "agency", "--kind", kind, *extra)
        assert run(capsys, *argv, "--no-check")[0] == 0
    code, _, err = run(capsys, "provider", "webhook", "sg")
    assert code == 1 and "[webhooks] public_url is not set" in err
    monkeypatch.setenv("RELAY_WEBHOOKS_PUBLIC_URL", "https://hooks.example.net/")
    code, out, _ = run(capsys, "provider", "webhook", "sg")
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith("URL: https://hooks.example.net/hooks/")
    assert "Signed Event Webhook" in out and "No webhook key is set yet" in out
    # The token is made once: the same URL the second time.
    assert run(capsys, "provider", "webhook", "sg")[1].splitlines()[0] == first
    code, _, err = run(capsys, "provider", "webhook", "box")
    assert code == 1 and "no event webhook" in err
    # The key alone needs no live check; it is checked for its shape and never shown.
    code, _, err = run(capsys, "provider", "edit", "sg", "--webhook-key", "not a key")
    assert code == 1 and "Verification Key" in err
    assert run(capsys, "provider", "edit", "sg", "--webhook-key", keys.public)[0] == 0
    code, _, err = run(capsys, "provider", "edit", "sp", "--webhook-key", "nocolon")
    assert code == 1 and "USER:PASSWORD" in err
    assert run(capsys, "provider", "edit", "sp", "--webhook-key", SPARKPOST_KEY)[0] == 0
    code, out, _ = run(capsys, "provider", "show", "sp", "--format", "json")
    assert SPARKPOST_KEY not in out and "s3cret" not in out and "webhook_key" in out
    code, out, _ = run(capsys, "provider", "webhook", "sp")
    assert "Basic Auth" in out and "No webhook key" not in out
    assert keys.public not in run(capsys, "provider", "show", "sg")[1]


def test_api_webhook_url_and_key(
    relay_with_sinks: RelayThread, hook_engine: Engine, keys: Keys
) -> None:
    from relay.service import tokens

    token = tokens.create_token(hook_engine, None, operator=True).token
    assert relay_with_sinks.relay is not None
    base = f"http://127.0.0.1:{relay_with_sinks.relay.admin_port}/api/v1"
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=10) as api:
        shown = api.get("/providers/sp/webhook").json()
        assert shown["url"] == "https://hooks.relay.test/hooks/tok-sp"
        assert shown["key_set"] is True and shown["kind"] == "sparkpost"
        bad = api.patch("/providers/sp", json={"webhook_key": "nocolon"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "webhook_key"
        ok = api.patch("/providers/sp", json={"webhook_key": "new:password-2"})
        assert ok.status_code == 200 and ok.json()["checked"] is False
        detail = api.get("/providers/sp").json()
        assert "password-2" not in json.dumps(detail)


def test_queue_show_and_the_api_list_a_messages_events(
    relay_with_sinks: RelayThread,
    hook_settings: Settings,
    hook_engine: Engine,
    tenants: dict[str, Tenant],
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from relay.service import tokens

    relay = relay_with_sinks
    queue_id = send(relay, tenants["acme"], "gone@example.org")
    events = [
        sendgrid_event(
            "q1",
            "bounce",
            "gone@example.org",
            type="bounce",
            reason="no such user",
            relay_message_id=queue_id,
        )
    ]
    assert post_sendgrid(relay, keys, events).json()["stored"] == 1
    monkeypatch.setenv("RELAY_DATABASE_URL", hook_settings.database.url)
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(hook_settings.var_path))
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    code, out, _ = run(capsys, "queue", "show", queue_id, "--format", "json")
    assert code == 0
    shown = json.loads(out)["events"]
    assert [
        (e["type"], e["address"], e["bounce_class"], e["detail"], e["provider"]) for e in shown
    ] == [("bounce", "gone@example.org", "hard", "no such user", "sg")]
    token = tokens.create_token(hook_engine, None, operator=True).token
    assert relay.relay is not None
    base = f"http://127.0.0.1:{relay.relay.admin_port}/api/v1"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as api:
        detail = api.get(f"/queue/{queue_id}").json()
    assert [(e["type"], e["bounce_class"], e["provider"]) for e in detail["events"]] == [
        ("bounce", "hard", "sg")
    ]


def test_webhook_settings_are_checked() -> None:
    from relay.core.errors import ConfigError
    from relay.core.settings import load_settings

    ok = load_settings(
        None,
        env={"RELAY_WEBHOOKS_PUBLIC_URL": "https://relay.example.net"},
        overrides={"webhooks": {"listen": "0.0.0.0:8443"}},
    )
    assert ok.webhooks.listen == "0.0.0.0:8443"
    assert ok.webhooks.public_url == "https://relay.example.net"
    assert load_settings(None, env={}).webhooks.listen == ""  # off by default
    with pytest.raises(ConfigError, match=r"\[webhooks\] listen: '8443' is not host:port"):
        load_settings(None, env={}, overrides={"webhooks": {"listen": "8443"}})
    for bad in ("relay.example.net", "ftp://relay.example.net", "https://"):
        with pytest.raises(ConfigError, match="is not an absolute http"):
            load_settings(None, env={}, overrides={"webhooks": {"public_url": bad}})
