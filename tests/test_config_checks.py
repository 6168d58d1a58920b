"""Every configuration key's allowed values and ranges are checked at start,
and the names it refers to exist: a typo fails with the key named, never a
silent drop of mail (issue 10, finding 8)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.cli import main
from relay.core.crypto import secret_box
from relay.core.errors import ConfigError
from relay.core.settings import _SECTIONS, load_settings
from relay.service import accounts, providers
from relay.store.engine import make_engine, migrate
from tests.support import make_settings


@pytest.mark.parametrize(
    ("section", "values", "named", "says"),
    [
        ("policy", {"default_unverified": "rejct"}, "[policy] default_unverified", "one of"),
        ("server", {"log_level": "verbose"}, "[server] log_level", "one of"),
        ("server", {"log_format": "xml"}, "[server] log_format", "one of"),
        ("server", {"processes": 0}, "[server] processes", "at least 1"),
        ("server", {"hostname": ""}, "[server] hostname", "must not be empty"),
        ("limits", {"max_recipients": 0}, "[limits] max_recipients", "at least 1"),
        ("limits", {"idle_timeout": 0}, "[limits] idle_timeout", "more than 0"),
        ("limits", {"idle_timeout": "nan"}, "[limits] idle_timeout", "not a finite number"),
        ("queue", {"retry_schedule": [60, -1]}, "[queue] retry_schedule", "-1.0 in"),
        ("queue", {"retry_schedule": []}, "[queue] retry_schedule", "must not be empty"),
        ("queue", {"concurrency": -5}, "[queue] concurrency", "at least 1"),
        ("auth", {"lockout": -1}, "[auth] lockout", "at least 0"),
        ("auth", {"argon2_memory_kib": 4}, "[auth] argon2_memory_kib", "at least 8"),
        ("dns", {"port": 70000}, "[dns] port", "at most 65535"),
        ("dns", {"nameservers": ["resolver.example"]}, "[dns] nameservers", "not an IP"),
        ("admin", {"listen": "localhost"}, "[admin] listen", "host:port"),
        ("billing", {"price_per_1000": -1}, "[billing] price_per_1000", "at least 0"),
        ("database", {"pool_size": 0}, "[database] pool_size", "at least 1"),
        ("tls", {"cert": "/some/cert.pem"}, "[tls] cert and key", "go together"),
    ],
)
def test_a_bad_value_fails_with_the_key_named(
    section: str, values: dict[str, Any], named: str, says: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, env={}, overrides={section: values})
    assert named in str(exc.value) and says in str(exc.value)


def test_the_environment_is_checked_too_and_named() -> None:
    with pytest.raises(ConfigError, match="RELAY_POLICY_DEFAULT_UNVERIFIED: 'rejct' is not one"):
        load_settings(None, env={"RELAY_POLICY_DEFAULT_UNVERIFIED": "rejct"})


def test_good_values_pass() -> None:
    settings = load_settings(
        None,
        env={"RELAY_SERVER_LOG_LEVEL": "debug"},  # any case, as logging takes it
        overrides={
            "policy": {"default_unverified": "pause"},
            "dns": {"nameservers": ["127.0.0.1", "::1"], "port": 5353},
            "admin": {"listen": ""},
            "auth": {"max_login_delay": 0},
        },
    )
    assert settings.server.log_level == "debug" and settings.policy.default_unverified == "pause"


def test_every_number_key_has_a_range() -> None:
    """A new key is checked once its rules are given to _doc(): this test keeps it so."""
    for name, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            rules = f.metadata.get("rules", {})
            if isinstance(f.default, bool) or not isinstance(f.default, int | float | tuple):
                continue
            if isinstance(f.default, tuple) and f.name == "nameservers":
                continue  # strings, checked by their own check
            bounded = rules.get("ge") is not None or rules.get("gt") is not None
            assert bounded, f"[{name}] {f.name} has no range: give _doc() ge= or gt="


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_ADMIN_LISTEN", "")
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    return tmp_path


def test_relay_serve_refuses_a_typo_with_the_key_named(cli_env: Path) -> None:
    config = cli_env / "relay.toml"
    config.write_text('[policy]\ndefault_unverified = "rejct"\n')
    result = subprocess.run(
        [sys.executable, "-m", "relay", "--config", str(config), "serve"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "[policy] default_unverified: 'rejct' is not one of auto, reject, drop, pause" in err
    assert "Traceback" not in err


def test_system_provider_must_exist(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = cli_env / "relay.toml"
    config.write_text('[policy]\nsystem_provider = "house-smtp"\n')
    assert main(["--config", str(config), "config", "check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("relay: error: [policy] system_provider:") and "house-smtp" in err

    # relay serve refuses to start the same way, before it listens.
    served = subprocess.run(
        [sys.executable, "-m", "relay", "--config", str(config), "serve"],
        capture_output=True,
        timeout=60,
    )
    assert served.returncode == 1 and b"[policy] system_provider" in served.stderr
    assert b"Traceback" not in served.stderr

    settings = make_settings(cli_env / "var", f"sqlite:///{cli_env}/cli.db")
    engine = make_engine(settings.database.url)
    migrate(engine)
    accounts.create_account(engine, "house")
    outbox = {"directory": str(cli_env / "outbox")}
    config_ = providers.ProviderConfig("house-smtp", "outbox", outbox, {})
    providers.add_provider(engine, secret_box(settings), "house", config_)
    engine.dispose()
    assert main(["--config", str(config), "config", "check"]) == 0
    assert "configuration is valid" in capsys.readouterr().out
