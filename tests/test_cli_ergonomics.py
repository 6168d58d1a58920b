"""The command line a person likes to use (issue 16, items 4 and 6).

Secrets off the command line: every secret option also comes as ``--x-file
PATH`` (``-``: standard input), ``$RELAY_X`` and a prompt without echo; the
secret never shows in the process's arguments or in what it prints. A help
line for every option; ``show`` as ``key: value`` lines by default and the
same data with ``--format json``; live checks report each transport as it
arrives; a command imports only what it needs; ``relay demo`` binds first.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select as sql_select

from relay.cli import build_parser, main
from relay.core.crypto import secret_box
from relay.core.settings import load_settings
from relay.emulator import Emulator
from relay.emulator.server import _parser as emulator_parser
from relay.service.providers import load_config
from relay.store.engine import make_engine, migrate, schema_current
from relay.store.models import Provider as ProviderRow
from tests.emulated import API_KEY

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Path:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/e.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_SECRET_KEY", "test-secret-key")
    monkeypatch.setenv("RELAY_AUTH_ARGON2_TIME_COST", "1")
    monkeypatch.setenv("RELAY_AUTH_ARGON2_MEMORY_KIB", "1024")
    for key in ("RELAY_CONFIG", "RELAY_URL", "RELAY_TOKEN", "RELAY_API_KEY", "RELAY_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    assert main(["account", "create", "agency"]) == 0
    capsys.readouterr()
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def add_args(emulator: Emulator, name: str = "sg") -> list[str]:
    """``provider add`` of a SendGrid provider against the emulator, without its key."""
    return [
        "provider",
        "add",
        name,
        "--account",
        "agency",
        "--kind",
        "sendgrid",
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


def stored_key(name: str = "sg") -> str:
    settings = load_settings()
    engine = make_engine(settings.database.url)
    try:
        return load_config(engine, secret_box(settings), name).secrets["api_key"]
    finally:
        engine.dispose()


def child_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        PYTHONPATH=str(ROOT),
        RELAY_DATABASE_URL=f"sqlite:///{tmp}/e.db",
        RELAY_SERVER_VAR_DIR=str(tmp / "var"),
        RELAY_SECRET_KEY="test-secret-key",
        **extra,
    )
    return env


# -- secrets ------------------------------------------------------------------------


def test_api_key_from_a_file_with_its_newline_dropped(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = cli / "sendgrid.key"
    key_file.write_text(API_KEY + "\n")
    code, out, err = run(capsys, *add_args(emulator), "--api-key-file", str(key_file))
    assert code == 0, err
    assert stored_key() == API_KEY
    assert API_KEY not in out + err


def test_api_key_from_the_environment(
    cli: Path,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_API_KEY", API_KEY)
    code, out, err = run(capsys, *add_args(emulator))
    assert code == 0, err
    assert stored_key() == API_KEY and API_KEY not in out + err


def test_api_key_from_standard_input_in_a_process(cli: Path, emulator: Emulator) -> None:
    argv = [sys.executable, "-m", "relay", *add_args(emulator), "--api-key-file", "-"]
    done = subprocess.run(
        argv, input=API_KEY + "\n", capture_output=True, text=True, env=child_env(cli), timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert stored_key() == API_KEY
    assert API_KEY not in done.stdout + done.stderr
    # Each transport's result came on standard error as it arrived, with its time.
    assert "checking provider sg" in done.stderr and "  api: ok (" in done.stderr


def test_prompt_without_echo_on_a_terminal(cli: Path, emulator: Emulator) -> None:
    argv = [sys.executable, "-m", "relay", *add_args(emulator)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own, as a person would have
        os.execve(sys.executable, argv, child_env(cli))
    seen = b""
    try:
        seen = _read_until(fd, b"API key:", seen)
        # At the prompt, the key is in no process's arguments (it is not typed yet,
        # and never will be on the command line).
        assert API_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        os.write(fd, API_KEY.encode() + b"\n")
        seen = _read_until(fd, None, seen)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert API_KEY.encode() not in seen  # not echoed, not printed
    assert stored_key() == API_KEY


def _read_until(fd: int, wanted: bytes | None, seen: bytes) -> bytes:
    """Read the terminal until ``wanted`` shows (None: until it closes); bounded."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if wanted is not None and wanted in seen:
            return seen
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            if wanted is None:
                return seen
            break
        seen += chunk
    raise AssertionError(f"never saw {wanted!r}: {seen!r}")


def test_no_secret_and_no_terminal_is_a_usage_error(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *add_args(emulator))
    assert code == 2
    assert "--api-key-file" in err and "$RELAY_API_KEY" in err and "terminal" in err
    code, _, err = run(capsys, *add_args(emulator), "--api-key", "x", "--api-key-file", "f")
    assert code == 2 and "not both" in err
    empty = cli / "empty"
    empty.write_text("\n")
    code, _, err = run(capsys, *add_args(emulator), "--api-key-file", str(empty))
    assert code == 2 and "is empty" in err
    code, _, err = run(capsys, *add_args(emulator), "--api-key-file", str(cli / "missing"))
    assert code == 2 and "cannot read" in err
    assert run(capsys, "provider", "list", "--format", "json")[1].strip() == "[]"


def test_credential_password_from_a_file_or_generated(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "account", "create", "shop", "--agency", "agency")[0] == 0
    assert run(capsys, "domain", "add", "shop.test", "--account", "shop")[0] == 0
    secret = cli / "password"
    secret.write_text("correct horse battery staple\n")
    code, out, _ = run(
        capsys, "credential", "create", "a@shop.test", "--password-file", str(secret)
    )
    assert code == 0 and "correct horse" not in out and "password:" not in out
    # Nothing given: Relay generates one and prints it once (no prompt, even so).
    code, out, _ = run(capsys, "credential", "create", "b@shop.test")
    assert code == 0 and "password: " in out and "shown once" in out
    code, out, _ = run(capsys, "credential", "reset", "a@shop.test", "--password-file", str(secret))
    assert code == 0 and "password:" not in out


def test_the_token_is_a_secret_too(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--url", "http://127.0.0.1:9", "account", "list")
    assert code == 2 and "--token-file" in err and "$RELAY_TOKEN" in err


# -- help, formats, progress ---------------------------------------------------------


def _options(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif action.option_strings:
            yield path, action


def test_every_option_has_a_help_line() -> None:
    missing = [
        f"{path} {action.option_strings[-1]}"
        for parser, top in ((build_parser(), "relay"), (emulator_parser(), "relay emulate"))
        for path, action in _options(parser, top)
        if not action.help
    ]
    assert missing == []


def test_show_is_readable_and_json_is_the_same_data(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *add_args(emulator), "--api-key", API_KEY)[0] == 0
    code, table, _ = run(capsys, "provider", "show", "sg")
    assert code == 0
    lines = dict(line.split(":", 1) for line in table.splitlines() if ":" in line)
    shown = json.loads(run(capsys, "provider", "show", "sg", "--format", "json")[1])
    assert lines["name"].strip() == shown["name"] == "sg"
    assert lines["kind"].strip() == shown["kind"] == "sendgrid"
    assert lines["api-key"].strip() == shown["secrets"]["api_key"]
    assert API_KEY not in table
    listed = json.loads(run(capsys, "provider", "list", "--format", "json")[1])
    assert [(p["name"], p["kind"], p["account"]) for p in listed] == [("sg", "sendgrid", "agency")]
    assert json.loads(run(capsys, "account", "list", "--format", "json")[1])[0]["name"] == "agency"


def test_live_check_reports_each_transport_as_it_arrives(
    cli: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.sendgrid.fail(500)
    code, _, err = run(capsys, *add_args(emulator), "--api-key", API_KEY)
    assert code == 1
    progress = [line for line in err.splitlines() if line.endswith(" s)")]
    assert progress[0].startswith("checking provider sg:")
    assert [line.split(" (")[0] for line in progress[1:]] == [
        "  check: ok",
        "  api: FAILED",
        "  smtp: ok",
    ]


# -- a quick start ---------------------------------------------------------------------

HEAVY = ("httpx", "aiosmtpd", "aiosmtplib", "fastapi", "starlette", "uvicorn", "uvloop")
PROBE = """
import sys
from relay.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def _imported(tmp: Path, *argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env=child_env(tmp),
        timeout=120,
    )
    return set(done.stderr.splitlines()[-1].split())


def test_local_commands_import_only_what_they_need(cli: Path) -> None:
    """Start-up time is import time: ``--help`` builds the whole parser without
    SQLAlchemy, and a listing loads neither the servers, the HTTP client, dnspython
    nor alembic (the schema is current: nothing to migrate)."""
    helped = _imported(cli, "--help")
    assert not helped & {*HEAVY, "sqlalchemy", "alembic"}
    for argv in (("account", "list"), ("queue", "list"), ("token", "list")):
        assert not _imported(cli, *argv) & {*HEAVY, "alembic", "dns"}, argv


def test_schema_current_only_at_the_newest_revision(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/s.db")
    try:
        assert not schema_current(engine)
        migrate(engine)
        assert schema_current(engine)
        migrate(engine, "-0005")
        assert not schema_current(engine)
    finally:
        engine.dispose()


# -- relay demo ----------------------------------------------------------------------------


def _demo_config(tmp: Path, ports: dict[str, int]) -> Path:
    config = tmp / "demo.toml"
    listeners = "\n".join(f'{name} = "127.0.0.1:{port}"' for name, port in ports.items())
    config.write_text(f'[listeners]\n{listeners}\n[admin]\nlisten = "127.0.0.1:0"\n')
    return config


def test_demo_binds_before_it_prints(tmp_path: Path) -> None:
    config = _demo_config(tmp_path, {"submission": 0, "smtp": 0})
    argv = [sys.executable, "-m", "relay", "--config", str(config), "demo"]
    env = child_env(tmp_path, RELAY_AUTH_ARGON2_TIME_COST="1", RELAY_AUTH_ARGON2_MEMORY_KIB="1024")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    try:
        first, *lines = _lines(proc.stdout.fileno(), 6)
        # The first line is printed only once every port is bound: they answer now.
        assert first.startswith("demo tenant created: username app@example.test  password ")
        listening = next(line for line in lines if line.startswith("listening on "))
        for part in listening.removeprefix("listening on ").split(";")[0].split(", "):
            port = int(part.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                assert sock.recv(3) == b"220"
        admin = next(line for line in lines if line.startswith("admin API: http://127.0.0.1:"))
        assert "/api/v1" in admin
        assert any("relay token create --operator" in line for line in lines)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()
    engine = make_engine(f"sqlite:///{tmp_path}/e.db")
    with engine.connect() as conn:
        assert list(conn.execute(sql_select(ProviderRow.name)).scalars()) == ["demo-outbox"]
    engine.dispose()


def _lines(fd: int, count: int) -> list[str]:
    """The first ``count`` lines a process writes (bounded in time)."""
    seen = b""
    deadline = time.monotonic() + 120
    while seen.count(b"\n") < count and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
    return seen.decode().splitlines()[:count]


def test_demo_on_a_busy_port_prints_no_password(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = _demo_config(tmp_path, {"submission": busy.getsockname()[1]})
        done = subprocess.run(
            [sys.executable, "-m", "relay", "--config", str(config), "demo"],
            capture_output=True,
            text=True,
            env=child_env(tmp_path),
            timeout=120,
        )
    assert done.returncode == 1
    assert "password" not in done.stdout and "in use" in done.stderr
