"""The container, without a Docker engine (issue 16, item 1).

No build machine runs Docker, so what can be checked without one is: the
Dockerfile parses with Docker's own parser and says what it must; the install
steps its build stage runs succeed from a clean copy of the repository in a
fresh virtual environment; compose.yaml is valid by the Compose Specification's
schema and every file it mounts exists; and the image's command line, with the
compose file's environment mapped to loopback, starts and answers /readyz.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dockerfile
import httpx
import jsonschema
import pytest
import yaml

from tests.support import client_context

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_SCHEMA = ROOT / "tests" / "specs" / "compose-spec.shape.json"
SMTP_PORTS = {"25", "465", "587", "2525"}


def instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def stages() -> list[list[dockerfile.Command]]:
    out: list[list[dockerfile.Command]] = []
    for cmd in instructions():
        if cmd.cmd == "FROM":
            out.append([])
        out[-1].append(cmd)
    return out


def env_of(stage: list[dockerfile.Command]) -> dict[str, str]:
    """ENV KEY=VALUE pairs, with $PATH-style references left as written."""
    env: dict[str, str] = {}
    for cmd in stage:
        if cmd.cmd == "ENV":
            pairs = cmd.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_dockerfile_says_what_it_must() -> None:
    build, runtime = stages()
    assert build[0].value[0] == runtime[0].value[0]  # the same slim Debian Python
    assert re.fullmatch(r"python:3\.1[1-9]-slim-(bookworm|trixie)", runtime[0].value[0])
    assert build[0].value[1:] == ("AS", "build")
    copied_from_build = [c for c in runtime if c.cmd == "COPY" and "--from=build" in c.flags]
    assert copied_from_build, "the runtime stage takes the build stage's venv"
    assert not any(c.cmd == "COPY" and not c.flags for c in runtime), "no sources in the runtime"

    user = [c for c in runtime if c.cmd == "USER"]
    assert [c.value for c in user] == [("relay",)]
    last = runtime[-1].cmd
    assert last == "CMD" and runtime[-1].json and runtime[-1].value == ("relay", "serve")
    assert max(i for i, c in enumerate(runtime) if c.cmd == "USER") < len(runtime) - 1

    exposed = {p for c in runtime if c.cmd == "EXPOSE" for p in c.value}
    env = env_of(runtime)
    admin_port = env["RELAY_ADMIN_LISTEN"].rpartition(":")[2]
    assert exposed == SMTP_PORTS | {admin_port}
    listeners = {k: v for k, v in env.items() if k.startswith("RELAY_LISTENERS_")}
    assert {v.rpartition(":")[2] for v in listeners.values()} == SMTP_PORTS

    volumes = [c for c in runtime if c.cmd == "VOLUME"]
    assert volumes and env["RELAY_SERVER_VAR_DIR"] in volumes[0].value
    assert env["RELAY_DATABASE_URL"].startswith(f"sqlite:///{env['RELAY_SERVER_VAR_DIR']}/")

    health = [c for c in runtime if c.cmd == "HEALTHCHECK"]
    assert len(health) == 1 and health[0].value[0] == "CMD"
    assert "/readyz" in " ".join(health[0].value) and "RELAY_ADMIN_LISTEN" in health[0].value[-1]


def test_compose_is_valid_by_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    document = compose()
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    # The schema does refuse what Compose refuses (it is not a no-op here).
    broken = copy.deepcopy(document)
    broken["services"]["relay"]["portz"] = ["25:25"]
    assert not validator.is_valid(broken)

    services = document["services"]
    assert {"relay", "postgres", "prometheus", "grafana", "emulator"} <= set(services)
    assert services["emulator"]["profiles"] == ["emulator"]
    assert services["relay"]["build"] == "."
    database = services["relay"]["environment"]["RELAY_DATABASE_URL"]
    assert "@postgres:5432/" in database
    pg = services["postgres"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@" in database


def test_every_file_compose_mounts_exists() -> None:
    mounted: list[tuple[str, str]] = []
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source, _, target = volume.partition(":")
            if source.startswith("."):
                mounted.append((source, target.partition(":")[0]))
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not here"
    targets = dict(mounted)
    assert targets["./config/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    # Prometheus finds its rules beside its configuration, as the file names them.
    prometheus = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    for rules in prometheus["rule_files"]:
        assert f"/etc/prometheus/{rules}" in targets.values(), f"{rules} is not mounted"
    # Grafana's dashboard provider reads the directory the dashboard is mounted in.
    provisioning = ROOT / "config" / "grafana" / "provisioning"
    assert targets["./config/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "relay.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert targets["./config/grafana-dashboard.json"].startswith(folder + "/")
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    # The image's own files: Docker sends the context less .dockerignore.
    for cmd in stages()[0]:
        if cmd.cmd == "COPY" and not cmd.flags:
            for source in cmd.value[:-1]:
                assert (ROOT / source).exists(), f"the Dockerfile copies {source}, not here"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_the_image_command_with_the_compose_environment_answers_readyz(
    any_db_url: str, tmp_path: Path
) -> None:
    """`relay serve` as the image runs it, with compose.yaml's environment on top of the
    Dockerfile's, addresses moved to loopback ports of the test's own."""
    runtime = stages()[1]
    env = {k: v for k, v in env_of(runtime).items() if k.startswith("RELAY_")}
    relay = compose()["services"]["relay"]
    env.update({k: _interpolate(v) for k, v in relay["environment"].items()})
    assert "@postgres:" in env["RELAY_DATABASE_URL"]  # what compose says, replaced here:
    env["RELAY_DATABASE_URL"] = any_db_url
    env["RELAY_SERVER_VAR_DIR"] = str(tmp_path / "var")
    for key, value in list(env.items()):
        if key.startswith("RELAY_LISTENERS_") or key == "RELAY_ADMIN_LISTEN":
            assert value.startswith("0.0.0.0:")
            env[key] = f"127.0.0.1:{_free_port()}"
    command = list(relay["command"])
    assert command == list(runtime[-1].value) == ["relay", "serve"]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    child_env.update(env)
    child_env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", *command[1:]],
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        url = f"http://{env['RELAY_ADMIN_LISTEN']}/readyz"
        answer = None
        deadline = time.monotonic() + 60
        for _ in range(300):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            try:
                answer = httpx.get(url, timeout=2)
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert answer is not None and answer.status_code == 200, log.read_text()
        assert answer.json()["status"] == "ok"
        # The image's HEALTHCHECK command, run as written, says healthy too.
        health = next(c for c in runtime if c.cmd == "HEALTHCHECK")
        probe = [sys.executable if a == "python" else a for a in health.value[1:]]
        assert subprocess.run(probe, env=child_env, timeout=30).returncode == 0
        # Every SMTP listener the environment names greets (465 after its TLS handshake).
        for key, value in env.items():
            if key.startswith("RELAY_LISTENERS_"):
                host, _, port = value.rpartition(":")
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    if key == "RELAY_LISTENERS_SUBMISSIONS":
                        sock_ = client_context().wrap_socket(sock, server_hostname=host)
                        assert sock_.recv(100).startswith(b"220 "), key
                        sock_.close()
                    else:
                        assert sock.recv(100).startswith(b"220 "), key
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 2 minutes here: pip fetches every dependency
def test_the_build_stage_installs_from_a_clean_copy(tmp_path: Path) -> None:
    """The build stage's COPY and RUN steps, as written, from the repository's tracked
    files in a fresh venv (slow: pip fetches every dependency; nothing cached outside
    tmp_path). /opt/relay, the image's venv, becomes a directory under tmp_path."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    if files == [b""]:
        pytest.skip("not a git checkout")
    context = tmp_path / "context"
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():  # a tracked file deleted in the work tree is not sent
            target = context / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    build = stages()[0]
    venv = tmp_path / "opt-relay"
    workdir = tmp_path / "src"
    env = {**os.environ, **env_of(build)}  # PIP_NO_CACHE_DIR=1: nothing cached anywhere
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    ran = 0
    for cmd in build[1:]:
        if cmd.cmd == "WORKDIR":
            assert cmd.value == ("/src",)
            workdir.mkdir()
        elif cmd.cmd == "COPY":
            *sources, dest = cmd.value
            for source in sources:
                target = workdir / dest.removeprefix("./").rstrip("/") if dest != "./" else workdir
                if (context / source).is_dir():
                    subprocess.run(["cp", "-r", str(context / source), str(target)], check=True)
                else:
                    target = workdir / Path(source).name if dest in ("./", ".") else target
                    target.write_bytes((context / source).read_bytes())
        elif cmd.cmd == "RUN":
            script = " ".join(cmd.value).replace("/opt/relay", str(venv))
            script = script.replace("python -m venv", f"{shlex.quote(sys.executable)} -m venv")
            result = subprocess.run(
                ["sh", "-c", script],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            ran += 1
    assert ran >= 1
    # What the runtime stage runs is there and starts.
    version = subprocess.run(
        [str(venv / "bin" / "relay"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and "serve" in version.stdout


def test_the_emulator_service_command_starts(tmp_path: Path) -> None:
    """compose's emulator profile runs `relay emulate` with its own options (they used to be
    refused as "unrecognized arguments"); its ports moved to free ones here."""
    command = [str(a) for a in compose()["services"]["emulator"]["command"]]
    assert command[:2] == ["relay", "emulate"]
    ports: dict[str, int] = {}
    for i, arg in enumerate(command):
        if arg.endswith("-port"):
            ports[arg] = _free_port()
            command[i + 1] = str(ports[arg])
    assert set(ports) == {"--sendgrid-port", "--sparkpost-port", "--smtp-port"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", *command[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        said = [proc.stdout.readline().decode() for _ in range(3)]  # it prints once bound
        assert said[0].split() == [
            "SendGrid",
            "API",
            f"http://127.0.0.1:{ports['--sendgrid-port']}",
        ]
        assert said[2].split() == ["SMTP", f"127.0.0.1:{ports['--smtp-port']}"]
        with socket.create_connection(("127.0.0.1", ports["--smtp-port"]), timeout=10) as sock:
            assert sock.recv(100).startswith(b"220 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
