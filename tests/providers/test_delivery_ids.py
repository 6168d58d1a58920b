"""Relay's ids and the account's tracking settings in every delivery, both providers, both legs.

The ids come back in the providers' events (SendGrid custom_args / unique_args
as top-level keys, SparkPost rcpt_meta), so an event maps to the message and
recipient without trusting its address alone.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from relay.core.message import OutboundMessage
from relay.emulator import Emulator

from . import corpus
from .conftest import MakeProvider
from .corpus import outbound

IDS = {"to@example.org": 11, "cc@example.org": 12, "hidden@example.org": 13}


def with_ids(message: OutboundMessage, **changes: Any) -> OutboundMessage:
    ids = {a: IDS.get(a, 99) for a, _ in message.recipients}
    return dataclasses.replace(message, recipient_ids=ids, **changes)


def api_field(data: bytes, name: str) -> dict[str, Any]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    value = head.split(f"{name}:", 1)[1]
    value = value.split("\r\n", 1)[0] + "".join(
        line for line in value.split("\r\n")[1:] if line[:1] in (" ", "\t")
    )
    parsed = json.loads(value)
    assert isinstance(parsed, dict)
    return parsed


def sendgrid_api(make_provider: MakeProvider) -> Any:
    return make_provider("sendgrid").primary.provider


async def test_sendgrid_shared_personalization_carries_the_message_id_only(
    emulator: Emulator, make_provider: MakeProvider
) -> None:
    msg = corpus.plain(to="to@example.org", Cc="cc@example.org")
    rcpts = [("to@example.org", "to"), ("cc@example.org", "cc"), ("hidden@example.org", "bcc")]
    await sendgrid_api(make_provider).send(with_ids(outbound(msg, rcpts, queue_id="Q9")))
    [body] = emulator.sendgrid.accepted()
    # One personalization keeps the To and Cc lines as written: the receiver
    # matches the event's address within the message.
    assert [p["custom_args"] for p in body["personalizations"]] == [{"relay_message_id": "Q9"}]
    assert "tracking_settings" not in body


async def test_sendgrid_one_recipient_personalizations_carry_the_recipient_id(
    emulator: Emulator, make_provider: MakeProvider
) -> None:
    rcpts = [("to@example.org", "bcc"), ("hidden@example.org", "bcc")]
    msg = with_ids(outbound(corpus.plain(), rcpts, queue_id="Q9"))
    await sendgrid_api(make_provider).send(msg)
    [body] = emulator.sendgrid.accepted()
    assert [(p["to"][0]["email"], p["custom_args"]) for p in body["personalizations"]] == [
        ("to@example.org", {"relay_message_id": "Q9", "relay_recipient_id": "11"}),
        ("hidden@example.org", {"relay_message_id": "Q9", "relay_recipient_id": "13"}),
    ]


async def test_sendgrid_tracking_settings_when_the_account_set_them(
    emulator: Emulator, make_provider: MakeProvider
) -> None:
    api = sendgrid_api(make_provider)
    await api.send(with_ids(outbound(corpus.plain()), open_tracking=False, click_tracking=True))
    await api.send(with_ids(outbound(corpus.plain()), open_tracking=True))
    first, second = emulator.sendgrid.accepted()
    assert first["tracking_settings"] == {
        "open_tracking": {"enable": False},
        "click_tracking": {"enable": True},
    }
    assert second["tracking_settings"] == {"open_tracking": {"enable": True}}
    assert first["personalizations"][0]["custom_args"] == {
        "relay_message_id": "Q1",
        "relay_recipient_id": "11",
    }


async def test_sparkpost_metadata_per_recipient_and_tracking_options(
    emulator: Emulator, make_provider: MakeProvider
) -> None:
    api = make_provider("sparkpost").primary.provider
    rcpts = [("to@example.org", "to"), ("hidden@example.org", "bcc")]
    msg = with_ids(outbound(corpus.plain(), rcpts, queue_id="Q5"), click_tracking=False)
    await api.send(msg)
    await api.send(outbound(corpus.plain(), queue_id="Q6"))
    first, second = emulator.sparkpost.accepted()
    assert first["metadata"] == {"relay_message_id": "Q5"}
    assert [(r["address"]["email"], r["metadata"]) for r in first["recipients"]] == [
        ("to@example.org", {"relay_message_id": "Q5", "relay_recipient_id": "11"}),
        ("hidden@example.org", {"relay_message_id": "Q5", "relay_recipient_id": "13"}),
    ]
    assert first["options"] == {"perform_substitutions": False, "click_tracking": False}
    # Not set: SparkPost's own default, so nothing is sent.
    assert second["options"] == {"perform_substitutions": False}
    assert "metadata" not in second["recipients"][0]


async def test_sendgrid_smtp_leg_carries_ids_and_filters(
    emulator: Emulator, make_provider: MakeProvider
) -> None:
    chain = make_provider("sendgrid")
    assert chain.fallback is not None
    smtp = chain.fallback.provider
    one = with_ids(outbound(corpus.plain(), queue_id="Q3"), open_tracking=True)
    rcpts = [("to@example.org", "to"), ("cc@example.org", "cc")]
    two = with_ids(outbound(corpus.plain(), rcpts, queue_id="Q4"), click_tracking=False)
    await smtp.send(one)
    await smtp.send(two)
    first, second = (api_field(m.data, "X-SMTPAPI") for m in emulator.smtp.messages)
    assert first["unique_args"] == {"relay_message_id": "Q3", "relay_recipient_id": "11"}
    assert first["filters"] == {"opentrack": {"settings": {"enable": 1}}}
    # unique_args are message-wide on SMTP: the recipient is matched by address.
    assert second["unique_args"] == {"relay_message_id": "Q4"}
    assert second["filters"] == {"clicktrack": {"settings": {"enable": 0}}}


async def test_sparkpost_smtp_leg_carries_ids_and_options(
    emulator: Emulator, make_provider: MakeProvider
) -> None:
    chain = make_provider("sparkpost")
    assert chain.fallback is not None
    smtp = chain.fallback.provider
    msg = with_ids(outbound(corpus.plain(), queue_id="Q8", ip_pool="p1"), open_tracking=False)
    await smtp.send(msg)
    await smtp.send(outbound(corpus.plain(), queue_id="Q9"))
    first, second = (api_field(m.data, "X-MSYS-API") for m in emulator.smtp.messages)
    assert first["metadata"] == {"relay_message_id": "Q8", "relay_recipient_id": "11"}
    assert first["options"] == {"open_tracking": False, "ip_pool": "p1"}
    assert second == {"metadata": {"relay_message_id": "Q9"}}
