"""Mailgun's webhook: its signature (good, forged, stale, unsigned) and its events read."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from relay.core.errors import Invalid, WebhookRefused
from relay.core.events import BounceClass, EventType
from relay.emulator import Emulator
from relay.emulator.events import Recipient, mailgun_events, mailgun_signed
from relay.providers import mailgun_events as hooks
from relay.providers.registry import validate_options

KEY = "key-0123456789abcdef0123456789abcdef"


def body(event: dict[str, Any], key: str = KEY) -> bytes:
    return json.dumps(mailgun_signed(key, event)).encode()


def data(event: str, **more: Any) -> dict[str, Any]:
    return {
        "id": f"ev-{event}",
        "event": event,
        "timestamp": 1764578400.25,
        "recipient": "a@example.org",
        "user-variables": {"relay_message_id": "Q1", "relay_recipient_id": "7"},
        **more,
    }


def test_a_good_signature_passes():
    signed = body(data("delivered"))
    hooks.authenticate(KEY, {}, signed, time.time())


@pytest.mark.parametrize(
    ("mutate", "status", "words"),
    [
        (lambda b: {**b, "signature": {**b["signature"], "signature": "0" * 64}}, 403, "verify"),
        (lambda b: {**b, "signature": {**b["signature"], "token": "other"}}, 403, "verify"),
        (lambda b: {**b, "signature": {**b["signature"], "timestamp": "1"}}, 403, "stale"),
        (lambda b: {k: v for k, v in b.items() if k != "signature"}, 401, "not signed"),
        (lambda b: {**b, "signature": {"token": "x"}}, 401, "not signed"),
    ],
)
def test_forged_stale_and_unsigned_are_refused(mutate: Any, status: int, words: str):
    good = mailgun_signed(KEY, data("delivered"))
    with pytest.raises(WebhookRefused) as info:
        hooks.authenticate(KEY, {}, json.dumps(mutate(good)).encode(), time.time())
    assert info.value.status == status and words in str(info.value)


def test_the_wrong_key_and_a_body_that_is_not_json_are_refused():
    with pytest.raises(WebhookRefused):
        hooks.authenticate(
            KEY, {}, body(data("delivered"), key="key-another-one-entirely"), time.time()
        )
    with pytest.raises(WebhookRefused) as info:
        hooks.authenticate(KEY, {}, b"not json", time.time())
    assert info.value.status == 401


def test_a_future_timestamp_is_as_stale_as_an_old_one():
    signed = body(data("delivered"))
    with pytest.raises(WebhookRefused, match="stale"):
        hooks.authenticate(KEY, {}, signed, time.time() - 600)


@pytest.mark.parametrize(
    ("event", "more", "kind", "bounce"),
    [
        ("delivered", {}, EventType.DELIVERED, None),
        (
            "failed",
            {"severity": "permanent", "reason": "bounce"},
            EventType.BOUNCE,
            BounceClass.HARD,
        ),
        (
            "failed",
            {"severity": "permanent", "reason": "generic"},
            EventType.BOUNCE,
            BounceClass.SOFT,
        ),
        ("failed", {"severity": "permanent", "reason": "suppress-bounce"}, EventType.DROPPED, None),
        ("failed", {"severity": "temporary", "reason": "generic"}, EventType.DEFERRED, None),
        ("rejected", {}, EventType.DROPPED, None),
        ("complained", {}, EventType.COMPLAINT, None),
        ("unsubscribed", {}, EventType.UNSUBSCRIBE, None),
        ("opened", {}, EventType.OPEN, None),
        ("clicked", {"url": "https://example.org/x"}, EventType.CLICK, None),
    ],
)
def test_events_map_to_relays(
    event: str, more: dict[str, Any], kind: EventType, bounce: BounceClass | None
):
    [read] = hooks.parse_events(body(data(event, **more)))
    assert (read.type, read.bounce_class) == (kind, bounce)
    assert (read.provider_event_id, read.address) == (f"ev-{event}", "a@example.org")
    assert (read.message_id, read.recipient_id) == ("Q1", 7)
    assert read.at.timestamp() == 1764578400.25


def test_accepted_is_nothing_to_act_on_and_a_body_without_event_data_is_invalid():
    assert hooks.parse_events(body(data("accepted"))) == []
    with pytest.raises(Invalid):
        hooks.parse_events(b'{"signature": {}}')
    with pytest.raises(Invalid):
        hooks.parse_events(b"[1, 2]")


def test_the_bounce_detail_is_mailguns_words():
    status = {"code": 550, "message": "5.1.1 no such user", "description": ""}
    [read] = hooks.parse_events(
        body(data("failed", severity="permanent", reason="bounce", **{"delivery-status": status}))
    )
    assert read.detail == "550 5.1.1 no such user"


def test_the_webhook_key_is_checked_when_stored():
    row = {"sending_domain": "mg.example.com"}
    validate_options("mailgun", row, {"api_key": "k", "webhook_key": KEY})
    with pytest.raises(Invalid) as info:
        validate_options("mailgun", row, {"api_key": "k", "webhook_key": "short"})
    assert info.value.field == "webhook_key"


def test_the_emulators_events_by_fate_read_back():
    rcpts = [
        Recipient(address, {"relay_message_id": "Q3"})
        for address in (
            "bounce+1@example.org",
            "softbounce+1@example.org",
            "complaint+1@example.org",
            "unsubscribe+1@example.org",
            "plain@example.org",
            "kept-out@example.org",
        )
    ]
    read = [
        (e.address.split("@")[0], e.type, e.bounce_class)
        for item in mailgun_events(rcpts, "<m@x>", suppressed=["kept-out@example.org"])
        for e in hooks.parse_events(body(item))
    ]
    assert read == [
        ("bounce+1", EventType.BOUNCE, BounceClass.HARD),
        ("softbounce+1", EventType.DEFERRED, None),
        ("softbounce+1", EventType.BOUNCE, BounceClass.SOFT),
        ("complaint+1", EventType.DELIVERED, None),
        ("complaint+1", EventType.COMPLAINT, None),
        ("unsubscribe+1", EventType.DELIVERED, None),
        ("unsubscribe+1", EventType.UNSUBSCRIBE, None),
        ("plain", EventType.DELIVERED, None),
        ("kept-out", EventType.DROPPED, None),
    ]


async def test_the_emulator_signs_with_the_key_it_shows(emulator: Emulator):
    assert emulator.mailgun_signing_key.startswith("key-")
    hooks.check_key(emulator.mailgun_signing_key)
    signed = json.dumps(mailgun_signed(emulator.mailgun_signing_key, data("opened"))).encode()
    hooks.authenticate(emulator.mailgun_signing_key, {}, signed, time.time())
