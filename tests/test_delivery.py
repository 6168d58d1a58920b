"""Delivery end to end: SMTP in, the emulated provider out, over real sockets.

API first, SMTP when the API fails; retries with backoff; partial delivery
that never re-sends; expiry; every attempt recorded.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time
from dataclasses import replace

import pytest
from sqlalchemy import Engine, select

from relay.core.settings import Settings
from relay.delivery.worker import backoff
from relay.emulator import Emulator
from relay.service import providers
from relay.store.models import Attempt, Message, Recipient
from tests.emulated import API_KEY, add_emulated_provider
from tests.support import RelayThread, Tenant, connect, message


def route_to(
    settings: Settings, engine: Engine, emulator: Emulator, kind: str, **options: object
) -> str:
    name = f"{kind}-emu"
    add_emulated_provider(settings, engine, emulator, name, kind, "agency", **options)
    providers.set_default(engine, name, "acme")
    return name


def send(relay: RelayThread, tenant: Tenant, rcpts: list[str], data: bytes) -> str:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        client.docmd("MAIL", f"FROM:<{tenant.username}>")
        for rcpt in rcpts:
            client.docmd("RCPT", f"TO:<{rcpt}>")
        code, reply = client.data(data)
    assert code == 250
    return reply.decode().rsplit(" ", 1)[1]


def wait_for(
    engine: Engine, queue_id: str, states: tuple[str, ...], timeout: float = 15
) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            row = conn.execute(select(Message).where(Message.id == queue_id)).first()
        if row is not None and row.state in states:
            return row  # type: ignore[return-value]
        time.sleep(0.05)
    raise AssertionError(f"{queue_id} never reached {states}")


def attempts(engine: Engine, queue_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [
            (t, r)
            for t, r in conn.execute(
                select(Attempt.transport, Attempt.result)
                .where(Attempt.message_id == queue_id)
                .order_by(Attempt.id)
            ).all()
        ]


RCPTS = ["to@example.org", "cc@example.org", "hidden@example.org"]


def mail(tenant: Tenant) -> bytes:
    return message(tenant.username, to="To <to@example.org>", cc="cc@example.org")


def test_sendgrid_api_carries_the_classes(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    route_to(settings, engine, emulator, "sendgrid", ip_pool="transactional")
    queue_id = send(relay, tenant, RCPTS, mail(tenant))
    wait_for(engine, queue_id, ("delivered",))
    (body,) = emulator.sendgrid.accepted()
    people = body["personalizations"][0]
    assert [p["email"] for p in people["to"]] == ["to@example.org"]
    assert [p["email"] for p in people["cc"]] == ["cc@example.org"]
    assert [p["email"] for p in people["bcc"]] == ["hidden@example.org"]
    assert body["ip_pool_name"] == "transactional"
    assert attempts(engine, queue_id) == [("api", "delivered")]


def test_sparkpost_api_keeps_the_to_line(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    route_to(settings, engine, emulator, "sparkpost")
    queue_id = send(relay, tenant, RCPTS, mail(tenant))
    wait_for(engine, queue_id, ("delivered",))
    (body,) = emulator.sparkpost.accepted()
    assert list(body["content"]) == ["email_rfc822"]
    assert {r["address"]["email"] for r in body["recipients"]} == set(RCPTS)
    assert {r["address"]["header_to"] for r in body["recipients"]} == {"To <to@example.org>"}
    assert body["options"]["perform_substitutions"] is False


@pytest.mark.parametrize("fault", ["500", "401", "429", "unreachable"])
def test_api_failure_falls_back_to_smtp(
    relay: RelayThread,
    tenant: Tenant,
    settings: Settings,
    engine: Engine,
    emulator: Emulator,
    fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    options: dict[str, object] = {"timeout": 1.0}
    if fault == "unreachable":  # connection refused: provably not taken
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            options["api_url"] = f"http://127.0.0.1:{closed.getsockname()[1]}"
    elif fault == "429":
        emulator.sendgrid.rate_limit()
    else:
        emulator.sendgrid.fail(int(fault))
    route_to(settings, engine, emulator, "sendgrid", **options)
    queue_id = send(relay, tenant, RCPTS, mail(tenant))
    wait_for(engine, queue_id, ("delivered",))
    (sunk,) = emulator.smtp.messages
    assert sorted(sunk.rcpt_tos) == sorted(RCPTS)
    assert b"hidden@example.org" not in sunk.data.split(b"\r\n\r\n")[0]
    result = {"500": "transient", "401": "credentials"}.get(fault, "transient")
    assert attempts(engine, queue_id) == [("api", result), ("smtp", "delivered")]
    assert API_KEY not in caplog.text  # not in any log line, at any level
    with engine.connect() as conn:
        texts = " ".join(t or "" for t in conn.execute(select(Attempt.text)).scalars())
    assert API_KEY not in texts


def test_api_timeout_is_unknown_and_retried_on_the_api_only(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    # The API answers after the read timeout (it took the message at 3 s):
    # falling back to SMTP then would make two copies.
    route_to(settings, engine, emulator, "sendgrid", timeout=1.0)
    emulator.sendgrid.stall(3)
    emulator.sendgrid.fail(503)  # the next request: would fall back, were it not pinned
    queue_id = send(relay, tenant, RCPTS, mail(tenant))
    deferred = wait_for(engine, queue_id, ("deferred",))
    assert "no answer" in (deferred.reason or "")
    # The test settings retry after about a second (retry_schedule = [1, 2, 4]).
    wait_for(engine, queue_id, ("delivered",))
    assert attempts(engine, queue_id) == [
        ("api", "unknown"),
        ("api", "transient"),  # the pinned pass: the API only
        ("api", "delivered"),
    ]
    assert emulator.smtp.messages == []  # never by another transport


def test_retry_after_holds_when_smtp_fails_too(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    route_to(settings, engine, emulator, "sendgrid")
    emulator.sendgrid.rate_limit(reset_in=600)
    emulator.smtp.fail("mail", "451 4.3.0 try later")
    before = dt.datetime.now(dt.UTC)
    queue_id = send(relay, tenant, ["to@example.org"], mail(tenant))
    msg = wait_for(engine, queue_id, ("deferred",))
    assert attempts(engine, queue_id) == [("api", "transient"), ("smtp", "transient")]
    # Retry-After (about 600 s), not the schedule's one second.
    assert msg.next_attempt_at >= before + dt.timedelta(seconds=500)


def test_no_fallback_when_the_api_refuses_the_recipients(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    route_to(settings, engine, emulator, "sparkpost")
    emulator.sparkpost.suppress(*RCPTS)
    queue_id = send(relay, tenant, RCPTS, mail(tenant))
    msg = wait_for(engine, queue_id, ("failed",))
    assert emulator.smtp.messages == []
    assert [t for t, _ in attempts(engine, queue_id)] == ["api"]
    assert msg.reason


def test_transient_smtp_failure_is_retried_later(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    route_to(settings, engine, emulator, "smtp")
    emulator.smtp.fail("mail", "451 4.3.0 try later")
    queue_id = send(relay, tenant, ["to@example.org"], mail(tenant))
    deferred = wait_for(engine, queue_id, ("deferred",))
    assert "451" in (deferred.reason or "")
    # The test settings retry after about a second (retry_schedule = [1, 2, 4]).
    wait_for(engine, queue_id, ("delivered",))
    assert attempts(engine, queue_id) == [("smtp", "transient"), ("smtp", "delivered")]


def test_partial_delivery_never_resends(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    route_to(settings, engine, emulator, "smtp")
    emulator.smtp.reject("cc@example.org", "450 4.2.1 mailbox busy")
    emulator.smtp.reject("hidden@example.org", "550 5.1.1 no such user")
    queue_id = send(relay, tenant, RCPTS, mail(tenant))
    wait_for(engine, queue_id, ("deferred",))
    emulator.smtp.rejections.clear()
    msg = wait_for(engine, queue_id, ("delivered",))
    deliveries = [sorted(m.rcpt_tos) for m in emulator.smtp.messages]
    assert deliveries == [["to@example.org"], ["cc@example.org"]]
    with engine.connect() as conn:
        states = dict(conn.execute(select(Recipient.address, Recipient.state)).all())
    assert states == {
        "to@example.org": "delivered",
        "cc@example.org": "delivered",
        "hidden@example.org": "failed",
    }
    assert msg.state == "delivered"


def test_expired_message_fails(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator
) -> None:
    settings = replace(settings, queue=replace(settings.queue, lifetime=2.0))
    route_to(settings, engine, emulator, "smtp")
    emulator.smtp.fail("mail", "451 4.3.0 try later", count=100)
    thread = RelayThread(settings, engine).start()
    try:
        queue_id = send(thread, tenant, ["to@example.org"], mail(tenant))
        msg = wait_for(engine, queue_id, ("failed",))
        assert (msg.reason or "").startswith("expired")
    finally:
        thread.stop()


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    schedule = (60.0, 300.0, 900.0)
    assert backoff(schedule, 1, rng=lambda: 0.5) == 60.0
    assert backoff(schedule, 2, rng=lambda: 0.0) == 240.0  # -20%
    assert backoff(schedule, 3, rng=lambda: 1.0) == pytest.approx(1080.0)  # +20%
    assert backoff(schedule, 9, rng=lambda: 0.5) == 900.0  # the last step repeats
    assert backoff(schedule, 1, retry_after=500, rng=lambda: 0.5) == 500.0


def test_queue_retry_makes_a_deferred_message_due(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    from relay.service.queue import retry_message

    route_to(settings, engine, emulator, "smtp")
    emulator.smtp.fail("mail", "451 4.3.0 try later")
    queue_id = send(relay, tenant, ["to@example.org"], mail(tenant))
    wait_for(engine, queue_id, ("deferred",))
    with engine.begin() as conn:  # push the retry far away, as a long backoff would
        conn.execute(
            Message.__table__.update()
            .where(Message.id == queue_id)
            .values(next_attempt_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
        )
    retry_message(engine, queue_id)
    wait_for(engine, queue_id, ("delivered",), timeout=5)
