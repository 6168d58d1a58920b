"""Amazon SES through moto's SES v2 server and the project emulator's SMTP part, on loopback.

moto runs in server mode on 127.0.0.1 (tests/aws.py): a real HTTP SES v2
endpoint others wrote, which reads our SigV4-signed requests and keeps what
it was sent. The SMTP leg goes to
the emulator's SMTP sink standing in for ``email-smtp.{region}.amazonaws.com``,
with the derived SMTP password as the only password it accepts.
"""

from __future__ import annotations

import asyncio
import base64
import email
import json
from collections.abc import AsyncIterator
from email.policy import SMTP as SMTP_POLICY
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from relay.core.errors import (
    CredentialsError,
    Invalid,
    PayloadRejected,
    PermanentError,
    ProviderError,
    TransientError,
)
from relay.core.settings import Secret
from relay.emulator import Emulator
from relay.providers import registry, ses
from relay.providers.chain import ProviderChain
from relay.providers.registry import build_provider, validate_options
from relay.service.providers import ProviderConfig
from tests.aws import (  # noqa: F401 (moto_server, moto_state: the fixtures moto_url, moto)
    ACCESS_KEY_ID,
    ACCOUNT_STATE,
    REGION,
    SECRET_ACCESS_KEY,
    SENDER,
    Moto,
    moto_server,
    moto_state,
)

from . import corpus
from .corpus import outbound


def ses_options(api_url: str, emulator: Emulator | None = None, **extra: Any) -> dict[str, Any]:
    """An SES row on ``api_url`` (moto), its SMTP leg on the emulator's sink."""
    options: dict[str, Any] = {}
    if emulator is not None:
        smtp = emulator.provider_options("ses")
        options = {k: smtp[k] for k in ("smtp_host", "smtp_port", "smtp_tls")}
    return options | {"region": REGION, "access_key_id": ACCESS_KEY_ID, "api_url": api_url, **extra}


SECRETS = {"secret_access_key": SECRET_ACCESS_KEY}


@pytest.fixture
async def chains(http: httpx.AsyncClient) -> AsyncIterator[list[ProviderChain]]:
    made: list[ProviderChain] = []
    yield made
    for chain in made:
        await chain.aclose()


@pytest.fixture
def ses_emulator(emulator: Emulator) -> Emulator:
    """The emulator's SMTP sink taking SES's SMTP login: key id and derived password."""
    emulator.smtp.users[ACCESS_KEY_ID] = ses.smtp_password(SECRET_ACCESS_KEY, REGION)
    return emulator


def build(
    chains: list[ProviderChain], http: httpx.AsyncClient, options: dict[str, Any]
) -> ProviderChain:
    chain = build_provider("ses", "test-ses", options, SECRETS, http=http)
    chains.append(chain)
    return chain


def hidden_bcc() -> tuple[bytes, list[tuple[str, str]]]:
    msg = corpus.plain(to="A <a@example.org>", Cc="c@example.org")
    msg["Bcc"] = "hidden@example.org"
    rcpts = [("a@example.org", "to"), ("c@example.org", "cc"), ("hidden@example.org", "bcc")]
    return msg.as_bytes(policy=SMTP_POLICY), rcpts


# -- the API leg through moto --------------------------------------------------


async def test_hidden_bcc_goes_to_every_recipient_and_the_bytes_hide_it(
    moto: Moto, chains: list[ProviderChain], http: httpx.AsyncClient
):
    data, rcpts = hidden_bcc()
    chain = build(chains, http, ses_options(moto.url, configuration_set="relay-events"))
    receipt = await chain.send(outbound(data, rcpts, mail_from=SENDER, queue_id="Q7"))
    assert receipt.transport == "api" and receipt.provider_message_id
    [sent] = moto.sent()
    assert sent.id == receipt.provider_message_id
    assert sent.source == SENDER
    # Destination: every envelope recipient, first (moto appends the header's).
    assert sent.destinations[:3] == [a for a, _ in rcpts]
    assert "hidden@example.org" not in sent.raw_data
    assert "bcc:" not in sent.raw_data.lower()
    assert sent.raw_data.encode() == data.replace(b"Bcc: hidden@example.org\r\n", b"")


async def test_attachment_and_non_ascii_arrive_byte_for_byte(
    moto: Moto, chains: list[ProviderChain], http: httpx.AsyncClient
):
    moto.verify("joerg@example.com")
    chain = build(chains, http, ses_options(moto.url))
    attached = outbound(corpus.with_attachment(), mail_from=SENDER)
    await chain.send(attached)
    intl = corpus.international().as_bytes(policy=SMTP_POLICY)
    await chain.send(outbound(intl, [("zoe@example.org", "to")], mail_from="joerg@example.com"))
    first, second = moto.sent()
    assert first.raw_data.encode() == attached.data
    parsed = email.message_from_string(first.raw_data, policy=email.policy.default)
    [attachment] = list(parsed.iter_attachments())  # type: ignore[attr-defined]
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content() == b"%PDF-1.4 test\n"
    assert second.raw_data.encode("utf-8") == intl
    assert "Schöne Grüße, 東京から" in second.raw_data


def test_the_request_body_carries_the_set_and_relay_ids():
    data, rcpts = hidden_bcc()
    message = outbound(data, rcpts, mail_from=SENDER, campaign="spring sale/2026")
    body = ses.send_email_body(message, "relay-events")
    assert body["FromEmailAddress"] == SENDER
    assert body["Destination"] == {"ToAddresses": [a for a, _ in rcpts]}
    assert base64.b64decode(body["Content"]["Raw"]["Data"]) == ses.without_bcc(data)
    assert body["ConfigurationSetName"] == "relay-events"
    assert body["EmailTags"] == [
        {"Name": "relay_message_id", "Value": "Q1"},
        {"Name": "relay_campaign", "Value": "spring_sale_2026"},
    ]
    one = outbound(data, [("a@example.org", "to")])
    one.recipient_ids["a@example.org"] = 42
    tags = {t["Name"]: t["Value"] for t in ses.send_email_body(one, None)["EmailTags"]}
    assert tags == {"relay_message_id": "Q1", "relay_recipient_id": "42"}
    assert "ConfigurationSetName" not in ses.send_email_body(one, None)
    null_sender = outbound(data, rcpts, mail_from="")
    assert "FromEmailAddress" not in ses.send_email_body(null_sender, None)


async def test_an_unverified_sender_is_refused_for_good(
    moto: Moto, chains: list[ProviderChain], http: httpx.AsyncClient
):
    chain = build(chains, http, ses_options(moto.url))
    with pytest.raises(PermanentError) as info:
        await chain.primary.provider.send(outbound(corpus.plain(), mail_from="nobody@else.test"))
    assert type(info.value) is PermanentError
    assert "MessageRejected" in str(info.value.code)
    assert moto.sent() == []


def test_the_request_is_signed_by_sigv4_for_ses_in_the_region():
    """What botocore signs is what the leg sends (its Authorization names ses and the region)."""
    leg = ses.SesApi(
        "x",
        Secret(""),
        http=httpx.AsyncClient(),
        api_url="https://email.eu-west-1.amazonaws.com",
        options={"region": "eu-west-1", "access_key_id": ACCESS_KEY_ID},
        secrets={"secret_access_key": Secret(SECRET_ACCESS_KEY)},
    )
    headers = leg._signed("POST", ses.SEND_PATH, b"{}")
    auth = headers["Authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/")
    assert "/eu-west-1/ses/aws4_request" in auth
    assert SECRET_ACCESS_KEY not in auth and "X-Amz-Date" in headers
    assert SECRET_ACCESS_KEY not in repr(leg)


# -- the error table -----------------------------------------------------------

STATUS_CASES = [
    (400, "MessageRejected", PermanentError),
    (400, "MailFromDomainNotVerifiedException", PermanentError),
    (400, "BadRequestException", PayloadRejected),
    (404, "NotFoundException", TransientError),
    (429, "TooManyRequestsException", TransientError),
    (400, "Throttling", TransientError),
    (400, "ThrottlingException", TransientError),
    (429, None, TransientError),
    (400, "LimitExceededException", TransientError),
    (400, "AccountSuspendedException", CredentialsError),
    (400, "SendingPausedException", CredentialsError),
    (403, "InvalidSignatureException", CredentialsError),
    (403, "UnrecognizedClientException", CredentialsError),
    (403, None, CredentialsError),
    (400, None, PermanentError),
    (500, "InternalFailure", TransientError),
    (503, None, TransientError),
]


def test_the_table():
    for status, code, cls in STATUS_CASES:
        assert ses.classify(status, code) is cls, (status, code)
    assert ses.classify(200, None) is None


class AwsErrors:
    """A loopback HTTP server answering every request with one AWS-style error."""

    def __init__(self) -> None:
        self.status = 500
        self.code: str | None = None
        self.server: asyncio.Server | None = None
        self.requests: list[bytes] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ),
            0,
        )
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        payload = json.dumps({"message": "emulated trouble"}).encode()
        extra = (
            f"x-amzn-ErrorType: {self.code}:http://internal.amazon.com/\r\n" if self.code else ""
        )
        if self.status == 429:
            extra += "Retry-After: 7\r\n"
        writer.write(
            (
                f"HTTP/1.1 {self.status} Error\r\nContent-Type: application/json\r\n{extra}"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + payload
        )
        await writer.drain()
        writer.close()

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def aws_errors() -> AsyncIterator[tuple[AwsErrors, str]]:
    server = AwsErrors()
    url = await server.start()
    yield server, url
    await server.aclose()


@pytest.mark.parametrize(("status", "code", "cls"), STATUS_CASES)
async def test_statuses_over_http(
    status: int,
    code: str | None,
    cls: type[ProviderError],
    aws_errors: tuple[AwsErrors, str],
    chains: list[ProviderChain],
    http: httpx.AsyncClient,
):
    server, url = aws_errors
    server.status, server.code = status, code
    chain = build(chains, http, ses_options(url))
    with pytest.raises(ProviderError) as info:
        await chain.primary.provider.send(outbound(corpus.plain()))
    assert type(info.value) is cls
    assert info.value.text == "emulated trouble"
    assert SECRET_ACCESS_KEY not in str(info.value)
    if status == 429:
        assert info.value.retry_after == 7
    assert b"authorization: aws4-hmac-sha256" in server.requests[0].lower()


# -- the SMTP leg and the fallback ---------------------------------------------


def test_the_smtp_password_is_the_sigv4_chain_over_sendrawemail():
    """Checked against botocore's own SigV4 key derivation, a separate implementation:
    its signature of the string ``SendRawEmail`` on the date ``11111111`` in the
    region for ``ses`` is the HMAC the SMTP password wraps (after the 0x04 byte)."""
    signer = SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "ses", REGION)
    request = AWSRequest(method="POST", url="https://example.invalid/")
    request.context["timestamp"] = "11111111T000000Z"
    expected = base64.b64encode(b"\x04" + bytes.fromhex(signer.signature("SendRawEmail", request)))
    assert ses.smtp_password(SECRET_ACCESS_KEY, REGION) == expected.decode()
    assert ses.smtp_password(SECRET_ACCESS_KEY, "eu-west-1") != expected.decode()
    assert len(base64.b64decode(expected)) == 33


@pytest.mark.parametrize(
    "make",
    [
        lambda: hidden_bcc(),
        lambda: (corpus.with_attachment().as_bytes(policy=SMTP_POLICY), [("to@example.org", "to")]),
        lambda: (corpus.international().as_bytes(policy=SMTP_POLICY), [("zoe@example.org", "to")]),
    ],
    ids=["hidden-bcc", "attachment", "non-ascii"],
)
async def test_the_smtp_leg_logs_in_with_the_derived_password(
    make: Any, ses_emulator: Emulator, chains: list[ProviderChain], http: httpx.AsyncClient
):
    data, rcpts = make()
    chain = build(
        chains, http, ses_options("http://127.0.0.1:9", ses_emulator, configuration_set="cs-1")
    )
    assert chain.fallback is not None
    message = outbound(data, rcpts, mail_from=SENDER, queue_id="Q9")
    receipt = await chain.fallback.provider.send(message)
    assert receipt.transport == "smtp"
    [got] = ses_emulator.smtp.messages
    assert got.user == ACCESS_KEY_ID
    assert got.rcpt_tos == [a for a, _ in rcpts]
    assert got.data.startswith(
        b"X-SES-CONFIGURATION-SET: cs-1\r\nX-SES-MESSAGE-TAGS: relay_message_id=Q9\r\n"
    )
    assert b"hidden@example.org" not in got.data
    assert got.data.endswith(ses.without_bcc(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


async def test_the_api_failing_falls_back_to_smtp(
    aws_errors: tuple[AwsErrors, str],
    ses_emulator: Emulator,
    chains: list[ProviderChain],
    http: httpx.AsyncClient,
):
    server, url = aws_errors
    server.status, server.code = 429, "TooManyRequestsException"
    chain = build(chains, http, ses_options(url, ses_emulator))
    data, rcpts = hidden_bcc()
    receipt = await chain.send(outbound(data, rcpts, mail_from=SENDER))
    assert receipt.transport == "smtp"
    assert len(server.requests) == 1
    [got] = ses_emulator.smtp.messages
    assert got.rcpt_tos == [a for a, _ in rcpts]


async def test_a_rejected_message_does_not_fall_back(
    moto: Moto, ses_emulator: Emulator, chains: list[ProviderChain], http: httpx.AsyncClient
):
    chain = build(chains, http, ses_options(moto.url, ses_emulator))
    with pytest.raises(PermanentError):
        await chain.send(outbound(corpus.plain(), mail_from="unverified@else.test"))
    assert ses_emulator.smtp.messages == []


async def test_a_wrong_secret_is_refused_by_the_smtp_relay(
    ses_emulator: Emulator, chains: list[ProviderChain], http: httpx.AsyncClient
):
    chain = build_provider(
        "ses",
        "bad",
        ses_options("http://127.0.0.1:9", ses_emulator),
        {"secret_access_key": "not-the-secret"},
        http=http,
    )
    chains.append(chain)
    assert chain.fallback is not None
    with pytest.raises(CredentialsError):
        await chain.fallback.provider.send(outbound(corpus.plain(), mail_from=SENDER))


# -- the live check --------------------------------------------------------------


async def test_the_check_reads_the_account_and_the_test_identity(
    moto: Moto, ses_emulator: Emulator, chains: list[ProviderChain], http: httpx.AsyncClient
):
    ok = build(chains, http, ses_options(moto.url, ses_emulator, test_address=SENDER))
    health = await ok.check()
    assert health.ok, health.detail
    assert "account can send" in health.detail and f"identity of {SENDER}" in health.detail

    stranger = build(chains, http, ses_options(moto.url, test_address="ops@unknown.test"))
    health = await stranger.primary.provider.check()
    assert not health.ok and "not a verified identity" in health.detail
    assert "ops@unknown.test: not an identity" in health.detail

    moto.verify("domain.test")  # the domain's identity covers its addresses
    by_domain = build(chains, http, ses_options(moto.url, test_address="ops@domain.test"))
    assert (await by_domain.primary.provider.check()).ok

    ACCOUNT_STATE.update(SendingEnabled=False, EnforcementStatus="SHUTDOWN")
    health = await ok.primary.provider.check()
    assert not health.ok and "paused" in health.detail and "SHUTDOWN" in health.detail


async def test_the_live_check_of_a_new_provider(moto: Moto, ses_emulator: Emulator):
    from relay.service.provider_checks import live_check

    config = ProviderConfig("ses1", "ses", ses_options(moto.url, ses_emulator), SECRETS)
    config.options["test_address"] = SENDER
    result = await live_check(config, "relay.test")
    assert result.ok, result.detail
    config.options["test_address"] = "who@nowhere.test"
    assert not (await live_check(config, "relay.test")).ok
    assert ses_emulator.smtp.messages == []  # nothing is sent by the check


# -- the row ---------------------------------------------------------------------


def test_a_row_needs_region_key_id_and_secret():
    good = {"region": REGION, "access_key_id": ACCESS_KEY_ID}
    validate_options("ses", good, SECRETS)
    for options, secrets, field in (
        ({"access_key_id": ACCESS_KEY_ID}, SECRETS, "region"),
        ({**good, "region": "mars"}, SECRETS, "region"),
        ({"region": REGION}, SECRETS, "access_key_id"),
        (good, {}, "secret_access_key"),
        (good, {**SECRETS, "webhook_key": "not-an-arn"}, "webhook_key"),
    ):
        with pytest.raises(Invalid) as info:
            validate_options("ses", options, secrets)
        assert info.value.field == field
    assert "ses" in registry.KINDS


def test_the_defaults_follow_the_region():
    options = {"region": "eu-central-1", "access_key_id": ACCESS_KEY_ID}
    chain = build_provider("ses", "x", options, SECRETS)
    assert chain.primary.provider.api_url == "https://email.eu-central-1.amazonaws.com"
    assert chain.fallback is not None
    endpoint = chain.fallback.provider.endpoint
    assert endpoint.host == "email-smtp.eu-central-1.amazonaws.com" and endpoint.port == 587
    assert endpoint.tls == "starttls" and endpoint.username == ACCESS_KEY_ID
    assert endpoint.password.reveal() == ses.smtp_password(SECRET_ACCESS_KEY, "eu-central-1")
    given = build_provider("ses", "y", options, {**SECRETS, "smtp_password": "from-console"})
    assert given.fallback is not None
    assert given.fallback.provider.endpoint.password.reveal() == "from-console"


def test_provider_ips_reads_the_regional_hosts():
    from relay.service.provider_checks import _targets

    options = {"region": "ap-southeast-2", "access_key_id": ACCESS_KEY_ID}
    assert _targets(ProviderConfig("x", "ses", options, SECRETS)) == [
        ("api", "email.ap-southeast-2.amazonaws.com", 443),
        ("smtp", "email-smtp.ap-southeast-2.amazonaws.com", 587),
    ]


# -- the project emulator's SES part (relay emulate) ------------------------------


async def test_the_emulator_plays_ses_for_both_legs(emulator: Emulator, make_provider: Any):
    from .conftest import API_KEY

    secrets = {"secret_access_key": API_KEY}
    chain = make_provider("ses", secrets=secrets, test_address=SENDER)
    assert (await chain.check()).ok
    data, rcpts = hidden_bcc()
    receipt = await chain.send(outbound(data, rcpts, mail_from=SENDER))
    assert receipt.transport == "api"
    [body] = emulator.ses.accepted()
    assert body["Destination"]["ToAddresses"] == [a for a, _ in rcpts]
    assert b"hidden@example.org" not in base64.b64decode(body["Content"]["Raw"]["Data"])

    emulator.ses.rate_limit()
    receipt = await chain.send(outbound(data, rcpts, mail_from=SENDER))
    assert receipt.transport == "smtp"  # 429: SES's SMTP interface, derived password
    [got] = emulator.smtp.messages
    assert got.user == API_KEY and got.rcpt_tos == [a for a, _ in rcpts]

    emulator.ses.fail(400, code="MessageRejected", message="Email address is not verified")
    with pytest.raises(PermanentError, match="not verified"):
        await chain.send(outbound(data, rcpts, mail_from=SENDER))
    assert len(emulator.smtp.messages) == 1  # a refusal does not fall back

    emulator.ses.seed_list("identities", {"identity": "example.com"})
    stranger = make_provider("ses", secrets=secrets, test_address="ops@elsewhere.test")
    health = await stranger.primary.provider.check()
    assert not health.ok and "not a verified identity" in health.detail
    wrong = make_provider("ses", secrets=secrets, access_key_id="AKIAWRONG")
    with pytest.raises(CredentialsError):
        await wrong.primary.provider.send(outbound(data, rcpts, mail_from=SENDER))


async def test_a_large_message_is_signed_off_the_loop_and_arrives_whole(
    moto: Moto, chains: list[ProviderChain], http: httpx.AsyncClient
):
    big = outbound(corpus.with_attachment(bytes(range(256)) * 1500), mail_from=SENDER)
    assert len(big.data) > ses.SIGN_OFF_LOOP
    chain = build(chains, http, ses_options(moto.url))
    assert (await chain.send(big)).transport == "api"
    [sent] = moto.sent()
    assert sent.raw_data.encode() == big.data
