"""Listeners over real sockets: TLS modes, what EHLO offers, AUTH and relay refusal."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import replace

import aiosmtplib
import pytest

from relay.core.settings import ListenerSettings, Settings
from tests.support import (
    LISTENERS,
    RelayThread,
    Tenant,
    auth_plain,
    client_context,
    connect,
    message,
)


def ehlo_keywords(client: smtplib.SMTP) -> set[str]:
    code, text = client.ehlo("client.test")
    assert code == 250
    return {line.split()[0].upper() for line in text.decode().splitlines()[1:]}


@pytest.mark.parametrize("listener", ["smtp", "alt", "submission"])
def test_ehlo_offers_starttls_and_hides_auth_until_encrypted(
    relay: RelayThread, listener: str
) -> None:
    with connect(relay, listener, tls=False) as client:
        before = ehlo_keywords(client)
        assert {
            "SIZE",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
        } <= before
        assert "AUTH" not in before
        client.starttls(context=client_context())
        after = ehlo_keywords(client)
        assert "STARTTLS" not in after
        assert "AUTH" in after
        assert "PLAIN" in client.esmtp_features["auth"].upper()
        assert "LOGIN" in client.esmtp_features["auth"].upper()


def test_implicit_tls_on_submissions(relay: RelayThread) -> None:
    with connect(relay, "submissions") as client:
        assert isinstance(client.sock, ssl.SSLSocket)
        keywords = ehlo_keywords(client)
        assert "AUTH" in keywords and "STARTTLS" not in keywords
        assert client.login("app@acme.test", "correct-horse-battery")[0] == 235


def test_plaintext_on_submissions_port_is_not_smtp(relay: RelayThread) -> None:
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError)):
        plain = smtplib.SMTP("127.0.0.1", relay.port("submissions"), timeout=2)
        plain.ehlo()


def test_submission_requires_starttls_before_anything(relay: RelayThread) -> None:
    with connect(relay, "submission", tls=False) as client:
        code, text = client.docmd("AUTH", "PLAIN " + auth_plain("app@acme.test", "x" * 12))
        assert code == 530 and text.startswith(b"5.7.0")
        code, text = client.docmd("MAIL", "FROM:<app@acme.test>")
        assert code == 530 and text.startswith(b"5.7.0")


@pytest.mark.parametrize("listener", ["smtp", "alt"])
def test_plaintext_auth_refused_without_tls(relay: RelayThread, listener: str) -> None:
    with connect(relay, listener, tls=False) as client:
        code, text = client.docmd("AUTH", "PLAIN " + auth_plain("app@acme.test", "x" * 12))
        assert code == 538 and text.startswith(b"5.7.11")


@pytest.mark.parametrize("listener", LISTENERS)
def test_never_an_open_relay(relay: RelayThread, listener: str) -> None:
    with connect(relay, listener) as client:
        code, text = client.docmd("MAIL", "FROM:<app@acme.test>")
        assert (code, text[:5]) == (530, b"5.7.0")
        code, _ = client.docmd("RCPT", "TO:<victim@example.org>")
        assert code in (503, 530)
    assert relay_count(relay) == 0


def relay_count(relay: RelayThread) -> int:
    from sqlalchemy import func, select

    from relay.store.models import Message

    with relay.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Message)).scalar_one())


@pytest.mark.parametrize("listener", LISTENERS)
def test_authenticated_send_on_every_listener(
    relay: RelayThread, tenant: Tenant, listener: str
) -> None:
    with connect(relay, listener, login=(tenant.username, tenant.password)) as client:
        refused = client.sendmail(tenant.username, ["bob@example.org"], message(tenant.username))
        assert refused == {}
        code, _text = client.noop()
        assert code == 250
    assert relay_count(relay) == 1


def test_replies_carry_enhanced_status_codes(relay: RelayThread, tenant: Tenant) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        assert client.docmd("MAIL", f"FROM:<{tenant.username}>") == (250, b"2.1.0 Sender OK")
        assert client.docmd("RCPT", "TO:<bob@example.org>") == (250, b"2.1.5 Recipient OK")
        assert client.docmd("RCPT", "TO:<not-an-address>")[0] == 553
        assert client.docmd("RSET")[1].startswith(b"2.0.0")
        code, text = client.docmd("BOGUS")
        assert code == 500 and text.startswith(b"5.5.2")


def test_plaintext_auth_allowed_where_the_operator_says(
    settings: Settings, engine: object, tenant: Tenant
) -> None:
    listeners = (ListenerSettings("alt", "127.0.0.1", 0, allow_plaintext_auth=True),)
    thread = RelayThread(replace(settings, listeners=listeners)).start()
    try:
        with connect(thread, "alt", tls=False) as client:
            assert "AUTH" in ehlo_keywords(client)
            assert client.login(tenant.username, tenant.password)[0] == 235
            assert (
                client.sendmail(tenant.username, ["bob@example.org"], message(tenant.username))
                == {}
            )
    finally:
        thread.stop()


async def test_aiosmtplib_client_over_starttls(relay: RelayThread, tenant: Tenant) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=relay.port("submission"),
        start_tls=True,
        tls_context=client_context(),
    )
    await client.connect()
    await client.login(tenant.username, tenant.password)
    errors, reply = await client.sendmail(
        tenant.username,
        ["bob@example.org", "carol@example.org"],
        message(tenant.username, cc="carol@example.org"),
    )
    assert errors == {}
    assert reply.startswith("2.0.0 Ok: queued as ")
    await client.quit()


async def test_aiosmtplib_implicit_tls(relay: RelayThread, tenant: Tenant) -> None:
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=relay.port("submissions"),
        use_tls=True,
        tls_context=client_context(),
    ) as client:
        await client.login(tenant.username, tenant.password)
        errors, _ = await client.sendmail(
            tenant.username, ["bob@example.org"], message(tenant.username)
        )
        assert errors == {}
