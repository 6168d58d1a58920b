"""A provider's own ceilings (issue 14 item 4): ``max_rate``, ``max_connections``
and its 429/Retry-After, held by every process and node together.

The shared budget is checked on both engines directly; the end-to-end tests
run real relays (``relay serve --processes 2``, and two nodes) on one
PostgreSQL database against the emulator, which records when each request
arrived and how many it was answering at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from relay.cli import main
from relay.core.errors import Invalid
from relay.core.settings import load_settings
from relay.delivery import throttle
from relay.delivery.throttle import LEASE, Limits
from relay.providers.registry import parse_connections, parse_rate, validate_options
from relay.store.engine import make_engine, migrate
from relay.store.models import Provider as ProviderRow
from relay.store.models import ProviderLease
from tests.api_support import Api, World, api_settings, build_world, error
from tests.support import RelayThread, fresh_engine

# -- the options ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10/s", 10.0), ("10", 10.0), ("120/min", 2.0), ("0.5/s", 0.5), ("3600/h", 1.0)],
)
def test_rates_are_read_per_second_and_per_minute(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0/s", "-1/s", "ten/s", "5/day", "nan/s", "inf", "1e9/s"])
def test_a_bad_rate_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_rate(text)
    assert caught.value.field == "max_rate"


def test_off_clears_and_counts_are_checked() -> None:
    assert parse_rate("off") == "" and parse_connections("OFF") == ""
    assert parse_connections("4") == 4
    for bad in ("0", "-2", "2.5", "many"):
        with pytest.raises(Invalid):
            parse_connections(bad)
    for options in ({"max_rate": 0}, {"max_rate": -3.0}, {"max_connections": 0}):
        with pytest.raises(Invalid):
            validate_options("outbox", options)
    with pytest.raises(Invalid):
        validate_options("outbox", {"max_connections": 2.5})
    validate_options("outbox", {"max_rate": 2.5, "max_connections": 3})


# -- the shared budget, on both engines ----------------------------------------


@pytest.fixture
def store(any_db_url: str) -> Iterator[Engine]:
    engine = make_engine(any_db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def test_connection_slots_are_shared_and_freed_by_expiry(store: Engine) -> None:
    two = Limits(max_connections=2)
    t = 1_000_000.0
    a = throttle.sync(store, 7, "a", two, want_slots=2, now=t)
    b = throttle.sync(store, 7, "b", two, want_slots=2, now=t)
    assert (a.slots, b.slots) == (2, 0)
    # A gives one back while one delivery is still in flight: B gets one.
    a = throttle.sync(store, 7, "a", two, want_slots=1, busy=1, now=t + 1)
    b = throttle.sync(store, 7, "b", two, want_slots=2, now=t + 1)
    assert (a.slots, b.slots) == (1, 1)
    # Slots in use are never given back by asking for fewer.
    a = throttle.sync(store, 7, "a", two, want_slots=0, busy=1, now=t + 2)
    assert (a.slots, a.held) == (0, 1)
    # A is killed: its lease runs out and B may take its slot.
    b = throttle.sync(store, 7, "b", two, want_slots=2, now=t + 2 + LEASE + 1)
    assert b.slots == 2
    # Another provider's slots are its own.
    assert throttle.sync(store, 8, "a", two, want_slots=2, now=t).slots == 2
    throttle.release_all(store, "b")
    with store.connect() as conn:
        holders = conn.execute(select(ProviderLease.provider_id, ProviderLease.holder)).all()
    assert holders == [(8, "a")]  # A's expired row went when B took its slot


def test_the_rate_is_one_bucket_for_every_holder(store: Engine) -> None:
    ten = Limits(max_rate=10.0)
    t = 2_000_000.0
    assert throttle.sync(store, 3, "a", ten, want_tokens=8, now=t).tokens == 8
    assert throttle.sync(store, 3, "b", ten, want_tokens=8, now=t).tokens == 2  # a burst of 10
    assert throttle.sync(store, 3, "b", ten, want_tokens=8, now=t).tokens == 0
    assert throttle.sync(store, 3, "a", ten, want_tokens=8, now=t + 0.5).tokens == 5
    # Idle for long: the bucket holds one second of the rate, no more.
    assert throttle.sync(store, 3, "b", ten, want_tokens=100, now=t + 60).tokens == 10


def test_a_pause_stops_every_holder_until_it_ends(store: Engine) -> None:
    ten = Limits(max_rate=10.0)
    t = 3_000_000.0
    throttle.pause(store, 5, t + 5, now=t)
    throttle.pause(store, 5, t + 2, now=t)  # a shorter one does not cut it short
    held = throttle.sync(store, 5, "b", ten, want_tokens=3, now=t + 1)
    assert held.paused_until == t + 5 and held.tokens == 0
    after = throttle.sync(store, 5, "b", ten, want_tokens=3, now=t + 6)
    assert after.paused_until is None and after.tokens == 3
    # Once the pause ends the rate is halved, and grows back over a minute.
    throttle.sync(store, 5, "b", ten, want_tokens=100, now=t + 10)  # the bucket, emptied
    assert throttle.sync(store, 5, "b", ten, want_tokens=100, now=t + 11).tokens == 5
    assert throttle.sync(store, 5, "b", ten, want_tokens=100, now=t + 200).tokens == 10
    # A provider without ceilings still learns the pause (a read, no lock).
    assert throttle.sync(store, 5, "c", Limits(), now=t + 1).paused_until == t + 5
    assert throttle.sync(store, 6, "c", Limits(), now=t + 1).paused_until is None


# -- the command line and the API ---------------------------------------------


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Path:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/p.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_SECRET_KEY", "test-secret-key")
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert main(["account", "create", "agency"]) == 0
    capsys.readouterr()
    return tmp_path


def _options(name: str) -> dict[str, Any]:
    engine = make_engine(load_settings().database.url)
    with engine.connect() as conn:
        found = conn.execute(select(ProviderRow.options).where(ProviderRow.name == name)).scalar()
    engine.dispose()
    return dict(found or {})


def test_the_command_line_sets_and_clears_the_ceilings(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["provider", "add", "box", "--account", "agency", "--kind", "outbox", "--no-check"]
    assert main([*add, "--max-rate", "120/min", "--max-connections", "3"]) == 0
    assert _options("box") == {"max_rate": 2.0, "max_connections": 3}
    assert main(["provider", "edit", "box", "--max-rate", "50/s", "--no-check"]) == 0
    assert _options("box") == {"max_rate": 50.0, "max_connections": 3}
    assert main(["provider", "edit", "box", "--max-connections", "off", "--no-check"]) == 0
    assert _options("box") == {"max_rate": 50.0}
    capsys.readouterr()
    for bad in (["--max-rate", "0/s"], ["--max-rate", "fast"], ["--max-connections", "0"]):
        with pytest.raises(SystemExit) as exited:
            main(["provider", "edit", "box", *bad, "--no-check"])
        assert exited.value.code == 2
        assert "max" in capsys.readouterr().err
    assert _options("box") == {"max_rate": 50.0}


@pytest.fixture
def served(tmp_path: Path, any_db_url: str) -> Iterator[tuple[RelayThread, World]]:
    settings = api_settings(tmp_path / "var", any_db_url)
    engine = fresh_engine(settings)
    world = build_world(settings, engine)
    thread = RelayThread(settings, engine).start()
    yield thread, world
    thread.stop()
    engine.dispose()


def test_the_api_sets_shows_and_refuses_ceilings(served: tuple[RelayThread, World]) -> None:
    thread, world = served
    op = Api(thread, world.operator)
    try:
        path = "/providers/agency-a-outbox"
        set_ = op("PATCH", path, json={"max_rate": "600/min", "max_connections": 4, "check": False})
        assert set_.status_code == 200, set_.text
        options = op.get(path).json()["options"]
        assert options["max_rate"] == 10.0 and options["max_connections"] == 4
        assert op("PATCH", path, json={"max_rate": 2.5}).status_code == 200
        assert op.get(path).json()["options"]["max_rate"] == 2.5
        cleared = op("PATCH", path, json={"max_rate": "off", "max_connections": "off"})
        assert cleared.status_code == 200
        assert "max_rate" not in op.get(path).json()["options"]
        for body, field in (
            ({"max_rate": "fast"}, "max_rate"),
            ({"max_rate": -1}, "max_rate"),
            ({"max_connections": 0}, "max_connections"),
            ({"max_connections": "none"}, "max_connections"),
        ):
            bad = op("PATCH", path, json=body)
            assert bad.status_code == 422 and error(bad)["field"] == field, bad.text
    finally:
        op.close()


# -- one process's gate ----------------------------------------------------------


def test_a_delivery_waits_then_is_postponed_never_failed(store: Engine) -> None:
    told: list[tuple[str, str]] = []
    one = Limits(max_connections=1)

    async def scenario() -> None:
        gate = throttle.Throttle(store, "w#1", on_throttled=lambda p, r: told.append((p, r)))
        first = await gate.acquire(9, "sg", one, wait=5)
        assert isinstance(first, throttle.Ticket)
        # The one slot is taken: the next delivery waits, then is postponed.
        second = await gate.acquire(9, "sg", one, wait=0.3)
        assert isinstance(second, throttle.Postponed) and second.reason == "connections"
        # A slot freed here wakes a waiter at once.
        waiter = asyncio.create_task(gate.acquire(9, "sg", one, wait=30))
        await asyncio.sleep(0.1)
        first.release()
        third = await asyncio.wait_for(waiter, 10)
        assert isinstance(third, throttle.Ticket)
        third.release()
        # The provider asked for 30 s: nothing is sent before; the delivery is
        # postponed to the end of the pause, whatever its ceilings.
        gate.pause(9, "sg", 30)
        started = time.time()
        later = await gate.acquire(9, "sg", Limits(), wait=0.2)
        assert isinstance(later, throttle.Postponed) and later.reason == "retry_after"
        assert later.at >= started + 29
        await gate.aclose()

    asyncio.run(scenario())
    assert ("sg", "connections") in told and ("sg", "retry_after") in told
    # Another process sees the pause in the database.
    assert throttle.sync(store, 9, "w#2", Limits()).paused_until is not None
