"""The hand-off: a message accepted while its process's worker has a free slot is
written already claimed by that worker and delivered from memory (no claim).

It is a claim like any other: delivered once; a process killed after the 250
leaves it leased, nobody else takes it meanwhile, and ``take_back`` or the
lease's expiry makes it due again, for exactly one more delivery. Messages a
claim would not take at once (paused, unrouted, a provider paused by its 429s
or with a ``max_rate``, the worker full) are written unclaimed and wait for a
normal claim.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from relay.core.outcomes import Claimed, Outcome
from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.queue import store
from relay.queue.spool import Acceptance, Spool, write_batch
from relay.service import providers
from relay.store.engine import make_engine, migrate
from relay.store.models import Account, Attempt, Message
from tests.emulated import add_emulated_provider
from tests.support import RelayThread, Tenant, connect, make_settings, message, seed_tenant


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    from tests.conftest import _database

    yield from _database(request.param, tmp_path)


def wait_until(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def route(settings: Settings, engine: Engine, emulator: Emulator, **options: object) -> int:
    pid = add_emulated_provider(settings, engine, emulator, "sg", "sendgrid", "agency", **options)
    providers.set_default(engine, "sg", "acme")
    return pid


def send(relay: RelayThread, tenant: Tenant, rcpt: str) -> str:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        client.docmd("MAIL", f"FROM:<{tenant.username}>")
        client.docmd("RCPT", f"TO:<{rcpt}>")
        code, reply = client.data(message(tenant.username, to=rcpt))
    assert code == 250
    return reply.decode().rsplit(" ", 1)[1]


def delivered(engine: Engine, ids: list[str]) -> bool:
    with engine.connect() as conn:
        states = conn.execute(select(Message.state).where(Message.id.in_(ids))).scalars().all()
    return len(states) == len(ids) and set(states) == {"delivered"}


def sent_ids(emulator: Emulator) -> Counter[str]:
    return Counter(
        p.get("custom_args", {}).get("relay_message_id")
        for r in emulator.sendgrid.received
        if r.body
        for p in r.body["personalizations"]
    )


def tries(engine: Engine, queue_id: str) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(Attempt.id).where(Attempt.message_id == queue_id)).all())


def test_an_accepted_message_is_handed_off_and_delivered_once(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator
) -> None:
    route(settings, engine, emulator)
    relay = RelayThread(settings, engine).start()
    try:
        ids = [send(relay, tenant, f"r{i}@example.org") for i in range(3)]
        assert wait_until(lambda: delivered(engine, ids)), "not delivered"
        assert relay.relay is not None and relay.relay.worker is not None
        handed = relay.relay.worker.handed
    finally:
        relay.stop()
    assert handed == 3  # each from memory: none waited for a claim
    assert sent_ids(emulator) == Counter(ids)  # each sent once
    assert [tries(engine, i) for i in ids] == [1, 1, 1]
    with engine.connect() as conn:
        left = conn.execute(select(Message.locked_by).where(Message.id.in_(ids))).scalars()
        assert set(left) == {None}


def test_with_the_hand_off_off_messages_wait_for_a_claim(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    settings = make_settings(tmp_path / "var", db_url, queue={"hand_off": False})
    engine = make_engine(settings.database.url)
    try:
        migrate(engine)
        tenant = seed_tenant(settings, engine)
        route(settings, engine, emulator)
        relay = RelayThread(settings, engine).start()
        try:
            ids = [send(relay, tenant, f"r{i}@example.org") for i in range(2)]
            assert wait_until(lambda: delivered(engine, ids)), "not delivered"
            assert relay.relay is not None and relay.relay.worker is not None
            assert relay.relay.worker.handed == 0
        finally:
            relay.stop()
        assert sent_ids(emulator) == Counter(ids)
    finally:
        engine.dispose()


def test_with_the_worker_full_messages_wait_for_a_normal_claim(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    settings = make_settings(tmp_path / "var", db_url, queue={"concurrency": 1})
    engine = make_engine(settings.database.url)
    try:
        migrate(engine)
        tenant = seed_tenant(settings, engine)
        route(settings, engine, emulator)
        emulator.sendgrid.stall(3, count=1)  # the first send holds the only slot
        relay = RelayThread(settings, engine).start()
        try:
            first = send(relay, tenant, "first@example.org")
            with engine.connect() as conn:
                mine = conn.execute(select(Message.locked_by).where(Message.id == first)).scalar()
            later = [send(relay, tenant, f"r{i}@example.org") for i in range(2)]
            with engine.connect() as conn:
                waiting = conn.execute(
                    select(Message.locked_by, Message.state).where(Message.id.in_(later))
                ).all()
            assert relay.relay is not None and relay.relay.worker is not None
            worker = relay.relay.worker
            assert mine == worker.token
            # Written unclaimed, due now, for any worker of any process.
            assert [tuple(w) for w in waiting] == [(None, "queued"), (None, "queued")]
            assert wait_until(lambda: delivered(engine, [first, *later]), 30), "not delivered"
            assert worker.handed == 1
        finally:
            relay.stop()
        assert sent_ids(emulator) == Counter([first, *later])
    finally:
        engine.dispose()


def test_paused_unrouted_throttled_and_rate_limited_mail_is_not_handed_off(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator
) -> None:
    pid = route(settings, engine, emulator)
    slow = add_emulated_provider(
        settings, engine, emulator, "sg2", "sendgrid", "agency", max_rate=5
    )
    relay = RelayThread(settings, engine).start()
    try:
        assert relay.relay is not None and relay.relay.worker is not None
        worker = relay.relay.worker

        def acc(**kw: object) -> Acceptance:
            base: dict[str, object] = {
                "account_id": 1,
                "mail_from": tenant.username,
                "recipients": [("a@example.org", "to")],
                "data": b"x",
                "provider_id": pid,
            }
            return Acceptance(**{**base, **kw})  # type: ignore[arg-type]

        async def reserve(a: Acceptance) -> str | None:
            token = worker.reserve(a)
            if token is not None:
                worker.cancel(a)
            return token

        assert relay.call(reserve(acc())) == worker.token  # the control: a free slot
        assert relay.call(reserve(acc(state="paused"))) is None
        assert relay.call(reserve(acc(provider_id=None))) is None
        pool = relay.relay.pool
        assert pool is not None
        relay.call(pool.get(slow))  # its options (max_rate) are read
        assert relay.call(reserve(acc(provider_id=slow))) is None
        throttle = worker._deliverer.throttle
        assert throttle is not None

        async def pause() -> None:
            throttle.pause(pid, "sg", 60)

        relay.call(pause())  # as after a 429 with Retry-After: 60
        assert relay.call(reserve(acc())) is None
    finally:
        relay.stop()


def test_a_kill_after_the_250_leaves_the_message_leased_then_delivered_once(
    any_db_url: str,
) -> None:
    """The process dies between the commit (the 250) and the delivery: the row
    stays claimed by the dead run; no other worker takes it while the lease
    runs; the next run of the same identity takes it back at once, or, if none
    comes, any worker claims it when the lease ends. One delivery either way."""
    engine = make_engine(any_db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            Account.__table__.insert().values(id=1, name="acme", created_at=dt.datetime.now(dt.UTC))
        )

    class DeadWorker:
        """Reserves like a worker, then the process is killed before it delivers."""

        def __init__(self) -> None:
            self.given: list[Claimed] = []

        def reserve(self, acc: Acceptance) -> str | None:
            acc.lease = 300
            return "node/0#dead"

        def cancel(self, acc: Acceptance) -> None:
            raise AssertionError("the write did not fail")

        def deliver(self, claimed: Claimed) -> None:
            self.given.append(claimed)  # ... and the process dies here

    async def accept() -> list[str]:
        spool = Spool(engine, 3600)
        dead = DeadWorker()
        spool.hand_off(dead)
        accs = [
            Acceptance(
                account_id=1,
                mail_from="s@example.com",
                recipients=[(f"r{i}@example.org", "to"), (f"c{i}@example.org", "cc")],
                data=b"Subject: x\r\n\r\nbody\r\n",
                provider_id=None if i == 2 else 7,
            )
            for i in range(3)
        ]
        ids = await asyncio.gather(*(spool.accept(a) for a in accs))
        await spool.aclose()
        # What the worker was given is what a claim would have loaded.
        assert [c.id for c in dead.given] == ids[:2]
        assert [[a for _, a, _ in c.recipients] for c in dead.given] == [
            ["r0@example.org", "c0@example.org"],
            ["r1@example.org", "c1@example.org"],
        ]
        assert all(c.data == b"Subject: x\r\n\r\nbody\r\n" for c in dead.given)
        return list(ids)

    try:
        first, second, unrouted = asyncio.run(accept())
        # Another live worker takes only the unclaimed one, never the leased ones.
        assert [m.id for m in store.claim(engine, "other/0#live", 10, 60)] == [unrouted]
        # The same identity restarts: takes back its dead run's claims at once.
        assert store.take_back(engine, "node/0", "node/0#again") == 2
        again = store.claim(engine, "node/0#again", 10, 60)
        assert sorted(m.id for m in again) == sorted([first, second])
        for m in again:
            done = Outcome("delivered", [], delivered=[rid for rid, _, _ in m.recipients])
            assert store.record(engine, m, done) is not None
        # Delivered: never due again (the unrouted one's lease ran out, so it is).
        late = store.claim(engine, "other/0#live", 10, 60, now=_later(400))
        assert [m.id for m in late] == [unrouted]
        # The dead run's lease is gone with the outcome: its late write is refused.
        stale = Claimed(first, 1, 7, "s@example.com", None, 0, _later(0), _later(0), "node/0#dead")
        assert store.record(engine, stale, Outcome("delivered", [])) is None
    finally:
        engine.dispose()


def test_an_expired_hand_off_lease_is_claimed_by_any_worker_once(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            Account.__table__.insert().values(id=1, name="acme", created_at=dt.datetime.now(dt.UTC))
        )

    class DeadWorker:
        def reserve(self, acc: Acceptance) -> str | None:
            acc.lease = 60
            return "gone/0#dead"

        def cancel(self, acc: Acceptance) -> None:
            raise AssertionError("the write did not fail")

        def deliver(self, claimed: Claimed) -> None:
            pass  # killed

    async def accept() -> str:
        spool = Spool(engine, 3600)
        spool.hand_off(DeadWorker())
        queue_id = await spool.accept(
            Acceptance(1, "s@example.com", [("r@example.org", "to")], b"x", provider_id=7)
        )
        await spool.aclose()
        return queue_id

    try:
        queue_id = asyncio.run(accept())
        assert store.claim(engine, "b/0#live", 10, 60) == []  # leased
        after = _later(61)
        taken = store.claim(engine, "b/0#live", 10, 60, now=after)
        assert [m.id for m in taken] == [queue_id]
        assert store.claim(engine, "c/0#live", 10, 60, now=after) == []  # once
    finally:
        engine.dispose()


def _later(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


def test_a_full_queue_drains_by_wakes_not_by_the_poll(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    """A finished delivery wakes the claim loop while due mail may be left (here
    30 queued, 3 in flight at a time): the drain never waits for the poll."""
    queue = {"poll_interval": 120, "provider_concurrency": 3, "concurrency": 10}
    settings = make_settings(tmp_path / "var", db_url, queue=queue)
    engine = make_engine(settings.database.url)
    try:
        migrate(engine)
        tenant = seed_tenant(settings, engine)
        pid = route(settings, engine, emulator)
        with engine.connect() as conn:
            account_id = conn.execute(select(Account.id).where(Account.name == "acme")).scalar()
        assert account_id is not None
        batch = [
            Acceptance(
                account_id=account_id,
                mail_from=tenant.username,
                recipients=[(f"r{i}@example.org", "to")],
                provider_id=pid,
                data=message(tenant.username, to=f"r{i}@example.org"),
            )
            for i in range(30)
        ]
        write_batch(engine, batch, 3600)
        ids = [a.queue_id for a in batch]
        relay = RelayThread(settings, engine).start()
        try:
            # Far inside the 120 s poll: only wakes can have claimed them.
            assert wait_until(lambda: delivered(engine, ids), 60), "waited for the poll"
        finally:
            relay.stop()
        assert sent_ids(emulator) == Counter(ids)
    finally:
        engine.dispose()
