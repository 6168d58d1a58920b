"""API first, SMTP second: fallback rules, attempts, the circuit breaker."""

from __future__ import annotations

import socket

import pytest

from relay.core.errors import CredentialsError, PermanentError, TransientError
from relay.core.outcomes import Attempt
from relay.emulator import Emulator
from relay.providers.chain import CircuitBreaker, OutcomeUnknown

from . import corpus
from .conftest import FakeClock, MakeProvider
from .corpus import outbound


def summary(attempts: list[Attempt]) -> list[tuple[str, str, str | None]]:
    return [(a.transport, a.result, a.code) for a in attempts]


@pytest.mark.parametrize("kind", ["sendgrid", "sparkpost", "mailgun"])
async def test_api_success_is_one_attempt(
    kind: str, emulator: Emulator, make_provider: MakeProvider
):
    attempts: list[Attempt] = []
    receipt = await make_provider(kind).send(outbound(corpus.plain()), on_attempt=attempts.append)
    assert receipt.transport == "api"
    assert summary(attempts) == [("api", "delivered", None)]
    assert attempts[0].provider == f"test-{kind}" and attempts[0].queue_id == "Q1"
    assert attempts[0].provider_message_id == receipt.provider_message_id
    assert attempts[0].duration >= 0 and emulator.smtp.messages == []


@pytest.mark.parametrize(
    ("kind", "status", "result"),
    [
        ("sendgrid", 500, "transient"),
        ("sendgrid", 401, "credentials"),
        ("sendgrid", 400, "payload"),
        ("sparkpost", 503, "transient"),
        ("sparkpost", 403, "credentials"),
        ("sparkpost", 422, "payload"),
        ("mailgun", 502, "transient"),
        ("mailgun", 401, "credentials"),
        ("mailgun", 404, "credentials"),
    ],
)
async def test_falls_back_to_smtp(
    kind: str, status: int, result: str, emulator: Emulator, make_provider: MakeProvider
):
    getattr(emulator, kind).fail(status, message="api says no")
    attempts: list[Attempt] = []
    message = outbound(corpus.plain(), [("a@example.org", "to"), ("b@example.org", "bcc")])
    receipt = await make_provider(kind).send(message, on_attempt=attempts.append)
    assert receipt.transport == "smtp"
    assert summary(attempts) == [("api", result, str(status)), ("smtp", "delivered", None)]
    assert attempts[0].text.startswith("api says no")
    [sent] = emulator.smtp.messages
    assert sent.rcpt_tos == ["a@example.org", "b@example.org"]


@pytest.mark.parametrize("kind", ["sendgrid", "sparkpost", "mailgun"])
async def test_no_fallback_when_the_api_may_have_the_message(
    kind: str, emulator: Emulator, make_provider: MakeProvider
):
    # The request is sent, the answer does not come within the read timeout:
    # the API may accept it later, so SMTP must not carry it too (two copies).
    getattr(emulator, kind).stall(30)
    attempts: list[Attempt] = []
    chain = make_provider(kind, timeout=0.3)
    with pytest.raises(OutcomeUnknown) as info:
        await chain.send(outbound(corpus.plain()), on_attempt=attempts.append)
    assert info.value.transport == "api" and "no answer" in info.value.text
    assert summary(attempts) == [("api", "unknown", None)]
    assert emulator.smtp.messages == []


async def test_the_pinned_leg_is_the_only_leg(emulator: Emulator, make_provider: MakeProvider):
    # The next pass of a message whose API outcome was unknown: the API only,
    # even when it now fails in a way that would otherwise fall back.
    emulator.sendgrid.fail(503)
    attempts: list[Attempt] = []
    with pytest.raises(TransientError):
        await make_provider("sendgrid").send(
            outbound(corpus.plain()), on_attempt=attempts.append, only="api"
        )
    assert summary(attempts) == [("api", "transient", "503")]
    assert emulator.smtp.messages == []


async def test_falls_back_when_the_api_is_unreachable(
    emulator: Emulator, make_provider: MakeProvider
):
    with socket.socket() as closed:  # a port nobody listens on: connect refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    attempts: list[Attempt] = []
    chain = make_provider("sendgrid", api_url=f"http://127.0.0.1:{port}")
    receipt = await chain.send(outbound(corpus.plain()), on_attempt=attempts.append)
    assert receipt.transport == "smtp"
    assert summary(attempts) == [("api", "transient", None), ("smtp", "delivered", None)]
    assert "unreachable" in attempts[0].text


async def test_retry_after_holds_when_the_fallback_fails_too(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.sendgrid.rate_limit(reset_in=120)
    emulator.smtp.fail("mail", "451 4.3.0 try later")
    attempts: list[Attempt] = []
    with pytest.raises(TransientError) as info:
        await make_provider("sendgrid").send(outbound(corpus.plain()), on_attempt=attempts.append)
    assert summary(attempts) == [("api", "transient", "429"), ("smtp", "transient", "451")]
    assert info.value.transport == "smtp"
    assert info.value.retry_after is not None and info.value.retry_after >= 100


async def test_falls_back_when_json_cannot_carry_the_message(
    emulator: Emulator, make_provider: MakeProvider
):
    attempts: list[Attempt] = []
    message = outbound(b"From: a@example.com\r\nTo: to@example.org\r\nSubject: x\r\n\r\n")
    receipt = await make_provider("sendgrid").send(message, on_attempt=attempts.append)
    assert receipt.transport == "smtp" and emulator.sendgrid.received == []
    assert summary(attempts) == [("api", "payload", None), ("smtp", "delivered", None)]


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("sendgrid", 400, "personalizations.0.to.0.email"),
        ("sendgrid", 403, "from"),
        ("sparkpost", 400, "1902"),
        ("sparkpost", 400, "7001"),
        ("mailgun", 400, None),
        ("mailgun", 413, None),
    ],
)
async def test_no_fallback_on_a_recipient_or_sender_rejection(
    kind: str, status: int, code: str | None, emulator: Emulator, make_provider: MakeProvider
):
    getattr(emulator, kind).fail(status, code=code, message="refused")
    attempts: list[Attempt] = []
    with pytest.raises(PermanentError):
        await make_provider(kind).send(outbound(corpus.plain()), on_attempt=attempts.append)
    assert summary(attempts)[0][:2] == ("api", "permanent") and len(attempts) == 1
    assert emulator.smtp.messages == []


async def test_no_fallback_on_a_partial_rejection(emulator: Emulator, make_provider: MakeProvider):
    emulator.sparkpost.suppress("gone@example.org")
    attempts: list[Attempt] = []
    rcpts = [("a@example.org", "to"), ("gone@example.org", "to")]
    receipt = await make_provider("sparkpost").send(
        outbound(corpus.plain(), rcpts), on_attempt=attempts.append
    )
    assert receipt.rejected and summary(attempts) == [("api", "partial", None)]


async def test_when_both_fail_the_smtp_error_is_raised_from_the_api_error(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.sendgrid.fail(503)
    emulator.smtp.fail("mail", "550 5.7.1 sender refused")
    attempts: list[Attempt] = []
    with pytest.raises(PermanentError) as info:
        await make_provider("sendgrid").send(outbound(corpus.plain()), on_attempt=attempts.append)
    assert info.value.transport == "smtp" and isinstance(info.value.__cause__, TransientError)
    assert summary(attempts) == [("api", "transient", "503"), ("smtp", "permanent", "550")]


async def test_a_failing_callback_does_not_fail_the_delivery(
    emulator: Emulator, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
):
    def broken(attempt: Attempt) -> None:
        raise RuntimeError("bookkeeping bug")

    receipt = await make_provider("sendgrid").send(outbound(corpus.plain()), on_attempt=broken)
    assert receipt.transport == "api" and "on_attempt callback failed" in caplog.text


async def test_custom_smtp_and_credentials_failure_are_single_attempts(
    emulator: Emulator, make_provider: MakeProvider
):
    attempts: list[Attempt] = []
    chain = make_provider("smtp", secrets={"smtp_password": "wrong"})
    with pytest.raises(CredentialsError):
        await chain.send(outbound(corpus.plain()), on_attempt=attempts.append)
    assert summary(attempts) == [("smtp", "credentials", "535")]


# -- the circuit breaker -------------------------------------------------------


async def test_breaker_opens_skips_the_api_then_probes_and_closes(
    emulator: Emulator, make_provider: MakeProvider
):
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown=30, clock=clock)
    chain = make_provider("sendgrid", breaker=breaker)
    emulator.sendgrid.fail(500, count=2)
    for _ in range(2):
        assert (await chain.send(outbound(corpus.plain()))).transport == "smtp"
    assert breaker.state == "open" and len(emulator.sendgrid.received) == 2

    attempts: list[Attempt] = []
    receipt = await chain.send(outbound(corpus.plain()), on_attempt=attempts.append)
    assert receipt.transport == "smtp" and summary(attempts) == [("smtp", "delivered", None)]
    assert len(emulator.sendgrid.received) == 2  # the API was not asked

    clock.now += 31
    assert breaker.state == "half-open"
    assert (await chain.send(outbound(corpus.plain()))).transport == "api"
    assert breaker.state == "closed"


async def test_a_failed_probe_opens_the_breaker_again(
    emulator: Emulator, make_provider: MakeProvider
):
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    chain = make_provider("sparkpost", breaker=breaker)
    emulator.sparkpost.fail(503, count=2)
    await chain.send(outbound(corpus.plain()))
    assert breaker.state == "open"
    clock.now += 11
    await chain.send(outbound(corpus.plain()))  # the probe, failing
    assert breaker.state == "open" and len(emulator.sparkpost.received) == 2
    await chain.send(outbound(corpus.plain()))
    assert len(emulator.sparkpost.received) == 2


async def test_payload_rejections_do_not_trip_the_breaker(
    emulator: Emulator, make_provider: MakeProvider
):
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=FakeClock())
    chain = make_provider("sendgrid", breaker=breaker)
    emulator.sendgrid.fail(400, count=3)
    for _ in range(3):
        await chain.send(outbound(corpus.plain()))
    assert breaker.state == "closed" and len(emulator.sendgrid.received) == 3


def test_half_open_lets_one_probe_through_at_a_time():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=5, clock=clock)
    breaker.failure()
    assert not breaker.allow()
    clock.now += 6
    assert breaker.allow() and not breaker.allow()
    breaker.release()
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


async def test_check_covers_both_legs(emulator: Emulator, make_provider: MakeProvider):
    health = await make_provider("sendgrid").check()
    assert health.ok and "api:" in health.detail and "smtp:" in health.detail
    broken = await make_provider("sendgrid", smtp_port=9, timeout=2).check()
    assert not broken.ok and "smtp:" in broken.detail
