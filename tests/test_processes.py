"""``[server] processes = "auto"``: one process per core by default, sharing the
listeners; the admin listener in one of them, metrics summed over all; and no
process left serving once the supervisor is killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from relay.core.errors import ConfigError
from relay.core.settings import load_settings, resolve_processes
from tests.test_ingest import free_port, wait_port


def test_processes_default_to_auto_one_per_core() -> None:
    assert load_settings(None, env={}).server.processes == "auto"
    assert resolve_processes("auto") == len(os.sched_getaffinity(0))
    assert resolve_processes(3) == 3
    env = {"RELAY_SERVER_PROCESSES": "3"}
    assert load_settings(None, env=env).server.processes == 3
    toml = load_settings(None, env={}, overrides={"server": {"processes": 2}})
    assert toml.server.processes == 2


@pytest.mark.parametrize("value", ["many", 0, -2, "0", True, 1.5])
def test_processes_refuses_anything_but_auto_or_a_count(value: object) -> None:
    with pytest.raises(ConfigError, match=r"\[server\] processes"):
        load_settings(None, env={}, overrides={"server": {"processes": value}})


def test_serve_refuses_a_bad_count_on_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--processes", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RELAY_SERVER_VAR_DIR": str(tmp_path / "var")},
    )
    assert done.returncode == 2
    assert "'lots' is not 'auto' or a number of at least 1" in done.stderr


def _children(pid: int) -> list[int]:
    """The supervisor's relay processes (multiprocessing's spawned children)."""
    out = []
    for word in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{word}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            out.append(int(word))
    return out


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return True
    return False


@pytest.mark.slow
def test_auto_runs_one_process_per_core_and_none_outlives_a_killed_supervisor(
    tmp_path: Path,
) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs two cores to see 'auto' start two processes")
    port, admin = free_port(), free_port()
    config = tmp_path / "relay.toml"
    config.write_text(f"""
[database]
url = "sqlite:///{tmp_path}/relay.db"
[listeners]
alt = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[server]
var_dir = "{tmp_path / "var"}"
[auth]
argon2_time_cost = 1
argon2_memory_kib = 1024
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    log = open(tmp_path / "relay.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--config", str(config), "serve"],  # no --processes
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # "auto" counts these two
    )
    log.close()
    children: list[int] = []
    try:
        wait_port(port, proc, timeout=60)
        wait_port(admin, proc, timeout=60)
        deadline = time.monotonic() + 30
        while len(children) < 2 and time.monotonic() < deadline:
            children = _children(proc.pid)
            time.sleep(0.1)
        assert len(children) == 2, (tmp_path / "relay.log").read_text()[-2000:]
        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            assert sock.recv(512).startswith(b"220")
        scrape = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10)
        assert scrape.status_code == 200 and "relay_" in scrape.text
        assert (tmp_path / "var" / "metrics").is_dir()  # multiprocess metrics, shared
        proc.send_signal(signal.SIGKILL)  # the supervisor only: no chance to pass SIGTERM on
        proc.wait(10)
        # A killed process's main thread shows as a zombie before its other
        # threads let go of the sockets: wait (bounded) for both.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(_gone(c) for c in children) and _refused(port):
                break
            time.sleep(0.1)
        assert all(_gone(c) for c in children)
        assert _refused(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for child in children:
            if not _gone(child):
                os.kill(child, signal.SIGKILL)
