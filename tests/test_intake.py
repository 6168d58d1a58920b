"""The intake stage without sockets: ``Intake.accept`` on a real SQLite database
with the real policy and spool. Accepted, each policy outcome, the content
refusals, a storage failure (451), the header rewrite, and the worker thread
for a big message."""

from __future__ import annotations

import email
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email import policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from relay import intake as intake_module
from relay.app import make_hasher
from relay.auth.authenticator import Authenticator, Identity
from relay.core.replies import SENDER_NOT_VERIFIED, SPOOL_UNAVAILABLE, Reply
from relay.core.settings import Settings
from relay.intake import OFF_LOOP_BYTES, Accepted, Arrival, Intake, IntakeConfig, Reading
from relay.queue.spool import Spool
from relay.routing.policy import Policy
from relay.service import accounts
from relay.store.engine import make_engine
from relay.store.models import Account, Message, MessageContent, Recipient, Usage
from tests.support import PASSWORD, Tenant, message

RCPT = ["bob@example.org"]
ARRIVAL = Arrival("client.test", "[192.0.2.7]", "ESMTPSA", scanned=True)


@dataclass
class Stage:
    intake: Intake
    spool: Spool
    identity: Identity
    events: list[Accepted]


async def login(settings: Settings, engine: Engine, username: str) -> Identity:
    result = await Authenticator(engine, settings.auth, make_hasher(settings)).login(
        username, PASSWORD, "192.0.2.7"
    )
    assert result.identity is not None
    return result.identity


def build(settings: Settings, engine: Engine, spool: Spool, identity: Identity) -> Stage:
    events: list[Accepted] = []
    config = IntakeConfig(
        "relay.test",
        settings.limits.max_header_bytes,
        settings.limits.max_headers,
        observers=[events.append],
    )
    return Stage(Intake(config, Policy(engine, settings.policy), spool), spool, identity, events)


@pytest.fixture
async def stage(settings: Settings, engine: Engine, tenant: Tenant) -> AsyncIterator[Stage]:
    spool = Spool(engine, settings.queue.lifetime)
    yield build(settings, engine, spool, await login(settings, engine, tenant.username))
    await spool.aclose()


def stored(engine: Engine, queue_id: str) -> tuple[Message, bytes]:
    with Session(engine) as session:
        row = session.get_one(Message, queue_id)
        data = session.get_one(MessageContent, queue_id).data
        session.expunge_all()
    return row, bytes(data)


def message_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(Message.id)).all())


def set_policy(engine: Engine, account: str, value: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(update(Account).where(Account.name == account).values(unverified_policy=value))


async def test_accepted_is_queued_with_recipients_and_usage(
    stage: Stage, engine: Engine, tenant: Tenant
) -> None:
    raw = message(tenant.username, cc="carol@example.org")
    rcpts = ["bob@example.org", "carol@example.org", "dave@example.org"]
    queue_id = await stage.intake.accept(stage.identity, tenant.username, rcpts, raw, ARRIVAL)
    assert isinstance(queue_id, str)
    row, _ = stored(engine, queue_id)
    assert (row.state, row.reason, row.mail_from) == ("queued", None, tenant.username)
    assert row.provider_id is not None and row.header_from == tenant.username
    with engine.connect() as conn:
        kinds = dict(conn.execute(select(Recipient.address, Recipient.kind)).all())
        usage = set(conn.execute(select(Usage.kind, Usage.event, Usage.recipients)).all())
    assert kinds == {"bob@example.org": "to", "carol@example.org": "cc", "dave@example.org": "bcc"}
    assert usage == {("to", "accepted", 1), ("cc", "accepted", 1), ("bcc", "accepted", 1)}
    [event] = stage.events
    assert (event.queue_id, event.account, event.state) == (queue_id, tenant.account, "queued")
    assert event.size == row.size and event.seconds >= 0


@pytest.mark.parametrize(
    ("policy_value", "state"), [("drop", "dropped"), ("pause", "paused"), (None, "dropped")]
)
async def test_unverified_sender_dropped_or_paused_is_accepted(
    stage: Stage, engine: Engine, tenant: Tenant, policy_value: str | None, state: str
) -> None:
    set_policy(engine, tenant.account, policy_value)  # None: the default, auto (drop)
    raw = message("ceo@other.test")
    queue_id = await stage.intake.accept(stage.identity, tenant.username, RCPT, raw, ARRIVAL)
    assert isinstance(queue_id, str)
    row, _ = stored(engine, queue_id)
    assert row.state == state
    assert row.reason == "sender ceo@other.test not verified for account acme"
    assert [e.state for e in stage.events] == [state]


async def test_campaign_mail_from_unverified_sender_is_paused_by_default(
    stage: Stage, engine: Engine, tenant: Tenant
) -> None:
    raw = message("ceo@other.test", extra="X-Relay-Campaign: spring\r\n")
    queue_id = await stage.intake.accept(stage.identity, tenant.username, RCPT, raw, ARRIVAL)
    assert isinstance(queue_id, str)
    row, _ = stored(engine, queue_id)
    assert (row.state, row.campaign) == ("paused", "spring")


async def test_reject_queues_nothing(stage: Stage, engine: Engine, tenant: Tenant) -> None:
    set_policy(engine, tenant.account, "reject")
    raw = message("ceo@other.test")
    reply = await stage.intake.accept(stage.identity, tenant.username, RCPT, raw, ARRIVAL)
    assert isinstance(reply, Reply)
    assert (reply.code, reply.status) == (SENDER_NOT_VERIFIED.code, SENDER_NOT_VERIFIED.status)
    assert reply.text.startswith("Sender ceo@other.test is not verified for this account")
    assert message_count(engine) == 0
    assert [(e.queue_id, e.state) for e in stage.events] == [(None, "rejected")]


async def test_no_route_is_paused(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    accounts.create_account(engine, "solo")
    accounts.add_domain(engine, "solo.test", "solo")
    hasher = make_hasher(settings)
    accounts.create_credential(engine, hasher, "app@solo.test", PASSWORD, "transactional")
    accounts.verify_sender(engine, "solo.test", "solo")
    spool = Spool(engine, settings.queue.lifetime)
    try:
        solo = build(settings, engine, spool, await login(settings, engine, "app@solo.test"))
        raw = message("app@solo.test")
        queue_id = await solo.intake.accept(solo.identity, "app@solo.test", RCPT, raw, ARRIVAL)
    finally:
        await spool.aclose()
    assert isinstance(queue_id, str)
    row, _ = stored(engine, queue_id)
    assert (row.state, row.reason, row.provider_id) == ("paused", "no provider", None)


FROM = "From: app@acme.test\r\n"


@pytest.mark.parametrize(
    ("raw", "scanned", "expected"),
    [
        (
            FROM + "From: ceo@other.test\r\n\r\nHi\r\n",
            True,
            "550 5.6.0 Message has more than one From header field",
        ),
        (
            FROM + "Sender: a@acme.test\r\nsender : b@other.test\r\n\r\nHi\r\n",
            True,
            "550 5.6.0 Message has more than one Sender header field",
        ),
        ("no header section at all\r\n\r\nHi\r\n", True, "550 5.6.0 Message has no valid header"),
        (
            "From: a@[\r\n\r\nHi\r\n",
            True,
            "550 5.6.0 Message header malformed: From or Sender field cannot be read",
        ),
        (FROM + "\r\nHi\x00there\r\n", True, "550 5.6.0 Message contains NUL bytes"),
        (FROM + "\r\nHi\n.\r\nthere\r\n", False, "550 5.5.2 Bare <CR> or <LF> before '.'"),
    ],
    ids=["second-from", "second-sender", "no-header", "unreadable-from", "nul", "smuggling"],
)
async def test_content_refusals_queue_nothing(
    stage: Stage, engine: Engine, raw: str, scanned: bool, expected: str
) -> None:
    arrival = Arrival(ARRIVAL.helo, ARRIVAL.peer, ARRIVAL.protocol, scanned=scanned)
    result = await stage.intake.accept(stage.identity, "app@acme.test", RCPT, raw.encode(), arrival)
    assert isinstance(result, Reply) and str(result).startswith(expected)
    assert message_count(engine) == 0 and stage.events == []


async def test_header_limits_are_checked(
    stage: Stage, settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    config = IntakeConfig("relay.test", 64, 3)
    small = Intake(config, Policy(engine, settings.policy), stage.spool)
    raw = message(tenant.username)  # From, To, Subject: three fields, over 64 bytes
    assert str(await small.accept(stage.identity, tenant.username, RCPT, raw)).startswith(
        "552 5.3.4 Message header section too big (64 bytes, max_header_bytes)"
    )
    config.max_header_bytes = 1000
    raw = message(tenant.username, extra="X-One: 1\r\n")
    assert str(await small.accept(stage.identity, tenant.username, RCPT, raw)).startswith(
        "552 5.3.4 Message has too many header fields (3, max_headers)"
    )
    assert message_count(engine) == 0


async def test_storage_failure_is_451_and_nothing_queued(
    settings: Settings, engine: Engine, tenant: Tenant, tmp_path: Path
) -> None:
    # A spool on a database without tables: the write fails, as a full disk would.
    broken = make_engine(f"sqlite:///{tmp_path}/no-tables.db")
    spool = Spool(broken, settings.queue.lifetime)
    try:
        stage = build(settings, engine, spool, await login(settings, engine, tenant.username))
        raw = message(tenant.username)
        reply = await stage.intake.accept(stage.identity, tenant.username, RCPT, raw, ARRIVAL)
    finally:
        await spool.aclose()
        broken.dispose()
    assert reply == SPOOL_UNAVAILABLE and str(reply).startswith("451 4.3.0")
    assert not spool.healthy
    assert message_count(engine) == 0
    assert [(e.queue_id, e.state) for e in stage.events] == [(None, "tempfail")]


async def test_header_rewrite(stage: Stage, engine: Engine, tenant: Tenant) -> None:
    raw = message(
        tenant.username,
        bcc="dave@example.org",
        extra="X-Relay-Campaign: spring\r\n",
        body="Body line.\r\n",
    )
    queue_id = await stage.intake.accept(stage.identity, tenant.username, RCPT, raw, ARRIVAL)
    assert isinstance(queue_id, str)
    row, data = stored(engine, queue_id)
    assert row.campaign == "spring"
    assert data.startswith(b"Received: from client.test ([192.0.2.7])\r\n\tby relay.test (Relay) ")
    parsed = email.message_from_bytes(data, policy=policy.default)
    received = str(parsed["Received"])
    assert f"with ESMTPSA id {queue_id}" in received and "for <bob@example.org>" in received
    assert "Bcc" not in parsed and "X-Relay-Campaign" not in parsed
    assert b"dave@example.org" not in data and b"spring" not in data
    assert parsed["Message-ID"].endswith("@relay.test>") and parsed["Date"]
    assert data.endswith(b"\r\n\r\nBody line.\r\n")
    # Everything else is as the client sent it.
    assert b"From: Sender <app@acme.test>\r\nTo: bob@example.org\r\n" in data


async def test_received_names_no_recipient_for_several_and_keeps_ids(
    stage: Stage, engine: Engine, tenant: Tenant
) -> None:
    extra = "Message-ID: <keep@acme.test>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    raw = message(tenant.username, extra=extra)
    arrival = Arrival("bad name!", "[192.0.2.7]", "UTF8SMTPA", scanned=True)
    rcpts = ["bob@example.org", "carol@example.org"]
    queue_id = await stage.intake.accept(stage.identity, tenant.username, rcpts, raw, arrival)
    assert isinstance(queue_id, str)
    _, data = stored(engine, queue_id)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"Received: from [192.0.2.7] (helo=bad name!)\r\n")
    assert b"with UTF8SMTPA id" in head and b"for <" not in head
    assert head.count(b"Message-ID:") == 1 and b"<keep@acme.test>" in head
    assert head.count(b"\r\nDate:") == 1


async def test_unscanned_input_is_normalised(stage: Stage, engine: Engine, tenant: Tenant) -> None:
    raw = message(tenant.username).replace(b"\r\n", b"\n")
    queue_id = await stage.intake.accept(stage.identity, tenant.username, RCPT, raw)
    assert isinstance(queue_id, str)
    _, data = stored(engine, queue_id)
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert data.startswith(b"Received: from unknown ([unknown])")


def spy_on_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    threads: list[int] = []
    real: Callable[..., Reading] = intake_module.read_message

    def spy(*args: Any) -> Reading:
        threads.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(intake_module, "read_message", spy)
    return threads


async def test_big_message_is_read_on_a_worker_thread(
    stage: Stage, engine: Engine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_on_read(monkeypatch)
    small = message(tenant.username)
    big = message(tenant.username) + (b"y" * 998 + b"\r\n") * (OFF_LOOP_BYTES // 1000 + 1)
    for raw in (small, big):
        queue_id = await stage.intake.accept(stage.identity, tenant.username, RCPT, raw, ARRIVAL)
        assert isinstance(queue_id, str)
        _, data = stored(engine, queue_id)
        assert data.endswith(raw[raw.index(b"\r\n\r\n") :])  # the body as sent
    loop_thread = threading.get_ident()
    assert threads[0] == loop_thread and threads[1] != loop_thread
