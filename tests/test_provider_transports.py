"""Which transports a provider has, through the command line against the emulator.

SendGrid and SparkPost with an SMTP password alone are SMTP-only providers:
added, checked live by SMTP (as the provider's relay user), delivering by
SMTP, shown as such; an edit that adds or removes the API key changes the
legs. Mailgun is added, checked (its domain's state) and sent through by
both legs. State is read through the service layer, not ``show`` output.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from relay.cli import main
from relay.core.crypto import secret_box
from relay.core.settings import load_settings
from relay.emulator import Emulator
from relay.providers.registry import make_test_message
from relay.service import provider_checks, providers
from relay.store.engine import make_engine
from tests.emulated import API_KEY

TEST_ADDRESS = "ops@agency.test"


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Path:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/p.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_SECRET_KEY", "test-secret-key")
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert main(["account", "create", "agency"]) == 0
    capsys.readouterr()
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def smtp_at(emulator: Emulator) -> list[str]:
    return [
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        str(emulator.smtp_port),
        "--smtp-tls",
        "none",
    ]


def add(kind: str, emulator: Emulator, *secrets: str, name: str = "p") -> list[str]:
    return [
        "provider", "add", name, "--account", "agency", "--kind", kind,
        *secrets, *smtp_at(emulator), "--test-address", TEST_ADDRESS,
    ]  # fmt: skip


def shown(name: str) -> dict[str, object]:
    settings = load_settings()
    engine = make_engine(settings.database.url)
    try:
        return providers.show_provider(engine, secret_box(settings), name)
    finally:
        engine.dispose()


def config(name: str) -> providers.ProviderConfig:
    settings = load_settings()
    engine = make_engine(settings.database.url)
    try:
        return providers.load_config(engine, secret_box(settings), name)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kind", "user", "header"),
    [("sendgrid", "apikey", b"X-SMTPAPI:"), ("sparkpost", "SMTP_Injection", b"X-MSYS-API:")],
)
def test_smtp_password_alone_is_an_smtp_only_provider(
    kind: str,
    user: str,
    header: bytes,
    cli: Path,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = emulator.sendgrid if kind == "sendgrid" else emulator.sparkpost
    code, out, err = run(capsys, *add(kind, emulator, "--smtp-password", API_KEY))
    assert code == 0, err
    assert out.startswith("  smtp: ok: ")
    assert "api:" not in out and api.received == []
    assert shown("p")["transports"] == "smtp"
    [checked] = emulator.smtp.messages
    assert checked.user == user and checked.mail_from == TEST_ADDRESS
    assert header in checked.data

    # Delivered by SMTP, as delivery sends it.
    message = make_test_message(TEST_ADDRESS, "someone@example.org", queue_id="Q5")
    receipt = asyncio.run(provider_checks.send_message(config("p"), message, "relay.test"))
    assert receipt.transport == "smtp" and api.received == []
    assert emulator.smtp.messages[-1].rcpt_tos == ["someone@example.org"]
    code, out, _ = run(capsys, "provider", "ips", "p")
    assert code == 0 and out.splitlines() == ["smtp\t127.0.0.1"]


def test_an_edit_that_adds_or_removes_the_key_changes_the_legs(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *add("sendgrid", emulator, "--smtp-password", API_KEY))[0] == 0
    edit = ["provider", "edit", "p", "--api-key", API_KEY, "--api-url", emulator.sendgrid_url]
    code, out, err = run(capsys, *edit)
    assert code == 0, err
    assert "api: ok" in out and "smtp: ok" in out
    assert shown("p")["transports"] == "api+smtp"
    code, out, err = run(capsys, "provider", "list")
    assert code == 0 and "api+smtp" in out

    code, out, err = run(capsys, "provider", "edit", "p", "--remove-secret", "api_key")
    assert code == 0, err
    assert "smtp: ok" in out and "api:" not in out
    assert shown("p")["transports"] == "smtp" and "api_key" not in config("p").secrets

    # Removing the last credential leaves nothing to send with: refused, unchanged.
    code, _, err = run(capsys, "provider", "edit", "p", "--remove-secret", "smtp_password")
    assert code == 1 and "api_key" in err and "smtp_password" in err
    assert shown("p")["transports"] == "smtp"


def test_no_key_at_all_is_refused_naming_both(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *add("sparkpost", emulator))
    # Nothing given and no terminal to ask on: the command line says how to give it.
    assert code == 2 and "--api-key-file" in err and "RELAY_API_KEY" in err


def mailgun_args(emulator: Emulator, *more: str) -> list[str]:
    return [
        *add("mailgun", emulator, "--api-key", API_KEY, "--smtp-password", API_KEY),
        "--sending-domain", "mg.example.com", "--region", "us",
        "--api-url", emulator.mailgun_url, *more,
    ]  # fmt: skip


def test_mailgun_is_added_checked_and_sends_by_both_legs(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *mailgun_args(emulator))
    assert code == 0, err
    assert "api: ok" in out and "smtp: ok" in out
    detail = shown("p")
    assert detail["kind"] == "mailgun" and detail["transports"] == "api+smtp"
    assert API_KEY not in json.dumps(detail)
    [form] = emulator.mailgun.accepted()
    assert form["to"] == [TEST_ADDRESS]
    [by_smtp] = emulator.smtp.messages
    assert by_smtp.user == "postmaster@mg.example.com" and b"X-Mailgun-Variables:" in by_smtp.data

    code, out, _ = run(capsys, "provider", "test", "p", "--to", "someone@example.org")
    assert code == 0 and "api: ok" in out and "smtp: ok" in out


def test_mailgun_with_an_unknown_domain_is_refused_in_its_words(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.mailgun.domains["mg.example.com"] = "unknown"
    code, out, err = run(capsys, *mailgun_args(emulator))
    assert code == 1 and "Domain not found" in out + err and "not saved" in err
    code, _, err = run(capsys, *mailgun_args(emulator, "--region", "ap"))
    assert code == 1 and "region" in err


def test_mailgun_webhook_setup_says_what_to_click(
    cli: Path,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_WEBHOOKS_PUBLIC_URL", "https://relay.example.com")
    assert run(capsys, *mailgun_args(emulator))[0] == 0
    code, out, err = run(capsys, "provider", "webhook", "p")
    assert code == 0, err
    assert "https://relay.example.com/hooks/" in out
    assert "Sending > Webhooks" in out and "signing key" in out
    edit = ["provider", "edit", "p", "--webhook-key", emulator.mailgun_signing_key]
    assert run(capsys, *edit)[0] == 0
    code, out, _ = run(capsys, "provider", "webhook", "p")
    assert "No webhook key" not in out
