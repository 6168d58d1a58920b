"""Mailgun through the emulator: the form as sent, its SMTP relay, statuses, the live check."""

from __future__ import annotations

import base64
import json
from email import message_from_bytes
from email.policy import SMTPUTF8
from typing import Any

import httpx
import pytest

from relay.core.errors import CredentialsError, PermanentError, ProviderError, TransientError
from relay.core.message import OutboundMessage
from relay.emulator import Emulator
from relay.emulator.mailgun import DOMAIN, parse_form
from relay.providers import mailgun
from relay.providers.registry import build_provider, transports

from . import corpus
from .conftest import API_KEY, MakeProvider
from .corpus import outbound

RCPTS = [("a@example.org", "to"), ("c@example.org", "cc"), ("hidden@example.org", "bcc")]


def with_bcc() -> Any:
    msg = corpus.plain(to="A <a@example.org>", Cc="c@example.org")
    msg["Bcc"] = "hidden@example.org"
    return msg


# The provider tests' messages: hidden Bcc, attachment, non-ASCII.
MESSAGES = {
    "hidden-bcc": (with_bcc, RCPTS),
    "attachment": (corpus.with_attachment, [("to@example.org", "to")]),
    "non-ascii": (corpus.international, [("zoe@example.org", "to")]),
}


def api_of(make_provider: MakeProvider, **options: Any) -> Any:
    return make_provider("mailgun", **options).primary.provider


def without_bcc_header(data: bytes) -> bool:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    return b"\nbcc:" not in head and not head.startswith(b"bcc:")


@pytest.mark.parametrize("name", list(MESSAGES))
async def test_api_sends_the_mime_without_bcc_to_every_envelope_recipient(
    name: str, emulator: Emulator, make_provider: MakeProvider
):
    build, rcpts = MESSAGES[name]
    message = outbound(build(), rcpts, queue_id="Q9")
    receipt = await api_of(make_provider).send(message)
    assert receipt.transport == "api" and receipt.provider_message_id
    assert receipt.provider_message_id.endswith(f"@{DOMAIN}>")
    [seen] = emulator.mailgun.received
    assert seen.path == f"/v3/{DOMAIN}/messages.mime" and seen.auth_scheme == "Basic"
    assert seen.status == 200 and seen.body["to"] == [a for a, _ in rcpts]
    sent = emulator.mailgun.mime[receipt.provider_message_id]
    assert without_bcc_header(sent) and b"hidden@example.org" not in sent
    if name != "hidden-bcc":  # nothing else is touched: the bytes are as received
        assert sent == message.data
    parsed = message_from_bytes(sent, policy=SMTPUTF8)
    if name == "non-ascii":
        assert str(parsed["Subject"]) == "Grüße aus Köln — 東京"
        assert "Schöne Grüße, 東京から" in parsed.get_content()  # type: ignore[attr-defined]
    if name == "attachment":
        [part] = list(parsed.iter_attachments())  # type: ignore[attr-defined]
        assert part.get_filename() == "report.pdf"
        assert part.get_content() == b"%PDF-1.4 test\n"
    ids = {k: v for k, v in seen.body.items() if k.startswith("v:")}
    expected = {"v:relay_message_id": ["Q9"]}
    assert ids == expected


async def test_options_and_ids_ride_as_mailgun_names_them(
    emulator: Emulator, make_provider: MakeProvider
):
    message = OutboundMessage(
        "Q2",
        "sender@example.com",
        [("to@example.org", "to")],
        corpus.plain().as_bytes(),
        ip_pool="pool-a",
        campaign="spring-sale—2026",
        recipient_ids={"to@example.org": 41},
        open_tracking=True,
        click_tracking=False,
    )
    await api_of(make_provider).send(message)
    [seen] = emulator.mailgun.received
    fields = {k: v for k, v in seen.body.items() if k != "message"}
    assert fields == {
        "to": ["to@example.org"],
        "o:tag": ["spring-sale2026"],  # ASCII only, as Mailgun's tags are
        "o:sending-ip-pool": ["pool-a"],
        "o:tracking-opens": ["yes"],
        "o:tracking-clicks": ["no"],
        "v:relay_message_id": ["Q2"],
        "v:relay_recipient_id": ["41"],
    }


def test_the_form_is_multipart_form_data_a_stdlib_parser_reads():
    message = outbound(with_bcc(), RCPTS)
    body, content_type = mailgun.form(message)
    assert content_type.startswith("multipart/form-data; boundary=")
    form = parse_form(content_type, body)
    assert form["to"] == [a for a, _ in RCPTS]
    assert form["message"] == [mailgun.without_bcc(message.data)]


@pytest.mark.parametrize("name", list(MESSAGES))
async def test_smtp_leg_sends_the_same_messages_with_its_headers(
    name: str, emulator: Emulator, make_provider: MakeProvider
):
    build, rcpts = MESSAGES[name]
    chain = make_provider("mailgun")
    assert chain.fallback is not None and chain.fallback.transport == "smtp"
    message = outbound(build(), rcpts, ip_pool="pool-b", campaign="spring", queue_id="Q7")
    receipt = await chain.fallback.provider.send(message)
    assert receipt.transport == "smtp"
    [sent] = emulator.smtp.messages
    assert sent.user == f"postmaster@{DOMAIN}"  # Mailgun's default SMTP login
    assert sent.rcpt_tos == [a for a, _ in rcpts]
    assert without_bcc_header(sent.data) and b"hidden@example.org" not in sent.data
    parsed = message_from_bytes(sent.data, policy=SMTPUTF8)
    assert json.loads(str(parsed["X-Mailgun-Variables"])) == {"relay_message_id": "Q7"}
    assert (str(parsed["X-Mailgun-Tag"]), str(parsed["X-Mailgun-Sending-Ip-Pool"])) == (
        "spring",
        "pool-b",
    )
    if name == "non-ascii":
        assert str(parsed["Subject"]) == "Grüße aus Köln — 東京"
    if name == "attachment":
        assert sent.data.endswith(message.data.split(b"\r\n\r\n", 1)[1])


async def test_a_clients_own_variables_header_wins(emulator: Emulator, make_provider: MakeProvider):
    msg = corpus.plain()
    msg["X-Mailgun-Variables"] = '{"mine": "1"}'
    chain = make_provider("mailgun")
    assert chain.fallback is not None
    await chain.fallback.provider.send(outbound(msg))
    [sent] = emulator.smtp.messages
    assert sent.data.count(b"X-Mailgun-Variables") == 1 and b'{"mine": "1"}' in sent.data


STATUS_CASES = [
    (400, PermanentError),
    (401, CredentialsError),
    (403, CredentialsError),
    (404, CredentialsError),
    (413, PermanentError),
    (429, TransientError),
    (500, TransientError),
    (502, TransientError),
    (503, TransientError),
]


def test_the_table():
    for status, cls in STATUS_CASES:
        assert mailgun.classify(status) is cls
    assert mailgun.classify(200) is None
    assert mailgun.classify(418) is PermanentError


@pytest.mark.parametrize(("status", "cls"), STATUS_CASES)
async def test_statuses_over_http(
    status: int, cls: type[ProviderError], emulator: Emulator, make_provider: MakeProvider
):
    emulator.mailgun.fail(status, message="emulated trouble")
    with pytest.raises(ProviderError) as info:
        await api_of(make_provider).send(outbound(corpus.plain()))
    assert type(info.value) is cls and info.value.transport == "api"
    assert info.value.code == status and "emulated trouble" in info.value.text


async def test_429_carries_retry_after(emulator: Emulator, make_provider: MakeProvider):
    emulator.mailgun.rate_limit(reset_in=5)
    with pytest.raises(TransientError) as info:
        await api_of(make_provider).send(outbound(corpus.plain()))
    assert info.value.retry_after == 6


async def test_an_unknown_domain_is_the_operators_fix_in_mailguns_words(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.mailgun.domains[DOMAIN] = "unknown"
    with pytest.raises(CredentialsError) as info:
        await api_of(make_provider).send(outbound(corpus.plain()))
    assert "Domain not found" in info.value.text and DOMAIN in info.value.text


async def test_a_wrong_key_is_refused_and_never_shown(make_provider: MakeProvider):
    chain = make_provider(
        "mailgun", secrets={"api_key": "wrong-mailgun-key", "smtp_password": API_KEY}
    )
    with pytest.raises(CredentialsError) as info:
        await chain.primary.provider.send(outbound(corpus.plain()))
    assert "wrong-mailgun-key" not in str(info.value)
    health = await chain.primary.provider.check()
    assert not health.ok and "wrong-mailgun-key" not in health.detail


@pytest.mark.parametrize(
    ("state", "ok", "words"),
    [
        ("active", True, "is active"),
        ("unverified", True, "is unverified"),
        ("unknown", False, "404 Domain not found"),
        ("disabled", False, "is disabled: abuse"),
    ],
)
async def test_the_live_check_asks_the_domains_state(
    state: str, ok: bool, words: str, emulator: Emulator, make_provider: MakeProvider
):
    emulator.mailgun.domains[DOMAIN] = state
    health = await api_of(make_provider).check()
    assert health.ok is ok and words in health.detail


async def test_the_emulator_wants_basic_auth_as_user_api(
    emulator: Emulator, http: httpx.AsyncClient
):
    url = f"{emulator.mailgun_url}/v4/domains/{DOMAIN}"
    good = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    wrong_user = base64.b64encode(f"apikey:{API_KEY}".encode()).decode()
    ok = await http.get(url, headers={"Authorization": f"Basic {good}"})
    refused = await http.get(url, headers={"Authorization": f"Basic {wrong_user}"})
    assert (ok.status_code, refused.status_code) == (200, 401)
    assert ok.json()["domain"]["state"] == "active"


def test_regions_pick_the_api_and_smtp_hosts():
    for region, api_url, host in (
        (None, "https://api.mailgun.net", "smtp.mailgun.org"),
        ("us", "https://api.mailgun.net", "smtp.mailgun.org"),
        ("eu", "https://api.eu.mailgun.net", "smtp.eu.mailgun.org"),
    ):
        options = {"sending_domain": "mg.example.com", "region": region}
        chain = build_provider("mailgun", "mg", options, {"api_key": "k", "smtp_password": "p"})
        assert chain.primary.provider.api_url == api_url  # type: ignore[attr-defined]
        assert chain.fallback is not None
        endpoint = chain.fallback.provider.endpoint  # type: ignore[attr-defined]
        assert (endpoint.host, endpoint.port, endpoint.username) == (
            host,
            587,
            "postmaster@mg.example.com",
        )
        assert endpoint.password.reveal() == "p"  # never the API key


def test_the_api_key_is_not_mailguns_smtp_password():
    assert transports("mailgun", {"api_key": "k"}) == ["api"]
    assert transports("mailgun", {"smtp_password": "p"}) == ["smtp"]
    assert transports("mailgun", {"api_key": "k", "smtp_password": "p"}) == ["api", "smtp"]
    chain = build_provider("mailgun", "mg", {"sending_domain": "mg.example.com"}, {"api_key": "k"})
    assert chain.fallback is None and chain.primary.transport == "api"


@pytest.mark.parametrize(
    ("fields", "files", "words"),
    [
        ({"to": "a@example.org"}, None, "'message' parameter is missing"),
        ({}, {"message": ("m.mime", b"From: a@example.com\r\n\r\nx", "message/rfc822")}, "'to'"),
        (
            {"to": "not-an-address"},
            {"message": ("m.mime", b"From: a@example.com\r\n\r\nx", "message/rfc822")},
            "not a valid address",
        ),
        (
            {"to": "a@example.org"},
            {"message": ("m.mime", b"Subject: no from\r\n\r\nx", "message/rfc822")},
            "'from' parameter is missing",
        ),
    ],
)
async def test_the_emulator_refuses_a_form_mailgun_would(
    fields: dict[str, str],
    files: dict[str, Any] | None,
    words: str,
    emulator: Emulator,
    http: httpx.AsyncClient,
):
    url = f"{emulator.mailgun_url}/v3/{DOMAIN}/messages.mime"
    auth = httpx.BasicAuth("api", API_KEY)
    response = await http.post(url, data=fields, files=files or {"x": ("x", b"")}, auth=auth)
    assert response.status_code == 400 and words in response.json()["message"]
    assert emulator.mailgun.accepted() == []
