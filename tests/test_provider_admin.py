"""Providers as the operator manages them, through the command line, against the
emulator: the live check refuses what fails (with the provider's words), edits
that would break are refused, secrets stay masked, removal needs a replacement."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from relay.cli import main
from relay.core.settings import load_settings
from relay.emulator import Emulator
from relay.store.engine import make_engine
from relay.store.models import Account, Message
from relay.store.models import Provider as ProviderRow
from tests.emulated import API_KEY


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Path:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/p.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_SECRET_KEY", "test-secret-key")
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert main(["account", "create", "agency"]) == 0
    assert main(["account", "create", "shop", "--agency", "agency"]) == 0
    assert main(["account", "create", "blog", "--agency", "agency"]) == 0
    capsys.readouterr()
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sendgrid_args(emulator: Emulator, name: str = "sg", key: str = API_KEY) -> list[str]:
    return [
        "provider",
        "add",
        name,
        "--account",
        "agency",
        "--kind",
        "sendgrid",
        "--api-key",
        key,
        "--api-url",
        emulator.sendgrid_url,
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        str(emulator.smtp_port),
        "--smtp-tls",
        "none",
        "--test-address",
        "ops@agency.test",
    ]


def providers_in_db() -> list[str]:
    engine = make_engine(load_settings().database.url)
    with engine.connect() as conn:
        names = list(conn.execute(select(ProviderRow.name)).scalars())
    engine.dispose()
    return names


def test_add_runs_the_live_check_and_saves(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *sendgrid_args(emulator))
    assert code == 0, err
    assert "api: ok" in out and "smtp: ok" in out
    assert providers_in_db() == ["sg"]
    # The test message went through both transports, from and to the test address.
    assert emulator.sendgrid.accepted()[0]["from"]["email"] == "ops@agency.test"
    assert emulator.smtp.messages[0].mail_from == "ops@agency.test"


def test_bad_key_is_refused_with_the_providers_words(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *sendgrid_args(emulator, key="SG.wrong-key-123456"))
    assert code == 1
    assert "failed its live check; not saved" in err
    assert "401" in err or "authoriz" in err.lower()
    assert "SG.wrong-key-123456" not in out + err
    assert providers_in_db() == []


def test_unverified_test_address_is_refused(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.sendgrid.fail(
        403, code="from", message="The from address does not match a verified Sender Identity"
    )
    code, _, err = run(capsys, *sendgrid_args(emulator))
    assert code == 1 and "verified Sender Identity" in err
    assert providers_in_db() == []


def test_secrets_are_masked_and_sealed(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *sendgrid_args(emulator))[0] == 0
    code, out, _ = run(capsys, "provider", "show", "sg", "--format", "json")
    assert code == 0 and API_KEY not in out and '"api_key": "****' in out
    raw = (cli / "p.db").read_bytes()
    assert API_KEY.encode() not in raw
    code, out, _ = run(capsys, "provider", "list")
    assert "sg" in out and API_KEY not in out


def test_an_edit_that_would_break_is_refused(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *sendgrid_args(emulator))[0] == 0
    code, _, err = run(capsys, "provider", "edit", "sg", "--api-key", "SG.bad-key-98765")
    assert code == 1 and "the edit was not applied" in err
    code, _, _ = run(capsys, "provider", "edit", "sg", "--ip-pool", "marketing")
    assert code == 0
    code, out, _ = run(capsys, "provider", "show", "sg", "--format", "json")
    assert '"ip_pool": "marketing"' in out


def test_remove_needs_a_replacement_while_in_use(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *sendgrid_args(emulator))[0] == 0
    assert run(capsys, *sendgrid_args(emulator, name="sg2"))[0] == 0
    assert (
        run(capsys, "provider", "default", "sg", "--account", "agency", "--for", "subaccounts")[0]
        == 0
    )
    code, _, err = run(capsys, "provider", "remove", "sg")
    assert code == 1 and "in use by agency" in err
    code, out, _ = run(capsys, "provider", "remove", "sg", "--replacement", "sg2")
    assert code == 0 and "now use sg2" in out
    engine = make_engine(load_settings().database.url)
    with engine.connect() as conn:
        sub_default = conn.execute(
            select(Account.subaccount_provider_id).where(Account.name == "agency")
        ).scalar_one()
        sg2 = conn.execute(select(ProviderRow.id).where(ProviderRow.name == "sg2")).scalar_one()
        assert conn.execute(select(Message.id)).first() is None
    engine.dispose()
    assert sub_default == sg2


def test_assign_and_unassign(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *sendgrid_args(emulator))[0] == 0
    assert run(capsys, "provider", "assign", "sg", "--account", "shop")[0] == 0
    code, _, err = run(capsys, "provider", "assign", "sg", "--account", "agency")
    assert code == 1 and "is an agency" in err
    assert run(capsys, "provider", "unassign", "--account", "shop")[0] == 0
    code, _, err = run(capsys, "provider", "unassign", "--account", "shop")
    assert code == 1 and "not assigned" in err


def test_provider_test_reports_each_transport(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *sendgrid_args(emulator))[0] == 0
    emulator.sendgrid.fail(500)
    code, out, _ = run(capsys, "provider", "test", "sg", "--to", "someone@example.org")
    assert code == 1
    assert "api: FAILED" in out and "smtp: ok" in out


def test_egress_addresses(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *sendgrid_args(emulator))[0] == 0
    code, out, _ = run(capsys, "provider", "ips", "sg")
    assert code == 0 and out.splitlines() == ["api\t127.0.0.1", "smtp\t127.0.0.1"]
    args = [*sendgrid_args(emulator, name="pinned"), "--source-address", "127.0.0.1"]
    assert run(capsys, *args)[0] == 0


def test_bad_options_name_the_field(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "provider",
        "add",
        "x",
        "--account",
        "agency",
        "--kind",
        "smtp",
        "--test-address",
        "a@b.test",
    )
    assert code == 1 and "smtp_host" in err
    code, _, err = run(
        capsys, "provider", "add", "y", "--account", "agency", "--kind", "sendgrid", "--no-check"
    )
    # Nothing given and no terminal to prompt on: a usage error naming the option.
    assert code == 2 and "--api-key-file" in err and "RELAY_API_KEY" in err
