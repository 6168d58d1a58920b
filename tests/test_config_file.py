"""`relay config check`, config/relay.toml and config/relay.service (issue 16, item 3).

A typo in any kind of key stops the relay with the key named; the check prints
every key's value and where it came from, secrets masked; the shipped file
holds every key and passes the check; the systemd unit sandboxes the relay.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import main
from relay.core.settings import (
    _SECTIONS,
    LISTENER_NAMES,
    _toml_value,
    describe,
    effective,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "relay.toml"
UNIT = ROOT / "config" / "relay.service"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A database and var/ of the test's own; no RELAY_* from the caller's environment."""
    import os

    for name in list(os.environ):
        if name.startswith("RELAY_") and name != "RELAY_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/relay.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    return tmp_path


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["config", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# One typo of each kind of key, and what the error must say.
TYPOS = [
    ("[limitz]\n", "unknown section limitz; did you mean limits?"),
    ("[server]\nhostnme = 'x'\n", "unknown key server.hostnme; did you mean hostname?"),
    ("[listeners]\nsubmision = '0.0.0.0:587'\n", "listeners.submision; did you mean submission?"),
    (
        "[listeners.alt]\nlisten = '127.0.0.1:2525'\nallow_plaintext = true\n",
        "unknown key listeners.alt.allow_plaintext; did you mean allow_plaintext_auth?",
    ),
    ("[listeners]\nsmtp = '0.0.0.0:25x'\n", "[listeners] smtp: '0.0.0.0:25x' is not host:port"),
    (
        "[listeners]\nsmtp = '0.0.0.0:2525'\nalt = '127.0.0.1:2525'\n",
        "[listeners] alt: 127.0.0.1:2525 is taken by [listeners] smtp (0.0.0.0:2525)",
    ),
    (
        "[admin]\nlisten = '127.0.0.1:8025'\n[webhooks]\nlisten = '127.0.0.1:8025'\n",
        "[webhooks] listen: 127.0.0.1:8025 is taken by [admin] listen",
    ),
    ("[server]\nlog_format = 'jsn'\n", "[server] log_format: 'jsn' is not one of text, json"),
    ("[limits]\nmax_recipients = 'many'\n", "[limits] max_recipients: 'many' is not a valid int"),
    ("[limits]\nidle_timeout = -1\n", "[limits] idle_timeout: -1.0 must be more than 0"),
    ("[queue]\nworkers = 'yes please'\n", "[queue] workers: 'yes please' is not a valid bool"),
    ("[queue]\nretry_schedule = [60, 'x']\n", "[queue] retry_schedule: [60, 'x'] is not a valid"),
    ("[dns]\nnameservers = ['dns.example']\n", "[dns] nameservers: ('dns.example',) has"),
    ("[admin]\nlisten = 'localhost'\n", "[admin] listen: 'localhost' is not host:port"),
    ("[webhooks]\npublic_url = 'relay.example'\n", "[webhooks] public_url: 'relay.example'"),
    ("[database]\nurl = ''\n", "[database] url: must not be empty"),
    ("[database]\nurl = 'nosuchdb://x'\n", "[database] url: nosuchdb is not supported"),
    (
        "[database]\nurl = 'postgresql+psycopg://relay@127.0.0.1:1/relay'\n",
        "[database] url: cannot open the database",
    ),
    ("[policy]\nsystem_provider = 'hous-smtp'\n", "[policy] system_provider:"),
    ("[tls]\ncert = 'missing.pem'\nkey = 'missing.key'\n", "[tls] cannot load missing.pem"),
    ("server = 3\n", "server: 3 is not a [server] section"),
    ("[server\n", "config file"),
]


@pytest.mark.parametrize(("text", "says"), TYPOS, ids=[t[1][:40] for t in TYPOS])
def test_a_typo_in_every_kind_of_key_is_named(
    env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    says: str,
) -> None:
    config = env / "relay.toml"
    config.write_text(text)
    if "[database]" in text:
        monkeypatch.delenv("RELAY_DATABASE_URL")
    code, out, err = check(capsys, "--config", str(config))
    assert code == 1 and out == ""
    assert err.startswith("relay: error: ") and says in err, err
    assert "Traceback" not in err


def test_a_variable_one_slip_from_a_key_is_named(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warning, not an error: the environment also holds other programs' variables."""
    monkeypatch.setenv("RELAY_SERVER_HOSTNME", "mx.example")
    code, out, err = check(capsys)
    assert code == 0 and "configuration is valid" in out
    assert err == (
        "relay: warning: RELAY_SERVER_HOSTNME sets nothing; did you mean RELAY_SERVER_HOSTNAME?\n"
    )
    # The command line's own variables are not near misses of a key.
    monkeypatch.delenv("RELAY_SERVER_HOSTNME")
    monkeypatch.setenv("RELAY_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("RELAY_TOKEN", "t")
    monkeypatch.setenv("RELAY_SECRET_KEY_FILE", str(env / "key"))
    assert main(["--url", "", "config", "check"]) == 0  # --url "": local, not the remote
    assert capsys.readouterr().err == ""


def test_each_value_with_its_source_and_secrets_masked(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = env / "relay.toml"
    config.write_text("[server]\nhostname = 'mx.example'\n[listeners]\nalt = '127.0.0.1:2525'\n")
    monkeypatch.setenv("RELAY_SECRET_KEY", "k" * 43)
    monkeypatch.setenv("RELAY_LIMITS_MAX_RECIPIENTS", "500")
    code, out, _ = check(capsys, "--config", str(config), "--format", "json")
    assert code == 0
    shown = json.loads(out)
    keys = {row["key"]: row for row in shown["keys"]}
    declared = {k.replace("[", "").replace("] ", ".") for k, _, _ in describe()}
    assert declared | {f"listeners.{n}" for n in LISTENER_NAMES} == set(keys)
    assert keys["server.hostname"] == {
        "key": "server.hostname",
        "value": "mx.example",
        "source": f"file {config}",
    }
    assert keys["limits.max_recipients"]["value"] == 500
    assert keys["limits.max_recipients"]["source"] == "env RELAY_LIMITS_MAX_RECIPIENTS"
    assert keys["server.log_level"] == {
        "key": "server.log_level",
        "value": "INFO",
        "source": "default",
    }
    assert keys["listeners.alt"]["value"] == "127.0.0.1:2525"
    assert keys["listeners.smtp"] == {"key": "listeners.smtp", "value": "", "source": "default"}
    assert keys["secrets.secret_key"]["value"] == "********"
    assert "k" * 43 not in out

    # The table for people says the same; a database password never shows.
    monkeypatch.setenv("RELAY_DATABASE_URL", "postgresql+psycopg://relay:hunter2@127.0.0.1:1/x")
    table = load_settings(str(config))
    rows = {k: v for k, v, _ in effective(table, {})}
    assert rows["database.url"] == "postgresql+psycopg://relay:********@127.0.0.1:1/x"
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{env}/relay.db")
    code, out, _ = check(capsys, "--config", str(config))
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("server.hostname"))
    assert line.split() == ["server.hostname", "mx.example", "file", str(config)]
    assert "configuration is valid" in out and "k" * 43 not in out


def test_config_works_after_the_verb_too(env: Path) -> None:
    """`relay serve --config FILE`, as the README writes it (it used to exit 2)."""
    config = env / "relay.toml"
    config.write_text("[server]\nhostnme = 'x'\n")
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(config)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"unknown key server.hostnme; did you mean hostname?" in result.stderr


def test_the_shipped_file_has_every_key_at_its_default_and_passes(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key missing from config/relay.toml fails here by name (`relay config example`
    writes the file anew)."""
    text = EXAMPLE.read_text()
    section = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"\[([a-z_.]+)\]", line):
            section = m.group(1)
        elif m := re.match(r"([a-z_0-9]+) = (.*?)(\s+#.*)?$", line):
            found[f"[{section}] {m.group(1)}"] = m.group(2)
    for name, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f"[{name}] {f.name}"
            assert key in found, f"config/relay.toml lacks {key} (run `relay config example`)"
            assert found[key] == _toml_value(f.default), (
                f"config/relay.toml: {key} is not {f.default!r}"
            )
    for name in LISTENER_NAMES:
        assert f"[listeners] {name}" in found, f"config/relay.toml lacks [listeners] {name}"
    code, out, err = check(capsys, "--config", str(EXAMPLE))
    assert code == 0, err
    assert "configuration is valid" in out


def _unit(text: str) -> dict[str, list[str]]:
    """A unit file as systemd reads it: Section.Key to every value given (keys repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not Key=Value: {line!r}"
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


def test_the_systemd_unit_sandboxes_the_relay() -> None:
    unit = _unit(UNIT.read_text())
    assert unit["Service.User"] == ["relay"]
    assert unit["Service.ExecStart"] == [
        "/opt/relay/bin/relay serve --config /etc/relay/relay.toml"
    ]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["Service.CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ]:
        assert unit[f"Service.{key}"] == [value], key
    # The one writable place is the relay's var_dir.
    assert unit["Service.ReadWritePaths"] == ["/var/lib/relay"]
    assert "RELAY_SERVER_VAR_DIR=/var/lib/relay" in unit["Service.Environment"]
    assert unit["Install.WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="no systemd-analyze (scripts/test installs Debian's systemd)",
)
def test_systemd_reads_the_unit_without_complaint(tmp_path: Path) -> None:
    """Every directive is one systemd knows; only the absent /opt/relay may be reported."""
    copy = tmp_path / "relay.service"
    copy.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/opt/relay/bin/relay is not executable" not in line
    ]
    assert complaints == []
