"""Deliveries in flight follow the provider's answer time (relay.delivery.pace):
a provider answering slowly, but without queueing, gets more than
``provider_concurrency``; a relay short of CPU (answers slower the more are in
flight) stays near it; never below the floor nor above the ceiling."""

from __future__ import annotations

import time
from dataclasses import replace

from sqlalchemy import Engine, func, select

from relay.core.settings import Settings
from relay.delivery.pace import Pace
from relay.emulator import Emulator
from relay.store.models import Message
from tests.support import RelayThread, Tenant
from tests.test_recovery import queue_mail


def test_a_slow_provider_that_does_not_queue_grows_to_what_its_round_trip_needs() -> None:
    pace = Pace(20, 256)
    for _ in range(400):  # 200 ms each, every slot in use
        pace.answered(0.2, pace.limit)
    assert pace.limit >= 100  # 500 msg/s at 200 ms (Little's law)
    for _ in range(2000):
        pace.answered(0.2, pace.limit)
    assert pace.limit == 256  # the ceiling


def test_answers_that_lengthen_with_the_load_keep_the_limit_near_the_floor() -> None:
    pace = Pace(20, 256)
    for _ in range(2000):  # our own CPU: each one in flight adds 4 ms to every answer
        pace.answered(0.004 * pace.limit, pace.limit)
    assert pace.limit <= 30


def test_a_limit_not_in_use_does_not_grow_and_never_leaves_its_bounds() -> None:
    pace = Pace(20, 256)
    for _ in range(500):
        pace.answered(0.2, 3)  # quick enough, but only 3 in flight: no need for more
    assert pace.limit == 20
    for _ in range(60):
        pace.answered(0.2, pace.limit)
    assert pace.limit > 20
    for _ in range(100):
        pace.answered(5.0, pace.limit)  # long queues: shrink, to the floor at most
    assert pace.limit == 20
    assert Pace(50, 10).limit == 10  # a ceiling below the floor wins
    pace.answered(0.0, 1)
    pace.answered(float("nan"), 1)
    assert pace.limit == 20


def test_a_provider_answering_after_200_ms_gets_more_than_provider_concurrency(
    settings: Settings, engine: Engine, tenant: Tenant, emulator: Emulator
) -> None:
    emulator.sendgrid.latency(0.2)
    queue = replace(
        settings.queue, concurrency=4, provider_concurrency=4, provider_concurrency_max=64
    )
    ids = queue_mail(replace(settings, queue=queue), engine, tenant, emulator, 200)
    thread = RelayThread(replace(settings, queue=queue), engine).start()
    try:
        deadline = time.monotonic() + 90
        delivered = 0
        while delivered < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)
            with engine.connect() as conn:
                delivered = conn.execute(
                    select(func.count()).where(Message.state == "delivered")
                ).scalar_one()
    finally:
        thread.stop()
    assert delivered == len(ids)
    assert len(emulator.sendgrid.accepted()) == len(ids)  # each once
    # Four at a time would be all it ever got with a fixed limit.
    assert emulator.sendgrid.max_in_flight > 8


def test_a_provider_that_slows_down_for_good_is_given_room_again() -> None:
    pace = Pace(20, 256)
    for _ in range(300):
        pace.answered(0.05, pace.limit)
    grown = pace.limit
    for _ in range(3000):  # now 200 ms for good: first a shrink, then a new baseline
        pace.answered(0.2, pace.limit)
    assert grown > 20 and pace.limit >= 100
