"""The `relay` command line: each verb, its output, and clear errors with non-zero exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.cli import main
from relay.store.engine import make_engine
from relay.store.models import Credential


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_AUTH_ARGON2_TIME_COST", "1")
    monkeypatch.setenv("RELAY_AUTH_ARGON2_MEMORY_KIB", "1024")
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def provision(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "account", "create", "agency")[0] == 0
    assert run(capsys, "account", "create", "shop", "--agency", "agency")[0] == 0
    assert run(capsys, "domain", "add", "Shop.Test", "--account", "shop")[0] == 0


def test_provisioning_session(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    provision(capsys)
    code, out, _ = run(capsys, "credential", "create", "web@shop.test")
    assert code == 0
    password = out.split("password: ")[1].split()[0]
    assert len(password) >= 20
    code, out, _ = run(capsys, "credential", "list", "shop.test")
    assert code == 0 and "web@shop.test" in out and password not in out
    assert "$argon2" not in out
    code, out, _ = run(capsys, "credential", "reset", "web@shop.test")
    new = out.split("password: ")[1].split()[0]
    assert new != password
    code, out, _ = run(
        capsys, "credential", "reset", "web@shop.test", "--password", "chosen-password-123"
    )
    assert code == 0 and "chosen-password-123" not in out
    assert run(capsys, "sender", "verify", "*@shop.test", "--account", "shop")[0] == 0
    code, out, _ = run(capsys, "sender", "list", "--account", "shop")
    assert "shop.test" in out and "domain" in out
    code, out, _ = run(capsys, "account", "list")
    assert "shop" in out and "agency" in out
    assert run(capsys, "credential", "delete", "web@shop.test")[0] == 0
    code, _, err = run(capsys, "credential", "delete", "web@shop.test")
    assert code == 1 and "does not exist" in err


def test_generated_password_is_shown_once_and_stored_hashed(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provision(capsys)
    _, out, _ = run(capsys, "credential", "create", "a@shop.test")
    password = out.split("password: ")[1].split()[0]
    engine = make_engine(os.environ["RELAY_DATABASE_URL"])
    with engine.connect() as conn:
        stored = conn.execute(select(Credential.password_hash)).scalar_one()
    engine.dispose()
    assert password not in stored and stored.startswith("$argon2id$")


def test_sixth_credential_is_refused(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    provision(capsys)
    for i in range(5):
        assert run(capsys, "credential", "create", f"u{i}@shop.test")[0] == 0
    code, out, err = run(capsys, "credential", "create", "u5@shop.test")
    assert code == 1 and "already has 5 credentials" in err and not out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["account", "create", "x", "--agency", "missing"], "account 'missing' does not exist"),
        (["domain", "add", "not a domain", "--account", "shop"], "not a valid domain"),
        (["domain", "add", "shop.test", "--account", "shop"], "already belongs"),
        (["credential", "create", "nodomain"], "not a valid username"),
        (["credential", "create", "a@other.test"], "not a sending domain"),
        (["credential", "create", "a@shop.test", "--password", "short"], "at least 12"),
        (["credential", "list", "other.test"], "does not exist"),
        (["sender", "verify", "bad@@x", "--account", "shop"], "not a valid"),
        (["queue", "show", "NOPE"], "not in the queue"),
        (["queue", "list", "--state", "weird"], "state must be one of"),
        (["account", "create", "shop2", "--agency", "shop"], "is a sub-account"),
    ],
)
def test_bad_input_gets_a_clear_error(
    cli: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    provision(capsys)
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("relay: error: ") and message in err


def test_usage_errors_exit_2(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["credential", "create", "a@b.test", "--purpose", "spam"])
    assert exc.value.code == 2


def test_bad_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[limits]\nmax_recipients = "many"\n')
    code, _, err = run(capsys, "--config", str(config), "queue", "list")
    assert code == 1 and "[limits] max_recipients" in err
    config.write_text("[limitz]\n")
    code, _, err = run(capsys, "--config", str(config), "queue", "list")
    assert code == 1 and "unknown section" in err


def test_queue_list_and_show(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from relay.core.settings import load_settings
    from relay.queue.spool import Acceptance, write_batch

    provision(capsys)
    settings = load_settings()
    engine = make_engine(settings.database.url)
    acc = Acceptance(
        account_id=2,
        mail_from="a@shop.test",
        data=b"Subject: x\r\n\r\nhi\r\n",
        recipients=[("b@example.org", "to"), ("c@example.org", "bcc")],
    )
    write_batch(engine, [acc], 3600)
    engine.dispose()
    code, out, _ = run(capsys, "queue", "list", "--state", "queued")
    assert code == 0 and acc.queue_id in out and "shop" in out
    code, out, _ = run(capsys, "queue", "show", acc.queue_id, "--format", "json")
    shown = json.loads(out)
    assert shown["state"] == "queued"
    assert [r["kind"] for r in shown["recipients"]] == ["to", "bcc"]
    assert run(capsys, "queue", "retry", acc.queue_id)[0] == 0


def test_entry_point_runs(cli: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "--help"], capture_output=True, timeout=60
    )
    assert result.returncode == 0 and b"credential" in result.stdout
