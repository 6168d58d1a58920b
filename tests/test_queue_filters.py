"""The queue listing's filters (state, account, sender, reason, campaign) as SQL in
the service, and release/discard in bulk by the same filters: through the
service, the admin API over HTTP and the command line (local and remote), on
SQLite and PostgreSQL.

The world is the API tests' (``tests/api_support.py``): agencies agency-a
(subs a-one, a-two) and agency-b (sub b-one), each sub-account with a paused
("sender not verified") and a queued message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from relay.core.errors import Invalid
from relay.core.settings import Settings
from relay.service import queue
from relay.service.pages import Page
from relay.service.scope import Scope
from relay.store.models import Message
from tests.api_support import (
    Api,
    World,
    account_id,
    api_settings,
    build_world,
    error,
    local_cli_reads,
    put_message,
)
from tests.support import RelayThread
from tests.test_api_cli import Cli, twin


@pytest.fixture
def settings(tmp_path: Path, any_db_url: str) -> Settings:
    return api_settings(tmp_path / "var", any_db_url)


@pytest.fixture
def world(settings: Settings, engine: Engine) -> World:
    return build_world(settings, engine)


def held(
    engine: Engine,
    account: str,
    sender: str,
    *,
    reason: str | None = "sender not verified",
    campaign: str | None = None,
    header_from: str | None = None,
    state: str = "paused",
    age: float = 0,
) -> str:
    """A message of ``account`` in ``state`` with this reason, campaign and header From."""
    queue_id = put_message(engine, account_id(engine, account), sender, state, age)
    values = {"reason": reason, "campaign": campaign}
    if header_from is not None:
        values["header_from"] = header_from
    with engine.begin() as conn:
        conn.execute(update(Message).where(Message.id == queue_id).values(**values))
    return queue_id


def states(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {i: s for i, s in conn.execute(select(Message.id, Message.state)).all()}


def ids(page: Page[tuple[Message, str]]) -> set[str]:
    return {m.id for m, _ in page.items}


def test_the_service_filters_in_sql_pages_and_keeps_scope(engine: Engine, world: World) -> None:
    spring = [
        held(engine, "a-one", "news@a-one.test", reason="Limit: hourly quota", campaign="spring")
        for _ in range(5)
    ]
    autumn = held(engine, "a-one", "news@a-one.test", reason="hourly quota", campaign="autumn")
    other = held(engine, "b-one", "news@b-one.test", reason="HOURLY QUOTA", campaign="spring")
    failed = held(engine, "a-one", "x@a-one.test", reason="hourly quota", state="failed")
    # The header From counts as the sender, as release by sender has always matched it.
    brand = held(engine, "a-two", "bounce@esp.test", header_from="Jo_e@brand.test, x@y.test")
    wild = held(engine, "a-two", "joe1@brand.test")  # "_" is no wildcard

    quota = queue.page_messages(engine, state="paused", reason=" Hourly QUOTA ")
    assert ids(quota) == {*spring, autumn, other}
    assert ids(queue.page_messages(engine, state="failed", reason="quota")) == {failed}
    both = queue.page_messages(engine, reason="quota", campaign="spring", account="a-one")
    assert ids(both) == set(spring)
    assert ids(queue.page_messages(engine, campaign="Spring")) == set()  # exactly
    assert ids(queue.page_messages(engine, sender="jo_e@brand.test")) == {brand}
    assert ids(queue.page_messages(engine, sender="brand.test")) == {brand, wild}
    assert ids(queue.page_messages(engine, sender="x@y.test")) == {brand}

    # Pages of 2 over the filtered rows (not a filtered first page): each once.
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = queue.page_messages(engine, campaign="spring", cursor=cursor, limit=2)
        seen += [m.id for m, _ in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted([*spring, other]) and len(seen) == len(set(seen))

    # A tenant's scope: the same filter never reaches another tree.
    agency_a = Scope(frozenset({account_id(engine, "a-one"), account_id(engine, "a-two")}))
    assert ids(queue.page_messages(engine, agency_a, campaign="spring")) == set(spring)
    assert queue.accounts_holding(engine, agency_a, reason="quota") == ["a-one"]

    for bad in ({"reason": "  "}, {"campaign": ""}, {"reason": "x" * 201}):
        with pytest.raises(Invalid) as caught:
            queue.page_messages(engine, **bad)
        assert caught.value.field == next(iter(bad))

    # Release by the same filters moves exactly what the listing showed.
    listed = ids(queue.page_messages(engine, state="paused", account="a-one", campaign="spring"))
    moved = queue.release_messages(engine, account="a-one", campaign="spring")
    assert set(moved) == listed == set(spring)
    dropped = queue.discard_messages(engine, reason="quota")  # operator: every account
    assert {r[0] for r in dropped} == {autumn, other}
    now = states(engine)
    assert {now[i] for i in spring} == {"queued"} and now[failed] == "failed"
    assert now[autumn] == now[other] == "dropped" and now[world["a-one"].paused] == "paused"


@pytest.fixture
def served(
    settings: Settings, engine: Engine, world: World, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RelayThread]:
    local_cli_reads(
        settings,
        monkeypatch,
        RELAY_AUTH_ARGON2_TIME_COST="1",
        RELAY_AUTH_ARGON2_MEMORY_KIB="1024",
    )
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


def test_the_api_lists_and_moves_by_reason_campaign_and_sender(
    served: RelayThread, engine: Engine, world: World
) -> None:
    mine = held(engine, "a-one", "news@a-one.test", reason="quota reached", campaign="spring")
    theirs = held(engine, "b-one", "news@b-one.test", reason="quota reached", campaign="spring")
    brand = held(engine, "a-two", "bounce@esp.test", header_from="joe@brand.test")
    op, tenant = Api(served, world.operator), Api(served, world.tenants["agency-a"].token)
    try:
        listed = op.get("/queue", params={"reason": "QUOTA", "campaign": "spring"}).json()
        assert {m["id"] for m in listed["items"]} == {mine, theirs}
        own = tenant.get("/queue", params={"reason": "quota"}).json()["items"]
        assert [m["id"] for m in own] == [mine]
        by_from = op.get("/queue", params={"sender": "brand.test"}).json()["items"]
        assert [m["id"] for m in by_from] == [brand]
        assert error(op.get("/queue", params={"reason": " "}))["field"] == "reason"
        assert error(op.get("/queue", params={"campaign": "x" * 201}))["field"] == "campaign"
        # A tenant's bulk call by campaign alone covers its own accounts only.
        moved = tenant.post("/queue/release", {"campaign": "spring"}).json()
        assert moved == {"messages": [mine]}
        dropped = op.post("/queue/discard", {"reason": "quota", "account": "b-one"}).json()
        assert dropped == {"messages": [theirs]}
        assert op.post("/queue/discard", {"reason": ""}).status_code == 422
    finally:
        op.close()
        tenant.close()
    now = states(engine)
    assert now[mine] == "queued" and now[theirs] == "dropped" and now[brand] == "paused"


def test_the_command_line_filters_alike_locally_and_remotely(
    capsys: pytest.CaptureFixture[str], served: RelayThread, engine: Engine, world: World
) -> None:
    cli = Cli(capsys, served, world.operator)
    spring = {
        name: held(engine, name, f"news@{name}.test", reason="quota reached", campaign="spring")
        for name in ("a-one", "a-two")
    }
    for argv in (
        ("queue", "list", "--campaign", "spring"),
        ("queue", "list", "--reason", "QUOTA", "--account", "a-one"),
        ("queue", "list", "--sender", "a-two.test", "--state", "paused"),
        ("queue", "list", "--reason", " "),
    ):
        assert cli.local(*argv) == cli.remote(*argv), argv
    code, out, _ = cli.local("queue", "list", "--campaign", "spring")
    assert code == 0 and set(spring.values()) <= set(out.split())
    assert world["a-one"].paused not in out
    code, _, err = cli.local("queue", "list", "--reason", " ")
    assert code != 0 and "reason must be 1 to 200 characters" in err
    local = cli.local("queue", "release", "--campaign", "spring", "--account", "a-one")
    remote = cli.remote("queue", "release", "--campaign", "spring", "--account", "a-two")
    local = twin(twin(local, spring["a-one"], spring["a-two"]), "a-one", "a-two")
    assert local[0] == 0 and local == remote
    now = states(engine)
    assert now[spring["a-one"]] == now[spring["a-two"]] == "queued"
    assert now[world["a-one"].paused] == "paused"
