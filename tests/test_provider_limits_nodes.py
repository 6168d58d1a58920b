"""A provider's ceilings held by real relays together, on one PostgreSQL queue:
``relay serve --processes 2`` and two nodes, against the emulator, which
records each request's arrival and how many it was answering at once.

Every message is delivered in the end, with one attempt each: deliveries
held back wait (or are postponed), they never fail.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.queue.spool import Acceptance, write_batch
from relay.service import providers
from relay.smtp.tls import certificate_paths
from relay.store.models import Account, Attempt, Message
from tests.emulated import EmulatorThread, add_emulated_provider
from tests.support import Tenant, message
from tests.test_ingest import free_port, wait_port
from tests.test_nodes import node_config, start, states, stop

pytestmark = pytest.mark.slow


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    from tests.conftest import _database

    yield from _database(request.param, tmp_path)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    thread = EmulatorThread()
    yield thread.start()
    thread.stop()


def relays(settings: Settings, topology: str, admin: int | None = None) -> list[Popen[bytes]]:
    """Two processes of one node, or two nodes (``admin``: the first one's /metrics)."""
    names = ["multi"] if topology == "processes" else ["a", "b"]
    if topology == "nodes":
        # The two nodes share a var directory here: its certificate is made
        # first, as `relay serve --processes` does, not raced for by both.
        certificate_paths(settings)
    started = []
    for i, name in enumerate(names):
        config = node_config(settings, name)
        text = config.read_text().replace("[server]\n", f'[server]\nnode_id = "{name}"\n')
        if admin is not None and i == 0:
            text = text.replace('listen = ""', f'listen = "127.0.0.1:{admin}"')
        config.write_text(text)
        args = ("--processes", "2") if topology == "processes" else ()
        started.append(start(config, *args))
    return started


def queue_mail(engine: Engine, tenant: Tenant, provider_id: int, n: int) -> None:
    with engine.connect() as conn:
        account_id = conn.execute(select(Account.id).where(Account.name == "acme")).scalar_one()
    batch = [
        Acceptance(
            account_id=account_id,
            mail_from=tenant.username,
            recipients=[(f"r{i}@example.org", "to")],
            provider_id=provider_id,
            data=message(tenant.username, to=f"r{i}@example.org"),
        )
        for i in range(n)
    ]
    write_batch(engine, batch, 3600)


def wait_delivered(engine: Engine, n: int, procs: list[Popen[bytes]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while states(engine).get("delivered", 0) < n and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a relay exited"
        time.sleep(0.2)
    assert states(engine) == {"delivered": n}


def attempts(engine: Engine) -> tuple[dict[str, int], list[int]]:
    """Attempt rows by result, and each message's attempt count."""
    with engine.connect() as conn:
        by_result = dict(
            conn.execute(select(Attempt.result, func.count()).group_by(Attempt.result)).all()  # type: ignore[arg-type]
        )
        counts = list(conn.execute(select(Message.attempts)).scalars())
    return by_result, counts


def most_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any ``window`` seconds."""
    times = sorted(times)
    return max(bisect.bisect_right(times, t + window) - i for i, t in enumerate(times))


TOPOLOGIES = ["processes", "nodes"]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_max_connections_holds_across_processes(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator, topology: str
) -> None:
    pid = add_emulated_provider(
        settings, engine, emulator, "sg", "sendgrid", "agency", max_connections=2
    )
    providers.set_default(engine, "sg", "acme")
    # Each request takes a while, so deliveries overlap if they may.
    emulator.sendgrid.latency(0.2)
    queue_mail(engine, tenant, pid, 24)
    procs = relays(settings, topology)
    try:
        wait_delivered(engine, 24, procs, 90)
    finally:
        for proc in procs:
            stop(proc)
    assert 1 <= emulator.sendgrid.max_in_flight <= 2
    assert len(emulator.sendgrid.accepted()) == 24
    by_result, counts = attempts(engine)
    assert by_result == {"delivered": 24} and counts == [1] * 24  # waits, not failures


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_max_rate_holds_across_processes(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator, topology: str
) -> None:
    rate = 4.0
    pid = add_emulated_provider(
        settings, engine, emulator, "sg", "sendgrid", "agency", max_rate=rate
    )
    providers.set_default(engine, "sg", "acme")
    queue_mail(engine, tenant, pid, 24)
    procs = relays(settings, topology)
    try:
        wait_delivered(engine, 24, procs, 90)
    finally:
        for proc in procs:
            stop(proc)
    arrivals = [r.at for r in emulator.sendgrid.received]
    assert len(arrivals) == 24
    # A token bucket of one second's rate (4), tokens used within half a
    # second of their grant, one of slack for the network: in any window of
    # W seconds at most 4 + 4 * (W + 0.5) + 1 arrive. Unthrottled, the 24
    # arrive within a fraction of a second.
    for window in (1.0, 3.0):
        assert most_in_window(arrivals, window) <= rate + rate * (window + 0.5) + 1, window
    by_result, counts = attempts(engine)
    assert by_result == {"delivered": 24} and counts == [1] * 24


def test_a_429_pauses_the_whole_provider(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator
) -> None:
    # Two at a time, so that mail is still waiting when the 429 comes.
    pid = add_emulated_provider(
        settings, engine, emulator, "sp", "sparkpost", "agency", max_connections=2
    )
    providers.set_default(engine, "sp", "acme")
    # Answers take 0.1 s; the fifth is a 429 asking for 3 seconds
    # (Retry-After: 3).
    emulator.sparkpost.latency(0.1)
    emulator.sparkpost.rate_limit(count=1, reset_in=2, after=4)
    queue_mail(engine, tenant, pid, 30)
    admin = free_port()
    procs = relays(settings, "processes", admin=admin)
    try:
        wait_delivered(engine, 30, procs, 90)
        wait_port(admin, procs[0], timeout=60)
        text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
    finally:
        for proc in procs:
            stop(proc)
    received = emulator.sparkpost.received
    limited = [r for r in received if r.status == 429]
    assert len(limited) == 1
    told = limited[0].answered_at
    # The process that was told stops at once, the other at its next look at
    # the shared pause (at most a second): nothing arrives after that until
    # the pause ends.
    during = [r.at for r in received if told + 1.5 < r.at < told + 2.7]
    assert during == []
    assert any(r.at >= told + 2.7 for r in received)  # and sending went on after it
    # The refused message went on by SMTP (the chain's fallback); every
    # other message waited, none failed.
    by_result, counts = attempts(engine)
    assert by_result == {"delivered": 30, "transient": 1}
    assert sorted(counts) == [1] * 29 + [2]
    throttled = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "relay_provider_throttled_total" and s.labels["provider"] == "sp"
    }
    assert throttled.get("retry_after", 0) >= 1
