"""SparkPost through the emulator: the transmission as sent, statuses, partial rejections."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from relay.core.errors import CredentialsError, PermanentError, ProviderError, TransientError
from relay.emulator import Emulator
from relay.providers import sparkpost
from relay.providers.chain import UNNAMED_RECIPIENTS, PayloadRejected

from . import corpus
from .conftest import API_KEY, MakeProvider
from .corpus import outbound


def api_of(make_provider: MakeProvider, **options: Any) -> Any:
    return make_provider("sparkpost", **options).primary.provider


async def test_transmission_carries_the_mime_alone_and_every_recipient(
    emulator: Emulator, make_provider: MakeProvider
):
    msg = corpus.plain(to="A <a@example.org>, b@example.org", Cc="c@example.org")
    msg["Bcc"] = "hidden@example.org"
    rcpts = [("a@example.org", "to"), ("c@example.org", "cc"), ("hidden@example.org", "bcc")]
    message = outbound(msg, rcpts, ip_pool="pool1", campaign="spring-sale")
    receipt = await api_of(make_provider).send(message)
    assert receipt.transport == "api" and receipt.provider_message_id
    [seen] = emulator.sparkpost.received
    assert seen.auth_scheme == "bare" and seen.status == 200
    body = seen.body
    assert list(body["content"]) == ["email_rfc822"]
    assert "Bcc" not in body["content"]["email_rfc822"]
    assert "hidden@example.org" not in body["content"]["email_rfc822"]
    assert body["recipients"] == [
        {"address": {"email": a, "header_to": "A <a@example.org>, b@example.org"}} for a, _ in rcpts
    ]
    assert body["options"] == {"perform_substitutions": False, "ip_pool": "pool1"}
    assert body["campaign_id"] == "spring-sale"


async def test_the_message_is_otherwise_as_received(
    emulator: Emulator, make_provider: MakeProvider
):
    message = outbound(corpus.inline_image())
    await api_of(make_provider).send(message)
    assert emulator.sparkpost.accepted()[0]["content"]["email_rfc822"].encode() == message.data


def test_a_long_campaign_is_cut_to_64_bytes_on_a_character():
    cut = sparkpost.campaign_id("é" * 40)
    assert cut == "é" * 32 and len(cut.encode()) == 64


async def test_a_message_that_is_not_utf8_goes_by_smtp(make_provider: MakeProvider):
    with pytest.raises(PayloadRejected, match="UTF-8"):
        await api_of(make_provider).send(outbound(corpus.eight_bit_latin1()))


async def test_some_recipients_rejected_is_a_partial_receipt(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.sparkpost.suppress("gone@example.org")
    rcpts = [("a@example.org", "to"), ("gone@example.org", "cc"), ("b@example.org", "bcc")]
    receipt = await api_of(make_provider).send(outbound(corpus.plain(), rcpts))
    assert list(receipt.rejected) == [UNNAMED_RECIPIENTS] and receipt.permanent
    assert "1 of 3" in receipt.rejected[UNNAMED_RECIPIENTS]


async def test_all_recipients_rejected_is_permanent(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.sparkpost.suppress("gone@example.org")
    with pytest.raises(PermanentError) as info:
        await api_of(make_provider).send(outbound(corpus.plain(), [("gone@example.org", "to")]))
    assert type(info.value) is PermanentError and info.value.code == "400/1902"


STATUS_CASES = [
    (400, None, PermanentError),
    (400, "1902", PermanentError),
    (400, "7001", PermanentError),
    (400, "1200", PayloadRejected),
    (400, "1305", PayloadRejected),
    (400, "1502", TransientError),
    (401, None, CredentialsError),
    (403, "1100", CredentialsError),
    (404, None, TransientError),
    (413, None, PermanentError),
    (415, "1700", PayloadRejected),
    (420, "2101", TransientError),
    (422, "1300", PayloadRejected),
    (422, "3020", PayloadRejected),
    (500, None, TransientError),
    (503, "1900", TransientError),
]


def test_the_table():
    for status, code, cls in STATUS_CASES:
        assert sparkpost.classify(status, code) is cls
    assert sparkpost.classify(200, None) is None


@pytest.mark.parametrize(("status", "code", "cls"), STATUS_CASES)
async def test_statuses_over_http(
    status: int,
    code: str | None,
    cls: type[ProviderError],
    emulator: Emulator,
    make_provider: MakeProvider,
):
    emulator.sparkpost.fail(status, code=code, message="emulated trouble")
    with pytest.raises(ProviderError) as info:
        await api_of(make_provider).send(outbound(corpus.plain()))
    assert type(info.value) is cls and info.value.transport == "api"
    assert info.value.code == (f"{status}/{code}" if code else status)
    assert "emulated trouble" in info.value.text


async def test_429_carries_retry_after(emulator: Emulator, make_provider: MakeProvider):
    emulator.sparkpost.rate_limit(reset_in=5)
    with pytest.raises(TransientError) as info:
        await api_of(make_provider).send(outbound(corpus.plain()))
    assert info.value.retry_after == 6


async def test_check(emulator: Emulator, make_provider: MakeProvider):
    assert (await api_of(make_provider).check()).ok
    bad = make_provider("sparkpost", secrets={"api_key": "wrong-sparkpost-key"})
    health = await bad.primary.provider.check()
    assert not health.ok and "wrong-sparkpost-key" not in health.detail


async def test_bearer_is_refused_by_the_emulator_as_by_sparkpost(
    emulator: Emulator, http: httpx.AsyncClient
):
    body = json.dumps(
        {
            "recipients": [{"address": "a@example.org"}],
            "content": {"email_rfc822": "From: a@example.org\r\n\r\nx"},
        }
    )
    url = emulator.sparkpost_url + "/api/v1/transmissions"
    headers = {"Content-Type": "application/json"}
    bearer = await http.post(
        url, content=body, headers=headers | {"Authorization": f"Bearer {API_KEY}"}
    )
    bare = await http.post(url, content=body, headers=headers | {"Authorization": API_KEY})
    assert (bearer.status_code, bare.status_code) == (401, 200)


async def test_smtp_relay_logs_in_with_auth_login_and_sends_x_msys_api(
    emulator: Emulator, make_provider: MakeProvider
):
    chain = make_provider("sparkpost")
    assert chain.fallback is not None
    msg = corpus.plain()
    msg["Bcc"] = "hidden@example.org"
    message = outbound(
        msg,
        [("to@example.org", "to"), ("hidden@example.org", "bcc")],
        ip_pool="pool1",
        campaign="spring",
        queue_id="Q7",
    )
    receipt = await chain.fallback.provider.send(message)
    assert receipt.transport == "smtp"
    [sent] = emulator.smtp.messages
    assert sent.user == "SMTP_Injection" and emulator.smtp.mechanisms_used == ["LOGIN"]
    assert sent.rcpt_tos == ["to@example.org", "hidden@example.org"]
    head = sent.data.split(b"\r\n\r\n", 1)[0].decode()
    assert "Bcc:" not in head
    field = head.split("X-MSYS-API:", 1)[1].split("\r\nFrom:", 1)[0]
    assert json.loads(field.replace("\r\n", "")) == {
        "metadata": {"relay_message_id": "Q7"},
        "campaign_id": "spring",
        "options": {"ip_pool": "pool1"},
    }


async def test_smtp_relay_reconnects_after_its_per_connection_cap(
    emulator: Emulator, make_provider: MakeProvider
):
    chain = make_provider("sparkpost", smtp_max_messages=2)
    assert chain.fallback is not None
    for _ in range(5):
        await chain.fallback.provider.send(outbound(corpus.plain()))
    assert [m.connection for m in emulator.smtp.messages] == [1, 1, 2, 2, 3]
