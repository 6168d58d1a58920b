"""build_provider and validate_options: defaults, overrides, refusals with field names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.core.errors import Invalid
from relay.core.settings import Secret
from relay.emulator import Emulator
from relay.providers.base import Provider
from relay.providers.registry import build_provider, make_test_message, validate_options
from relay.providers.smtp import SmtpEndpoint, SmtpTransport

from . import corpus
from .conftest import MakeProvider
from .corpus import outbound


def endpoint_of(chain: Any, leg: str = "fallback") -> SmtpEndpoint:
    provider = getattr(chain, leg).provider
    provider = getattr(provider, "provider", provider)  # under a default ip pool
    assert isinstance(provider, SmtpTransport)
    return provider.endpoint


@pytest.mark.parametrize(
    ("kind", "options", "secrets", "field"),
    [
        ("postal", {}, {}, "kind"),
        ("mailgun", {}, {"api_key": "k"}, "sending_domain"),
        (
            "mailgun",
            {"sending_domain": "mg.example.com", "region": "ap"},
            {"api_key": "k"},
            "region",
        ),
        ("mailgun", {"sending_domain": "mg/x"}, {"api_key": "k"}, "sending_domain"),
        ("mailgun", {"sending_domain": "mg.example.com"}, {}, "api_key"),
        ("sparkpost", {}, {"webhook_key": "u:p"}, "api_key"),
        ("smtp", {}, {}, "smtp_host"),
        ("smtp", {"smtp_host": "mx.example.com", "smtp_port": 70000}, {}, "smtp_port"),
        ("smtp", {"smtp_host": "mx.example.com", "smtp_port": "587"}, {}, "smtp_port"),
        ("smtp", {"smtp_host": "mx.example.com", "smtp_tls": "ssl"}, {}, "smtp_tls"),
        ("smtp", {"smtp_host": "mx.example.com", "smtp_user": "u"}, {}, "smtp_password"),
        (
            "smtp",
            {"smtp_host": "mx.example.com", "allow_insecure_tls": "yes"},
            {},
            "allow_insecure_tls",
        ),
        ("smtp", {"smtp_host": "h", "source_address": "my-ip"}, {}, "source_address"),
        ("smtp", {"smtp_host": "h", "timeout": 0}, {}, "timeout"),
        ("smtp", {"smtp_host": "h", "smtp_hots": "typo"}, {}, "smtp_hots"),
        ("sendgrid", {}, {}, "api_key"),
        ("sendgrid", {"api_url": "ftp://example.com"}, {"api_key": "k"}, "api_url"),
        ("sparkpost", {"test_address": "nobody"}, {"api_key": "k"}, "test_address"),
        ("sparkpost", {}, {"api_key": "k", "password": "x"}, "password"),
    ],
)
def test_invalid_rows_name_their_field(
    kind: str, options: dict[str, Any], secrets: dict[str, Any], field: str
):
    with pytest.raises(Invalid) as info:
        validate_options(kind, options, secrets)
    assert info.value.field == field
    with pytest.raises(Invalid):
        build_provider(kind, "p", options, secrets)


def test_sendgrid_defaults_to_its_own_relay_with_the_key_as_password():
    chain = build_provider("sendgrid", "sg", {}, {"api_key": "SG.abc"})
    assert chain.primary.transport == "api" and chain.fallback is not None
    assert chain.primary.provider.api_url == "https://api.sendgrid.com"  # type: ignore[attr-defined]
    ep = endpoint_of(chain)
    assert (ep.host, ep.port, ep.tls, ep.username) == (
        "smtp.sendgrid.net",
        587,
        "starttls",
        "apikey",
    )
    assert ep.password == Secret("SG.abc") and "SG.abc" not in repr(ep)
    assert not ep.allow_insecure_tls and ep.max_messages_per_connection == 0


@pytest.mark.parametrize("kind", ["sendgrid", "sparkpost"])
def test_an_smtp_password_alone_makes_an_smtp_only_provider(kind: str):
    chain = build_provider(kind, "p", {}, {"smtp_password": "pw"})
    assert chain.primary.transport == "smtp" and chain.fallback is None
    ep = endpoint_of(chain, "primary")
    assert ep.password == Secret("pw") and ep.host.startswith("smtp.")
    both = build_provider(kind, "p", {}, {"api_key": "key", "smtp_password": "pw"})
    assert both.primary.transport == "api" and endpoint_of(both).password == Secret("pw")


def test_sparkpost_defaults_and_eu_override():
    chain = build_provider(
        "sparkpost", "sp", {"api_url": "https://api.eu.sparkpost.com"}, {"api_key": "k"}
    )
    assert chain.primary.provider.api_url == "https://api.eu.sparkpost.com"  # type: ignore[attr-defined]
    ep = endpoint_of(chain)
    assert (ep.host, ep.port, ep.username, ep.auth_mechanism) == (
        "smtp.sparkpostmail.com",
        587,
        "SMTP_Injection",
        "login",
    )
    assert ep.max_messages_per_connection == 100


def test_port_465_means_implicit_tls_and_overrides_apply():
    chain = build_provider("sendgrid", "sg", {"smtp_port": 465}, {"api_key": "k"})
    assert endpoint_of(chain).tls == "implicit"
    chain = build_provider(
        "smtp",
        "mx",
        {
            "smtp_host": "mx.example.com",
            "smtp_tls": "none",
            "smtp_user": "u",
            "allow_insecure_tls": True,
            "source_address": "192.0.2.1",
        },
        {"smtp_password": "p"},
    )
    ep = endpoint_of(chain, "primary")
    assert (ep.tls, ep.username, ep.allow_insecure_tls, ep.source_address) == (
        "none",
        "u",
        True,
        "192.0.2.1",
    )
    assert chain.fallback is None


async def test_every_kind_builds_a_provider(tmp_path: Path):
    for kind, secrets in (
        ("sendgrid", {"api_key": "k"}),
        ("sparkpost", {"api_key": "k"}),
        ("mailgun", {"api_key": "k"}),
        ("smtp", {}),
        ("outbox", {}),
    ):
        options: dict[str, Any] = {"smtp_host": "mx.example.com"} if kind == "smtp" else {}
        if kind == "mailgun":
            options["sending_domain"] = "mg.example.com"
        chain = build_provider(kind, kind, options, secrets, outbox_dir=tmp_path)
        assert isinstance(chain, Provider)
        await chain.aclose()


async def test_outbox_kind_writes_the_message(tmp_path: Path):
    chain = build_provider("outbox", "box", {}, {}, outbox_dir=tmp_path)
    receipt = await chain.send(make_test_message("a@example.com", "b@example.org"))
    assert receipt.transport == "file" and (tmp_path / "test.eml").exists()


async def test_the_providers_ip_pool_is_the_default(
    emulator: Emulator, make_provider: MakeProvider
):
    chain = make_provider("sendgrid", ip_pool="provider-pool")
    await chain.send(outbound(corpus.plain()))
    await chain.send(outbound(corpus.plain(), ip_pool="message-pool"))
    pools = [body["ip_pool_name"] for body in emulator.sendgrid.accepted()]
    assert pools == ["provider-pool", "message-pool"]


async def test_a_provider_with_its_own_source_address_gets_its_own_client(
    emulator: Emulator, http: httpx.AsyncClient
):
    options = emulator.provider_options("sendgrid") | {"source_address": "127.0.0.1"}
    chain = build_provider("sendgrid", "sg", options, {"api_key": "x"}, http=http)
    assert chain.primary.provider._http is not http  # type: ignore[attr-defined]
    shared = build_provider(
        "sendgrid", "sg", emulator.provider_options("sendgrid"), {"api_key": "x"}, http=http
    )
    assert shared.primary.provider._http is http  # type: ignore[attr-defined]
    await chain.aclose()
    await shared.aclose()
    assert not http.is_closed


async def test_the_test_message_is_accepted_by_every_kind(
    emulator: Emulator, make_provider: MakeProvider
):
    for kind in ("sendgrid", "sparkpost", "mailgun", "smtp"):
        receipt = await make_provider(kind).send(
            make_test_message("a@example.com", "b@example.org")
        )
        assert receipt.transport == ("smtp" if kind == "smtp" else "api")


async def test_outbox_directory_option(tmp_path: Path):
    target = tmp_path / "elsewhere"
    chain = build_provider("outbox", "box", {"directory": str(target)}, {}, outbox_dir=tmp_path)
    await chain.send(make_test_message("a@example.com", "b@example.org"))
    assert (target / "test.eml").exists()
