"""In-flow control (relay.queue.inflow): while the worker is behind, MAIL FROM
waits for a finished delivery (at most ``[queue] in_flow_delay``), so a sender
as fast as acceptance cannot grow the queue faster than it drains."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.emulator import Emulator
from relay.queue.inflow import InFlow
from relay.store.engine import make_engine, migrate
from tests.support import RelayThread, make_settings, seed_tenant
from tests.test_handoff import delivered, route, send, sent_ids, wait_until


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_not_behind_nobody_waits() -> None:
    async def run() -> list[float]:
        waits: list[float] = []
        flow = InFlow(5.0, on_wait=waits.append)
        await asyncio.wait_for(flow.admit(), 1)
        flow.delivered()  # not behind: no token is kept for later
        flow.set_behind(True)
        task = asyncio.create_task(flow.admit())
        await _settle()
        assert not task.done(), "behind with no token: the session waits"
        task.cancel()
        return waits

    assert len(asyncio.run(run())) == 1


def test_behind_a_finished_delivery_lets_one_session_on() -> None:
    async def run() -> None:
        flow = InFlow(30.0)
        flow.set_behind(True)
        first, second = asyncio.create_task(flow.admit()), asyncio.create_task(flow.admit())
        await _settle()
        assert not first.done() and not second.done()
        flow.delivered()
        await _settle()
        assert first.done() and not second.done(), "one delivery, one session, in order"
        flow.delivered()
        await _settle()
        assert second.done()

    asyncio.run(run())


def test_tokens_kept_while_behind_and_dropped_on_catching_up() -> None:
    async def run() -> None:
        flow = InFlow(30.0)
        flow.set_behind(True)
        flow.delivered()
        flow.delivered()
        await asyncio.wait_for(flow.admit(), 1)
        await asyncio.wait_for(flow.admit(), 1)
        waiting = asyncio.create_task(flow.admit())
        await _settle()
        assert not waiting.done(), "two deliveries were two tokens, no more"
        flow.set_behind(False)
        await _settle()
        assert waiting.done(), "caught up: every waiting session goes on"
        flow.set_behind(True)
        again = asyncio.create_task(flow.admit())
        await _settle()
        assert not again.done(), "tokens from before catching up are gone"
        again.cancel()

    asyncio.run(run())


def test_behind_with_no_delivery_a_session_goes_on_after_the_delay() -> None:
    async def run() -> tuple[list[float], int]:
        waits: list[float] = []
        flow = InFlow(0.05, on_wait=waits.append)
        flow.set_behind(True)
        await asyncio.wait_for(flow.admit(), 5)  # never stopped, only slowed
        return waits, len(flow._waiters)

    waits, left = asyncio.run(run())
    assert len(waits) == 1 and waits[0] > 0
    assert left == 0, "a session that gave up waiting is not left in the line"


def test_zero_delay_never_waits() -> None:
    async def run() -> None:
        flow = InFlow(0.0)
        flow.set_behind(True)
        await asyncio.wait_for(flow.admit(), 1)

    asyncio.run(run())


def _waits(relay: RelayThread) -> float:
    assert relay.relay is not None
    value = relay.relay.registry().get_sample_value("relay_in_flow_waits_total")
    return value or 0.0


def test_mail_from_waits_while_the_worker_is_behind_and_nothing_is_lost(
    tmp_path: Path, emulator: Emulator
) -> None:
    """One delivery slot, held by a stalled send: the next message is written
    unclaimed (the worker is behind), so the one after waits at MAIL FROM;
    every message is still accepted and delivered once."""
    settings = make_settings(tmp_path / "var", queue={"concurrency": 1, "in_flow_delay": 0.3})
    engine = make_engine(settings.database.url)
    try:
        migrate(engine)
        tenant = seed_tenant(settings, engine)
        route(settings, engine, emulator)
        emulator.sendgrid.stall(3, count=1)
        relay = RelayThread(settings, engine).start()
        try:
            first = send(relay, tenant, "first@example.org")
            assert _waits(relay) == 0, "not behind yet: no wait"
            later = [send(relay, tenant, f"r{i}@example.org") for i in range(3)]
            assert relay.relay is not None and relay.relay.worker is not None
            assert _waits(relay) >= 1, "MAIL FROM waited while the only slot was busy"
            assert wait_until(lambda: delivered(engine, [first, *later]), 30), "not delivered"
        finally:
            relay.stop()
        assert sent_ids(emulator) == {q: 1 for q in [first, *later]}
    finally:
        engine.dispose()


def test_with_in_flow_delay_zero_mail_from_never_waits(tmp_path: Path, emulator: Emulator) -> None:
    settings = make_settings(tmp_path / "var", queue={"concurrency": 1, "in_flow_delay": 0})
    engine = make_engine(settings.database.url)
    try:
        migrate(engine)
        tenant = seed_tenant(settings, engine)
        route(settings, engine, emulator)
        emulator.sendgrid.stall(2, count=1)
        relay = RelayThread(settings, engine).start()
        try:
            ids = [send(relay, tenant, f"r{i}@example.org") for i in range(3)]
            assert _waits(relay) == 0
            assert wait_until(lambda: delivered(engine, ids), 30), "not delivered"
        finally:
            relay.stop()
    finally:
        engine.dispose()
