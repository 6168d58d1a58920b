"""The custom SMTP provider against the emulator's sink: TLS, pooling, replies, partials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from relay.core.errors import CredentialsError, PermanentError, ProviderError, TransientError
from relay.emulator import Emulator
from relay.providers import headers, smtp
from relay.providers.chain import ProviderChain
from relay.providers.registry import build_provider

from . import corpus
from .conftest import API_KEY, MakeProvider
from .corpus import outbound

RCPTS = [("a@example.org", "to"), ("b@example.org", "cc"), ("c@example.org", "bcc")]


@pytest.mark.parametrize(
    ("stage", "code", "cls"),
    [
        ("connect", 421, TransientError),
        ("connect", 554, TransientError),
        ("auth", 454, TransientError),
        ("auth", 535, CredentialsError),
        ("mail", 451, TransientError),
        ("mail", 550, PermanentError),
        ("mail", 530, CredentialsError),
        ("rcpt", 450, TransientError),
        ("rcpt", 550, PermanentError),
        ("rcpt", 553, PermanentError),
        ("data", 452, TransientError),
        ("data", 554, PermanentError),
        ("data", 421, TransientError),
    ],
)
def test_reply_table(stage: str, code: int, cls: type[ProviderError]):
    assert smtp.error_for(stage, code) is cls


async def test_sends_the_bytes_as_received_to_every_recipient(
    emulator: Emulator, make_provider: MakeProvider
):
    message = outbound(corpus.inline_image(), RCPTS)
    receipt = await make_provider("smtp").send(message)
    assert receipt.transport == "smtp" and receipt.provider_message_id
    assert receipt.rejected == {}
    [sent] = emulator.smtp.messages
    assert sent.data == message.data and sent.mail_from == "sender@example.com"
    assert sent.rcpt_tos == [a for a, _ in RCPTS] and sent.user == "apikey"
    assert f"SIZE={len(message.data)}" in sent.mail_options


async def test_8bit_and_smtputf8_are_declared(emulator: Emulator, make_provider: MakeProvider):
    message = outbound(corpus.smtputf8(), [("用户@例子.广告", "to")], mail_from="jörg@exämple.de")
    await make_provider("smtp").send(message)
    [sent] = emulator.smtp.messages
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(sent.mail_options)
    assert sent.rcpt_tos == ["用户@例子.广告"] and sent.data == message.data


async def test_a_connection_is_reused_with_rset_between_messages(
    emulator: Emulator, make_provider: MakeProvider
):
    provider = make_provider("smtp")
    for _ in range(4):
        await provider.send(outbound(corpus.plain()))
    assert emulator.smtp.connections == 1
    assert {m.connection for m in emulator.smtp.messages} == {1}
    assert emulator.smtp.rsets == 3


async def test_a_dropped_connection_is_replaced(emulator: Emulator, make_provider: MakeProvider):
    provider = make_provider("smtp")
    await provider.send(outbound(corpus.plain()))
    emulator.smtp.disconnect_all()
    await provider.send(outbound(corpus.plain()))
    assert [m.connection for m in emulator.smtp.messages] == [1, 2]


async def test_some_recipients_refused_permanently(emulator: Emulator, make_provider: MakeProvider):
    emulator.smtp.reject("b@example.org")
    receipt = await make_provider("smtp").send(outbound(corpus.plain(), RCPTS))
    assert list(receipt.rejected) == ["b@example.org"] and receipt.permanent
    assert receipt.rejected["b@example.org"].startswith("550 5.1.1")
    assert emulator.smtp.messages[0].rcpt_tos == ["a@example.org", "c@example.org"]


async def test_a_4xx_refusal_makes_the_rejections_retryable(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.smtp.reject("b@example.org")
    emulator.smtp.reject("c@example.org", "452 4.2.2 <{}>: mailbox full")
    receipt = await make_provider("smtp").send(outbound(corpus.plain(), RCPTS))
    assert set(receipt.rejected) == {"b@example.org", "c@example.org"}
    assert not receipt.permanent


async def test_all_refused_permanently_names_them(emulator: Emulator, make_provider: MakeProvider):
    for address, _ in RCPTS:
        emulator.smtp.reject(address)
    with pytest.raises(PermanentError) as info:
        await make_provider("smtp").send(outbound(corpus.plain(), RCPTS))
    assert set(info.value.recipients) == {a for a, _ in RCPTS} and info.value.code == 550
    assert emulator.smtp.messages == []


async def test_all_refused_with_one_4xx_is_transient(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.smtp.reject("a@example.org")
    emulator.smtp.reject("b@example.org", "451 4.3.0 try later")
    with pytest.raises(TransientError) as info:
        await make_provider("smtp").send(outbound(corpus.plain(), RCPTS[:2]))
    assert info.value.code == 451 and len(info.value.recipients) == 2


@pytest.mark.parametrize(
    ("stage", "reply", "cls"),
    [
        ("mail", "550 5.7.1 sender rejected", PermanentError),
        ("mail", "451 4.3.0 try later", TransientError),
        ("data", "554 5.6.0 message refused", PermanentError),
        ("data", "452 4.3.1 out of space", TransientError),
    ],
)
async def test_mail_and_data_replies(
    stage: str,
    reply: str,
    cls: type[ProviderError],
    emulator: Emulator,
    make_provider: MakeProvider,
):
    emulator.smtp.fail(stage, reply)
    provider = make_provider("smtp")
    with pytest.raises(ProviderError) as info:
        await provider.send(outbound(corpus.plain()))
    assert type(info.value) is cls and info.value.code == int(reply[:3])
    assert info.value.text == reply[4:]
    await provider.send(outbound(corpus.plain()))  # the same connection goes on
    assert emulator.smtp.connections == 1


async def test_wrong_password_is_a_credentials_error_without_the_password(
    make_provider: MakeProvider,
):
    provider = make_provider("smtp", secrets={"smtp_password": "hunter2-secret"})
    with pytest.raises(CredentialsError) as info:
        await provider.send(outbound(corpus.plain()))
    assert info.value.code == 535
    assert "hunter2-secret" not in f"{info.value!r} {info.value} {provider!r}"
    assert not (await provider.check()).ok


async def test_a_server_without_smtputf8_refuses_an_international_envelope(
    emulator: Emulator, make_provider: MakeProvider
):
    emulator.smtp.smtputf8 = False
    with pytest.raises(PermanentError, match="SMTPUTF8"):
        await make_provider("smtp").send(outbound(corpus.plain(), [("用户@例子.广告", "to")]))


async def test_unreachable_server_is_transient(make_provider: MakeProvider):
    provider = make_provider("smtp", smtp_port=9, timeout=2)
    with pytest.raises(TransientError):
        await provider.send(outbound(corpus.plain()))


async def test_binding_to_a_source_address(emulator: Emulator, make_provider: MakeProvider):
    await make_provider("smtp", source_address="127.0.0.1").send(outbound(corpus.plain()))
    assert len(emulator.smtp.messages) == 1


# -- TLS -----------------------------------------------------------------------


@pytest.fixture
async def tls_provider(tls_emulator: Emulator, http: httpx.AsyncClient) -> AsyncIterator[Any]:
    made: list[ProviderChain] = []

    def make(tls: str, *, trusted: bool = True, **options: Any) -> ProviderChain:
        opts = tls_emulator.provider_options("smtp", smtp_tls=tls) | options
        opts["smtp_user"] = "apikey"
        context = tls_emulator.client_tls_context() if trusted else None
        chain = build_provider(
            "smtp", "tls", opts, {"smtp_password": API_KEY}, http=http, tls_context=context
        )
        made.append(chain)
        return chain

    yield make
    for chain in made:
        await chain.aclose()


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_verified_tls(tls: str, tls_emulator: Emulator, tls_provider: Any):
    await tls_provider(tls).send(outbound(corpus.plain()))
    [sent] = tls_emulator.smtp.messages
    assert sent.tls and sent.user == "apikey"


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_an_unverifiable_certificate_is_refused(tls: str, tls_provider: Any):
    with pytest.raises(TransientError, match=r"(?i)certificate|TLS"):
        await tls_provider(tls, trusted=False).send(outbound(corpus.plain()))


async def test_allow_insecure_tls_accepts_it(tls_emulator: Emulator, tls_provider: Any):
    provider = tls_provider("starttls", trusted=False, allow_insecure_tls=True)
    await provider.send(outbound(corpus.plain()))
    assert tls_emulator.smtp.messages[0].tls


async def test_starttls_required_but_not_offered_is_transient(make_provider: MakeProvider):
    with pytest.raises(TransientError, match=r"(?i)starttls"):
        await make_provider("smtp", smtp_tls="starttls").send(outbound(corpus.plain()))


def test_header_field_folds_without_changing_the_value():
    value = '{"category": ["' + '", "'.join(f"category-{i}" for i in range(20)) + '"]}'
    field = headers.header_field("X-SMTPAPI", value)
    lines = field.decode().split("\r\n")
    assert all(len(line) <= 78 for line in lines) and len(lines) > 3
    assert field.decode().replace("\r\n", "").removeprefix("X-SMTPAPI: ") == value
