"""Several nodes on one PostgreSQL queue: a worker killed by SIGKILL in the middle
of its deliveries loses nothing; the other takes its messages once the lease ends.
Also `relay serve --processes 2` sharing the listeners."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from relay.core.settings import Settings
from relay.queue.spool import Acceptance, write_batch
from relay.service import providers
from relay.store.models import Message, Usage
from tests.emulated import EmulatorThread, add_emulated_provider
from tests.support import Tenant, client_context, message
from tests.test_ingest import free_port, wait_port

pytestmark = pytest.mark.slow


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    from tests.conftest import _database

    yield from _database(request.param, tmp_path)


def node_config(settings: Settings, name: str, extra: str = "") -> Path:
    path = settings.var_path / f"{name}.toml"
    path.write_text(f"""
[database]
url = "{settings.database.url}"
[admin]
listen = ""
[server]
var_dir = "{settings.var_path}"
processes = 1  # one node, one process, as written (the default is one per core)
[auth]
argon2_time_cost = 1
argon2_memory_kib = 1024
[queue]
lease = 3
poll_interval = 0.2
batch_size = 10
concurrency = 10
retry_schedule = [1]
{extra}
""")
    return path


def start(config: Path, *args: str) -> subprocess.Popen[bytes]:
    log = open(config.with_suffix(".log"), "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "--config", str(config), "serve", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def states(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                select(Message.state, func.count()).group_by(Message.state)  # type: ignore[arg-type]
            ).all()
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_sigkill_mid_delivery_loses_nothing(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    emu_thread = EmulatorThread()
    emulator = emu_thread.start()
    try:
        pid = add_emulated_provider(settings, engine, emulator, "sg", "sendgrid", "agency")
        providers.set_default(engine, "sg", "acme")
        with engine.connect() as conn:
            account_id = conn.execute(select(Message.account_id)).scalar()
        account_id = account_id or 2
        batch = [
            Acceptance(
                account_id=account_id,
                mail_from=tenant.username,
                recipients=[(f"r{i}@example.org", "to")],
                provider_id=pid,
                data=message(tenant.username, to=f"r{i}@example.org"),
            )
            for i in range(40)
        ]
        write_batch(engine, batch, 3600)
        # The first worker's first ten requests hang at the provider; it is
        # killed while they are in flight.
        emulator.sendgrid.stall(30, count=10)
        first = start(node_config(settings, "a"))
        deadline = time.monotonic() + 20
        while len(emulator.sendgrid.received) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(emulator.sendgrid.received) >= 10, "the first worker never sent"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start(node_config(settings, "b"))
        try:
            deadline = time.monotonic() + 40
            while states(engine).get("delivered", 0) < 40 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert states(engine) == {"delivered": 40}
        finally:
            stop(second)
    finally:
        emu_thread.stop()
    ids = {
        p.get("custom_args", {}).get("relay_message_id")
        for body in emulator.sendgrid.accepted()
        for p in body["personalizations"]
    }
    assert {a.queue_id for a in batch} <= ids  # every message reached the provider


def test_processes_share_the_listeners_and_the_queue(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    port, admin = free_port(), free_port()
    extra = f'[listeners]\nalt = "127.0.0.1:{port}"\n'
    config = node_config(settings, "multi", extra=extra)
    config.write_text(config.read_text().replace('listen = ""', f'listen = "127.0.0.1:{admin}"'))
    proc = start(config, "--processes", "2")
    try:
        wait_port(port, proc)
        wait_port(admin, proc)
        for i in range(10):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=client_context())
                client.login(tenant.username, tenant.password)
                client.sendmail(
                    tenant.username,
                    [f"r{i}@example.org", f"c{i}@example.org"],
                    message(tenant.username, to=f"r{i}@example.org"),
                )
        deadline = time.monotonic() + 20
        while states(engine).get("delivered", 0) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert states(engine) == {"delivered": 10}
        # One scrape shows the sum of both processes, and it equals the ledger.
        text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
        scraped = {
            (s.labels["kind"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "relay_recipients_total"
        }
        with engine.connect() as conn:
            ledger = {
                (k, e): float(n)
                for k, e, n in conn.execute(
                    select(Usage.kind, Usage.event, func.sum(Usage.recipients)).group_by(
                        Usage.kind, Usage.event
                    )
                ).all()
            }
        assert ledger == {
            ("to", "accepted"): 10,
            ("bcc", "accepted"): 10,
            ("to", "delivered"): 10,
            ("bcc", "delivered"): 10,
        }
        assert scraped == ledger
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
