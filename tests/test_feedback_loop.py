"""The feedback loop end to end (issue 12), on both databases, with no mocks.

A real relay (SMTP in, delivery workers, the public webhook listener) sends
through the emulated SendGrid, which posts signed events back to the relay's
webhook URL as SendGrid does. Mail to a bouncing address comes back as a hard
bounce; the next message to it is suppressed (the others in that message are
delivered, the suppressed one is not charged); a forged post and a replayed
one change nothing; the one-click unsubscribe POST suppresses; complaints
push the account over its threshold, and it is suspended and told so.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, func, select

from relay.core.crypto import secret_box
from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.service import account_settings, providers
from relay.store.models import Account, Event, Notification, Recipient, Suppression, Usage
from tests.support import RelayThread, Tenant, connect, make_settings, message
from tests.test_delivery import route_to, send, wait_for

TEST_ADDRESS = "ops@agency.test"
BOSS = "boss@acme.test"


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
        # A small floor so a handful of messages is judged; the bounce limits out
        # of the way, so the complaints are what suspends the account.
        reputation={"min_volume": 4, "bounce_warn": 0.9, "bounce_suspend": 0.95},
    )


@pytest.fixture
def hook_url(settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator) -> str:
    """acme sends through the emulated SendGrid, whose events come back signed."""
    route_to(settings, engine, emulator, "sendgrid", test_address=TEST_ADDRESS)
    box = secret_box(settings)
    config = providers.load_config(engine, box, "sendgrid-emu")
    config.secrets["webhook_key"] = emulator.sendgrid_events_key
    providers.save_edit(engine, box, config)
    url = providers.webhook(engine, box, "sendgrid-emu", settings.webhooks.public_url).url
    emulator.set_events_url("sendgrid", url)
    account_settings.edit_account(
        engine, box, "acme", account_settings.AccountChanges(notify=[BOSS], unsubscribe="on")
    )
    return url


@pytest.fixture
def served(settings: Settings, engine: Engine, hook_url: str) -> Iterator[RelayThread]:
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


def until(check: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def count(engine: Engine, model: type, *where: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar())


def suppressed(engine: Engine, address: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(Suppression.reason).where(Suppression.address == address)
        ).scalar()


def sendgrid_post(
    url: str, body: bytes, key: ec.EllipticCurvePrivateKey | None, emulator: Emulator
) -> int:
    """Post a batch as SendGrid does: signed with the emulator's key, or with ``key``."""
    stamp = str(int(time.time()))
    if key is None:
        signature = emulator.events.sign(stamp, body)
    else:
        import base64

        der = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        signature = base64.b64encode(der).decode()
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def test_the_loop_end_to_end(
    served: RelayThread,
    tenant: Tenant,
    settings: Settings,
    engine: Engine,
    emulator: Emulator,
    hook_url: str,
) -> None:
    gone, friend = "bounce+gone@example.org", "friend@example.org"

    # 1. Mail to a bouncing address: the signed bounce arrives and suppresses it.
    first = send(served, tenant, [gone, "ok@example.org"], message(tenant.username, to=gone))
    wait_for(engine, first, ("delivered",))
    emulator.wait_for_events()
    until(lambda: suppressed(engine, gone) == "hard_bounce", "the bounce suppressed")

    # 2. The next message to it: the others go, the suppressed one is neither
    #    sent nor charged.
    second = send(served, tenant, [gone, friend], message(tenant.username, to=f"{gone}, {friend}"))
    wait_for(engine, second, ("delivered",))
    body = emulator.sendgrid.accepted()[-1]
    sent_to = {p["email"] for pers in body["personalizations"] for p in pers.get("to", [])}
    assert sent_to == {friend}
    with engine.connect() as conn:
        states = dict(
            conn.execute(
                select(Recipient.address, Recipient.state).where(Recipient.message_id == second)
            ).all()
        )
        ledger = {
            (event, n)
            for event, n in conn.execute(
                select(Usage.event, Usage.recipients).where(Usage.message_id == second)
            ).all()
        }
    assert states == {gone: "suppressed", friend: "delivered"}
    assert ("accepted", 1) in ledger and ("suppressed", 1) in ledger
    assert not any(event == "accepted" and n > 1 for event, n in ledger)

    # 3. A forged post and a replayed one change nothing.
    emulator.wait_for_events()
    stored = count(engine, Event)
    replay = json.dumps(emulator.events.posted[-1].events).encode()
    forger = ec.generate_private_key(ec.SECP256R1())
    assert sendgrid_post(hook_url, replay, forger, emulator) == 403
    assert sendgrid_post(hook_url, replay, None, emulator) == 200  # a replay: all duplicates
    assert count(engine, Event) == stored

    # 4. One-click unsubscribe: the link in the delivered campaign mail, GET
    #    changes nothing, POST suppresses (once).
    fan = "fan@example.org"
    campaign = message(tenant.username, to=fan, extra="X-Relay-Campaign: spring\r\n")
    third = send(served, tenant, [fan], campaign)
    wait_for(engine, third, ("delivered",))
    headers = emulator.sendgrid.accepted()[-1]["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    match = re.fullmatch(r"<(http://127\.0\.0\.1:\d+/u/[^>]+)>", headers["List-Unsubscribe"])
    assert match, headers
    link = match.group(1)
    assert httpx.get(link, timeout=10).status_code == 200
    assert suppressed(engine, fan) is None
    for _ in range(2):
        response = httpx.post(link, data={"List-Unsubscribe": "One-Click"}, timeout=10)
        assert response.status_code == 200
    assert suppressed(engine, fan) == "unsubscribe"
    assert count(engine, Suppression, Suppression.address == fan) == 1

    # 5. Complaints push the account over its complaint limit: suspended, and told.
    # (One complaint among five delivered is 20%, far past the 0.3% limit.)
    victim = "complaint+1@example.org"
    queued = send(served, tenant, [victim], message(tenant.username, to=victim))
    wait_for(engine, queued, ("delivered",))
    emulator.wait_for_events()

    def suspended() -> str | None:
        with engine.connect() as conn:
            return conn.execute(
                select(Account.suspended_reason).where(Account.name == "acme")
            ).scalar()

    until(lambda: suspended() is not None, "acme suspended")
    assert "complaint" in (suspended() or "")
    until(
        lambda: count(
            engine,
            Notification,
            Notification.kind == "suspended",
            Notification.mail_state == "sent",
        ),
        "the suspension mailed",
    )
    told = [
        b
        for b in emulator.sendgrid.accepted()
        if any(p["email"] == BOSS for pers in b["personalizations"] for p in pers.get("to", []))
    ]
    assert told and told[-1]["from"]["email"] == TEST_ADDRESS

    # 6. Its new mail is refused at MAIL, naming the rate and the limit.
    with connect(served, "submission", login=(tenant.username, tenant.password)) as client:
        code, reply = client.docmd("MAIL", f"FROM:<{tenant.username}>")
    assert code == 550 and b"5.7.1" in reply and b"complaint" in reply
