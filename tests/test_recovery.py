"""A node killed or stopped mid-delivery, on SQLite and PostgreSQL.

SIGKILL: a node claims only what it can start, and when it starts again
(same ``[server] node_id``, here the default derived from the host and var
directory) it takes back its own claims at once, not after the lease.
SIGTERM: the process exits within ``[server] shutdown_grace`` whatever the
provider's latency; a send cut off is recorded as ``unknown`` and deferred.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.queue.spool import Acceptance, write_batch
from relay.service import providers
from relay.store.models import Attempt, Message
from tests.emulated import add_emulated_provider
from tests.support import Tenant, message
from tests.test_nodes import node_config, start, states, stop

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    from tests.conftest import _database

    yield from _database(request.param, tmp_path)


def queue_mail(
    settings: Settings,
    engine: Engine,
    tenant: Tenant,
    emulator: Emulator,
    n: int,
    **options: object,
) -> list[str]:
    pid = add_emulated_provider(settings, engine, emulator, "sg", "sendgrid", "agency", **options)
    providers.set_default(engine, "sg", "acme")
    with engine.connect() as conn:
        account_id = conn.execute(select(Message.account_id)).scalar() or 2
    batch = [
        Acceptance(
            account_id=account_id,
            mail_from=tenant.username,
            recipients=[(f"r{i}@example.org", "to")],
            provider_id=pid,
            data=message(tenant.username, to=f"r{i}@example.org"),
        )
        for i in range(n)
    ]
    write_batch(engine, batch, 3600)
    return [a.queue_id for a in batch]


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def claimed(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(Message).where(Message.locked_by.is_not(None))
            ).scalar_one()
        )


def test_restarted_node_takes_back_its_claims_at_once(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator
) -> None:
    ids = queue_mail(settings, engine, tenant, emulator, 10)
    emulator.sendgrid.stall(120, count=3)  # the first three sends hang
    # The default lease (300 s): only taking back, not expiry, can be quick.
    config = node_config(settings, "node", extra="provider_concurrency = 3\n")
    config.write_text(config.read_text().replace("lease = 3\n", "lease = 300\n"))
    first = start(config)
    try:
        assert wait_until(lambda: len(emulator.sendgrid.received) >= 3, 30), "never sent"
        time.sleep(1.0)  # a claim loop or two more: nothing more may be claimed
        # Claimed: only what could start (the provider's three slots), not a batch.
        assert claimed(engine) == 3
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    second = start(config)
    try:
        # Well inside the 300 s lease: the three killed claims are taken back.
        assert wait_until(lambda: states(engine).get("delivered", 0) == 10, 40), states(engine)
    finally:
        stop(second)
    sent = Counter(
        p.get("custom_args", {}).get("relay_message_id")
        for r in emulator.sendgrid.received
        if r.body
        for p in r.body["personalizations"]
    )
    assert set(sent) == set(ids)
    assert sum(sent.values()) - len(ids) <= 3  # sent again: at most what was in flight


def test_sigterm_ends_within_the_grace_despite_a_stalled_provider(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator
) -> None:
    ids = queue_mail(settings, engine, tenant, emulator, 2, timeout=60)
    emulator.sendgrid.stall(40, count=2)  # longer than the grace, shorter than the timeout
    extra = '[server]\nshutdown_grace = 2\nnode_id = "grace-test"\n'
    config = node_config(settings, "grace")
    config.write_text(
        config.read_text().replace("[server]\n", extra).replace("lease = 3\n", "lease = 300\n")
    )
    proc = start(config)
    try:
        assert wait_until(lambda: len(emulator.sendgrid.received) >= 2, 30), "never sent"
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - began < 2 + 1.5  # the grace, and the interpreter's exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with engine.connect() as conn:
        rows = conn.execute(select(Message.id, Message.state, Message.locked_by)).all()
        results = conn.execute(select(Attempt.message_id, Attempt.transport, Attempt.result)).all()
    assert sorted(rows) == sorted((i, "deferred", None) for i in ids)  # claims given back
    assert sorted(results) == sorted((i, "api", "unknown") for i in ids)
    assert emulator.smtp.messages == []


def test_node_identity_is_stable_and_per_process(tmp_path: Path) -> None:
    from dataclasses import replace

    from relay.core.errors import ConfigError
    from relay.core.settings import ServerSettings, load_settings
    from relay.delivery.worker import node_identity

    server = ServerSettings()
    one, other = tmp_path / "one", tmp_path / "other"
    assert node_identity(server, one, 0) == node_identity(server, one, 0)  # a restart
    assert node_identity(server, one, 0) != node_identity(server, one, 1)  # --processes
    assert node_identity(server, one, 0) != node_identity(server, other, 0)
    assert node_identity(replace(server, node_id="mx1"), one, 2) == "mx1/2"
    for bad in ("x" * 65, "mx#1"):
        with pytest.raises(ConfigError, match=r"\[server\] node_id"):
            load_settings(env={}, overrides={"server": {"node_id": bad}})
