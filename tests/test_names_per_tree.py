"""Account and provider names are unique per agency tree (issue 10, finding 8):
a tenant's 409 only ever comes from a name in its own tree, and says nothing
about other trees; the operator, who sees every tree, qualifies an ambiguous
name as AGENCY:NAME. On SQLite and PostgreSQL, over the real admin API and CLI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import IntegrityError

from relay.cli import main
from relay.core.crypto import secret_box
from relay.core.errors import ConfigError, Invalid
from relay.core.settings import PolicySettings, Settings
from relay.routing.policy import Policy, Submission
from relay.service import accounts, providers
from relay.store.engine import make_engine, migrate
from relay.store.models import Account, utcnow
from tests.api_support import Api, World, api_settings, build_world, error
from tests.support import RelayThread


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return api_settings(tmp_path / "var", db_url)


@pytest.fixture
def world(settings: Settings, engine: Engine) -> World:
    return build_world(settings, engine)


@pytest.fixture
def client(settings: Settings, engine: Engine, world: World) -> Iterator[Callable[[str], Api]]:
    thread = RelayThread(settings, engine).start()
    made: list[Api] = []

    def make(token: str) -> Api:
        made.append(Api(thread, token))
        return made[-1]

    yield make
    for api in made:
        api.close()
    thread.stop()


def smtp_provider(name: str, account: str) -> dict[str, Any]:
    return {
        "name": name,
        "account": account,
        "kind": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": 2,
        "check": False,
    }


def test_each_tree_has_its_own_names(client: Callable[[str], Api], world: World) -> None:
    a, b = client(world["agency-a"].token), client(world["agency-b"].token)
    operator = client(world.operator)
    # Both agencies make a "shop": neither learns that the other has one.
    assert a.post("/accounts", {"name": "shop", "agency": "agency-a"}).status_code == 201
    assert b.post("/accounts", {"name": "shop", "agency": "agency-b"}).status_code == 201
    # A name that exists only in the other tree is free here.
    assert b.post("/accounts", {"name": "a-one", "agency": "agency-b"}).status_code == 201
    # Inside its own tree: 409, naming only its own account.
    again = a.post("/accounts", {"name": "shop", "agency": "agency-a"})
    assert again.status_code == 409 and error(again)["message"] == "account 'shop' already exists"
    # A sub-account may not repeat its agency's name either (the same tree).
    assert a.post("/accounts", {"name": "agency-a", "agency": "agency-a"}).status_code == 409

    # Each tenant's "shop" is its own, unambiguous in its scope.
    assert a.get("/accounts/shop").json()["agency"] == "agency-a"
    assert b.get("/accounts/shop").json()["agency"] == "agency-b"
    assert a.post("/accounts/shop/domains", {"domain": "shop-a.test"}).status_code == 201
    assert b.post("/accounts/shop/domains", {"domain": "shop-b.test"}).status_code == 201
    assert [d["name"] for d in b.get("/accounts/shop/domains").json()] == ["shop-b.test"]

    # The operator sees both: a plain name is ambiguous, with the choices.
    ambiguous = operator.get("/accounts/shop")
    assert ambiguous.status_code == 422
    assert error(ambiguous)["message"] == (
        "account 'shop' is ambiguous: say which, one of agency-a:shop, agency-b:shop"
    )
    shown = operator.get("/accounts/agency-b:shop")
    assert shown.status_code == 200 and shown.json()["agency"] == "agency-b"
    domains = operator.get("/accounts/agency-a:shop/domains").json()
    assert [d["name"] for d in domains] == ["shop-a.test"]
    assert operator.get("/accounts/agency-c:shop").status_code == 404

    # Agencies are unique among agencies (only the operator makes them).
    assert operator.post("/accounts", {"name": "agency-b"}).status_code == 409
    # The qualifier cannot be part of a name.
    colon = a.post("/accounts", {"name": "x:y", "agency": "agency-a"})
    assert colon.status_code == 422 and error(colon)["field"] == "name"


def test_provider_names_per_tree(client: Callable[[str], Api], world: World) -> None:
    a, b = client(world["agency-a"].token), client(world["agency-b"].token)
    operator = client(world.operator)
    assert a.post("/providers", smtp_provider("mail", "agency-a")).status_code == 201
    assert b.post("/providers", smtp_provider("mail", "b-one")).status_code == 201
    # The other tree's provider names are free here too.
    assert b.post("/providers", smtp_provider("a-one-smtp", "b-one")).status_code == 201
    again = a.post("/providers", smtp_provider("mail", "a-two"))
    assert again.status_code == 409 and error(again)["message"] == "provider 'mail' already exists"

    assert a.get("/providers/mail").json()["account"] == "agency-a"
    assert b.get("/providers/mail").json()["account"] == "b-one"
    ambiguous = operator.get("/providers/mail")
    assert ambiguous.status_code == 422
    assert "agency-a:mail, agency-b:mail" in error(ambiguous)["message"]
    assert operator.get("/providers/agency-b:mail").json()["account"] == "b-one"
    # Routing by the qualified name: the operator puts agency-b's sub-account on it.
    put = operator(
        "PUT", "/accounts/agency-b:b-one/assigned-provider", json={"provider": "agency-b:mail"}
    )
    assert put.status_code == 200, put.text


def test_the_cli_names_the_choices(
    settings: Settings,
    engine: Engine,
    world: World,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", settings.database.url)
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(settings.var_path))
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert main(["account", "create", "shop", "--agency", "agency-a"]) == 0
    assert main(["account", "create", "shop", "--agency", "agency-b"]) == 0
    capsys.readouterr()
    assert main(["domain", "add", "shop.test", "--account", "shop"]) == 1
    err = capsys.readouterr().err
    assert "account 'shop' is ambiguous" in err and "agency-a:shop, agency-b:shop" in err
    assert main(["domain", "add", "shop.test", "--account", "agency-b:shop"]) == 0
    assert "added domain shop.test" in capsys.readouterr().out
    with engine.connect() as conn:
        owner = conn.execute(
            text(
                "SELECT p.name FROM domains d JOIN accounts a ON a.id = d.account_id "
                "JOIN accounts p ON p.id = a.parent_id WHERE d.name = 'shop.test'"
            )
        ).scalar()
    assert owner == "agency-b"


def test_the_database_enforces_it(engine: Engine, world: World) -> None:
    """Two requests racing past the service's check still cannot both win."""
    accounts.create_account(engine, "twin", agency="agency-a")
    accounts.create_account(engine, "twin", agency="agency-b")
    with pytest.raises(Invalid, match="ambiguous"):  # the local operator sees both
        accounts.add_domain(engine, "twin.test", "twin")
    for row in (
        {"name": "agency-a", "parent_id": None, "tree_id": None},  # a second agency-a
        {"name": "a-one", "parent_id": None, "tree_id": _id(engine, "agency-a")},
    ):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(Account).values(created_at=utcnow(), **row))


def _id(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        found = conn.execute(
            select(Account.id).where(Account.name == name, Account.parent_id.is_(None))
        ).scalar()
    assert found is not None
    return int(found)


def test_migration_keeps_existing_names(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine, "0002")
    with engine.begin() as conn:
        now = {"t": utcnow()}
        add = text("INSERT INTO accounts (name, parent_id, created_at) VALUES (:n, :p, :t)")
        conn.execute(add, {"n": "ag", "p": None, **now})
        ag = conn.execute(text("SELECT id FROM accounts WHERE name = 'ag'")).scalar_one()
        conn.execute(add, {"n": "shop", "p": ag, **now})
        conn.execute(add, {"n": "other", "p": None, **now})
        shop = conn.execute(text("SELECT id FROM accounts WHERE name = 'shop'")).scalar_one()
        other = conn.execute(text("SELECT id FROM accounts WHERE name = 'other'")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO providers (name, account_id, kind, options, created_at) "
                "VALUES ('p', :a, 'outbox', '{}', :t)"
            ),
            {"a": shop, **now},
        )
    migrate(engine)
    try:
        with engine.connect() as conn:
            trees = conn.execute(text("SELECT name, tree_id FROM accounts ORDER BY id")).all()
            provider_tree = conn.execute(text("SELECT tree_id FROM providers")).scalar()
        assert [tuple(r) for r in trees] == [("ag", ag), ("shop", ag), ("other", other)]
        assert provider_tree == ag
        # And the new rule holds on the migrated table.
        accounts.create_account(engine, "shop", agency="other")
    finally:
        engine.dispose()


def test_system_provider_by_qualified_name(
    settings: Settings, engine: Engine, world: World
) -> None:
    box = secret_box(settings)
    smtp = {"smtp_host": "127.0.0.1", "smtp_port": 2}
    ids = {}
    for agency in ("agency-a", "agency-b"):
        row = providers.add_provider(
            engine, box, agency, providers.ProviderConfig("house", "smtp", smtp, {})
        )
        ids[agency] = row.id
    accounts.create_account(engine, "agency-c")  # no provider anywhere in its tree
    lonely = accounts.create_account(engine, "lonely", agency="agency-c")
    accounts.verify_sender(engine, "lonely.test", "agency-c:lonely")
    sub = Submission(lonely.id, None, False, ("app@lonely.test",))

    with pytest.raises(ConfigError, match=r"ambiguous.*agency-a:house, agency-b:house"):
        providers.check_references(engine, PolicySettings(system_provider="house"))
    chosen = PolicySettings(system_provider="agency-b:house")
    providers.check_references(engine, chosen)
    decision = asyncio.run(Policy(engine, chosen).decide(sub))
    assert decision.state == "queued" and decision.provider_id == ids["agency-b"]
