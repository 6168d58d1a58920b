"""SendGrid through the emulator: requests as sent, the status table, the SMTP relay side."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from relay.core.errors import (
    CredentialsError,
    PayloadRejected,
    PermanentError,
    ProviderError,
    TransientError,
)
from relay.emulator import Emulator
from relay.providers import sendgrid, sendgrid_json
from relay.providers.chain import OutcomeUnknown

from . import corpus
from .conftest import API_KEY, MakeProvider
from .corpus import outbound

Validate = Callable[[dict[str, Any]], None]


def api_of(make_provider: MakeProvider, **options: Any) -> Any:
    return make_provider("sendgrid", **options).primary.provider


async def test_message_goes_as_json_with_bearer_key(
    emulator: Emulator, make_provider: MakeProvider, sendgrid_schema: Validate
):
    receipt = await api_of(make_provider).send(outbound(corpus.inline_image(), ip_pool="pool1"))
    assert receipt.transport == "api" and receipt.provider_message_id
    [seen] = emulator.sendgrid.received
    assert seen.auth_scheme == "Bearer" and seen.status == 202
    assert seen.message_id == receipt.provider_message_id
    sendgrid_schema(seen.body)
    assert seen.body["ip_pool_name"] == "pool1"
    assert [a["disposition"] for a in seen.body["attachments"]] == ["inline", "attachment"]


async def test_cc_and_bcc_reach_sendgrid(emulator: Emulator, make_provider: MakeProvider):
    msg = corpus.plain(to="a@example.org", Cc="c@example.org")
    rcpts = [("a@example.org", "to"), ("c@example.org", "cc"), ("b@example.org", "bcc")]
    await api_of(make_provider).send(outbound(msg, rcpts))
    [p] = emulator.sendgrid.accepted()[0]["personalizations"]
    assert (p["to"], p["cc"], p["bcc"]) == (
        [{"email": "a@example.org"}],
        [{"email": "c@example.org"}],
        [{"email": "b@example.org"}],
    )


async def test_a_large_attachment_near_the_limit_is_accepted(
    emulator: Emulator, make_provider: MakeProvider, sendgrid_schema: Validate
):
    blob = bytes(range(256)) * (21 * 1024 * 4)  # 21 MiB: about 28 MiB once base64 in JSON
    receipt = await api_of(make_provider).send(outbound(corpus.with_attachment(blob, "big.bin")))
    assert receipt.provider_message_id
    [seen] = emulator.sendgrid.received
    assert sendgrid_json.MAX_BYTES - 4 * 1024 * 1024 < seen.size < sendgrid_json.MAX_BYTES
    sendgrid_schema(seen.body)
    assert base64.b64decode(seen.body["attachments"][0]["content"]) == blob


async def test_over_30_mb_is_a_clear_permanent_error_before_sending(
    emulator: Emulator, make_provider: MakeProvider
):
    blob = b"\x00" * (23 * 1024 * 1024)
    with pytest.raises(PermanentError, match="too large") as info:
        await api_of(make_provider).send(outbound(corpus.with_attachment(blob)))
    assert info.value.code == 413 and not isinstance(info.value, PayloadRejected)
    assert emulator.sendgrid.received == []


# The table, driven through the emulator: status -> what the provider raises.
TABLE_CASES = [
    (400, PayloadRejected),
    (401, CredentialsError),
    (403, CredentialsError),
    (404, TransientError),
    (413, PermanentError),
    (415, PayloadRejected),
    (418, PermanentError),
    (500, TransientError),
    (502, TransientError),
    (503, TransientError),
]


def test_table_covers_what_the_brief_names():
    for status, cls in TABLE_CASES:
        assert sendgrid.status_error(status) is cls
    assert sendgrid.status_error(202) is None and sendgrid.status_error(200) is None


@pytest.mark.parametrize(("status", "cls"), TABLE_CASES)
async def test_status_table_over_http(
    status: int, cls: type[ProviderError], emulator: Emulator, make_provider: MakeProvider
):
    emulator.sendgrid.fail(status, message="emulated trouble")
    with pytest.raises(ProviderError) as info:
        await api_of(make_provider).send(outbound(corpus.plain()))
    assert type(info.value) is cls
    assert info.value.code == status and info.value.transport == "api"
    assert "emulated trouble" in info.value.text


async def test_429_carries_retry_after_from_the_reset_header(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.sendgrid.rate_limit(reset_in=30)
    with pytest.raises(TransientError) as info:
        await api_of(make_provider).send(outbound(corpus.plain()))
    assert info.value.code == 429
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 32


async def test_timeout_and_refused_connection_are_transient(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.sendgrid.stall(30)
    # Sent, then no answer: transient, and of unknown outcome (no fallback).
    with pytest.raises(OutcomeUnknown, match="no answer within"):
        await api_of(make_provider, timeout=0.3).send(outbound(corpus.plain()))
    closed = make_provider("sendgrid", api_url="http://127.0.0.1:9").primary.provider
    with pytest.raises(TransientError, match="unreachable"):
        await closed.send(outbound(corpus.plain()))


async def test_400_about_a_field_that_is_no_address_is_payload_form(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.sendgrid.fail(400, code="personalizations.0", message="bad personalization")
    with pytest.raises(PayloadRejected):
        await api_of(make_provider).send(outbound(corpus.plain()))


async def test_sender_not_verified_is_permanent_not_credentials(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.sendgrid.fail(403, code="from", message="does not match a verified Sender Identity")
    with pytest.raises(PermanentError) as info:
        await api_of(make_provider).send(outbound(corpus.plain()))
    assert type(info.value) is PermanentError


async def test_one_invalid_recipient_is_refused_and_the_others_still_get_it(
    emulator: Emulator, make_provider: MakeProvider
):
    rcpts = [("good@example.org", "to"), ("bad@invalid", "cc"), ("also@example.org", "bcc")]
    receipt = await api_of(make_provider).send(outbound(corpus.plain(), rcpts))
    assert set(receipt.rejected) == {"bad@invalid"} and receipt.permanent
    sent = emulator.sendgrid.accepted()[0]
    assert [p.get("bcc") for p in sent["personalizations"]] == [[{"email": "also@example.org"}]]


async def test_all_recipients_invalid_is_a_permanent_error_naming_them(
    make_provider: MakeProvider,
):
    with pytest.raises(PermanentError) as info:
        await api_of(make_provider).send(outbound(corpus.plain(), [("nobody@invalid", "to")]))
    assert info.value.recipients.keys() == {"nobody@invalid"}


async def test_a_later_request_failing_leaves_its_recipients_to_retry(
    emulator: Emulator, make_provider: MakeProvider
):
    rcpts = [(f"r{i}@example.org", "to") for i in range(1500)]
    emulator.sendgrid.fail(503, after=1)
    receipt = await api_of(make_provider).send(outbound(corpus.plain(), rcpts))
    assert len(receipt.rejected) == 500 and not receipt.permanent
    assert "r1000@example.org" in receipt.rejected and "r999@example.org" not in receipt.rejected


async def test_check_reports_a_bad_key_without_showing_it(
    emulator: Emulator, make_provider: MakeProvider
):
    good = await api_of(make_provider).check()
    assert good.ok
    bad = make_provider("sendgrid", secrets={"api_key": "SG.wrong-secret-value"})
    health = await bad.primary.provider.check()
    assert not health.ok and "SG.wrong-secret-value" not in health.detail


async def test_the_key_is_in_no_error_text_or_repr(emulator: Emulator, make_provider: MakeProvider):
    bad = make_provider("sendgrid", secrets={"api_key": "SG.wrong-secret-value"})
    with pytest.raises(CredentialsError) as info:
        await bad.primary.provider.send(outbound(corpus.plain()))
    shown = [
        str(info.value),
        repr(info.value),
        repr(bad),
        repr(bad.primary.provider),
        repr(bad.fallback.provider if bad.fallback else None),
    ]
    assert not any("SG.wrong-secret-value" in s or API_KEY in s for s in shown)


async def test_smtp_relay_gets_x_smtpapi_and_the_message_as_received(
    emulator: Emulator, make_provider: MakeProvider
):
    chain = make_provider("sendgrid")
    assert chain.fallback is not None
    msg = outbound(corpus.plain(X_Relay_Category="news"), ip_pool="pool1", queue_id="Q42")
    receipt = await chain.fallback.provider.send(msg)
    assert receipt.transport == "smtp"
    [sent] = emulator.smtp.messages
    assert sent.user == "apikey" and sent.data.endswith(msg.data)
    header = sent.data[: len(sent.data) - len(msg.data)].decode()
    value = json.loads(header.split(":", 1)[1].replace("\r\n", ""))
    assert value == {
        "unique_args": {"relay_message_id": "Q42"},
        "category": ["news"],
        "ip_pool": "pool1",
    }


async def test_clients_own_x_smtpapi_wins(emulator: Emulator, make_provider: MakeProvider):
    chain = make_provider("sendgrid")
    assert chain.fallback is not None
    msg = outbound(corpus.plain(X_SMTPAPI='{"category": "mine"}'))
    await chain.fallback.provider.send(msg)
    assert emulator.smtp.messages[0].data == msg.data
