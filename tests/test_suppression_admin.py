"""Suppression lists as verbs, on both databases: the command line (list, add,
remove, import, export as CSV), the admin API (paged list, add, delete; a
tenant sees only its own accounts), and sync from both providers' own lists
through the emulator."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from relay.cli import main
from relay.core.crypto import secret_box
from relay.core.errors import NotFound
from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.service import suppressions, tokens
from relay.service.scope import Actor, acting
from relay.store.models import AuditEntry
from relay.suppression import lists
from tests.api_support import Api, World, account_id, api_settings, build_world, error
from tests.emulated import add_emulated_provider
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


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(settings: Settings, world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RELAY_DATABASE_URL", settings.database.url)
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", settings.server.var_dir)
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    yield


def test_cli_round_trip_with_csv(
    cli: None, capsys: pytest.CaptureFixture[str], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(
        capsys,
        "suppression",
        "add",
        "Bob@Example.ORG",
        "--account",
        "a-one",
        "--reason",
        "complaint",
        "--detail",
        "said so on the phone",
    )
    assert code == 0 and "suppressed Bob@example.org" in out
    code, out, _ = run(capsys, "suppression", "add", "Bob@example.org", "--account", "a-one")
    assert code == 0 and "already suppressed" in out and "complaint" in out
    csv_in = (
        "address,reason,created_at,detail\n"
        "carol@example.org,hard_bounce,2024-05-01T10:00:00+00:00,550 5.1.1 unknown\n"
        "dave@example.org,,,\n"
        "Bob@example.org,manual,,\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(csv_in))
    code, out, _ = run(capsys, "suppression", "import", "-", "--account", "a-one")
    assert code == 0 and "2 added, 1 unchanged" in out
    code, out, _ = run(capsys, "suppression", "list", "--account", "a-one")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ADDRESS", "REASON", "SOURCE"]
    assert [x.split()[:3] for x in lines[1:]] == [
        ["Bob@example.org", "complaint", "manual"],
        ["carol@example.org", "hard_bounce", "import"],
        ["dave@example.org", "manual", "import"],
    ]
    code, out, _ = run(capsys, "suppression", "export", "--account", "a-one")
    assert out.splitlines()[0] == "address,reason,created_at,detail"
    assert "carol@example.org,hard_bounce,2024-05-01T10:00:00+00:00,550 5.1.1 unknown" in out
    # What export writes, import takes back (into another account) unchanged.
    monkeypatch.setattr("sys.stdin", io.StringIO(out))
    assert run(capsys, "suppression", "import", "-", "--account", "a-two")[0] == 0
    assert run(capsys, "suppression", "export", "--account", "a-two")[1] == out
    code, out, _ = run(capsys, "suppression", "remove", "dave@EXAMPLE.org", "--account", "a-one")
    assert code == 0
    code, _, err = run(capsys, "suppression", "remove", "dave@example.org", "--account", "a-one")
    assert code == 1 and "not on the suppression list" in err
    # Bad input: a message and a non-zero exit, nothing written.
    monkeypatch.setattr("sys.stdin", io.StringIO("address,reason\nerin@example.org,spam\n"))
    code, _, err = run(capsys, "suppression", "import", "-", "--account", "a-one")
    assert code == 1 and "CSV line 2" in err and "reason must be one of" in err
    code, _, err = run(capsys, "suppression", "add", "not-an-address", "--account", "a-one")
    assert code == 1 and "is not an email address" in err
    with engine.connect() as conn:
        actions = [a for (a,) in conn.execute(select(AuditEntry.action))]
    assert {"suppression.add", "suppression.import", "suppression.remove"} <= set(actions)


@pytest.fixture
def served(settings: Settings, engine: Engine, world: World) -> Iterator[RelayThread]:
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


def test_api_round_trip_and_scope(served: RelayThread, world: World, engine: Engine) -> None:
    tenant = Api(served, world["a-one"].token)
    other = Api(served, world["b-one"].token)
    try:
        path = "/accounts/a-one/suppressions"
        r = tenant.post(path, {"address": "x@Example.org", "reason": "unsubscribe"})
        assert r.status_code == 201, r.text
        assert r.json()["address"] == "x@example.org" and r.json()["changed"] is True
        assert tenant.post(path, {"address": "x@example.org"}).json()["changed"] is False
        for n in range(5):
            assert tenant.post(path, {"address": f"u{n}@example.org"}).status_code == 201
        page = tenant.get(path, params={"limit": 2, "offset": 1, "reason": "manual"}).json()
        assert [i["address"] for i in page["items"]] == ["u1@example.org", "u2@example.org"]
        assert page["total"] == 5 and page["offset"] == 1
        found = tenant.get(path, params={"contains": "x@"}).json()["items"]
        assert [(i["address"], i["reason"], i["source"]) for i in found] == [
            ("x@example.org", "unsubscribe", "manual")
        ]
        r = tenant.post(path, {"address": "nope", "reason": "manual"})
        assert r.status_code == 422 and error(r)["field"] == "address"
        # Another tenant's token: the account does not exist for it.
        assert other.get(path).status_code == 404
        assert other.post(path, {"address": "y@example.org"}).status_code == 404
        assert other.delete(f"{path}/x@example.org").status_code == 404
        assert tenant.delete(f"{path}/x@EXAMPLE.org").status_code == 204
        assert tenant.delete(f"{path}/x@example.org").status_code == 404
        assert tenant.get(path).json()["total"] == 5
    finally:
        tenant.close()
        other.close()


def test_sync_from_both_providers(
    settings: Settings, engine: Engine, world: World, emulator: Emulator
) -> None:
    add_emulated_provider(settings, engine, emulator, "sg", "sendgrid", "agency-a")
    add_emulated_provider(settings, engine, emulator, "sp", "sparkpost", "a-two")
    emulator.sendgrid.seed_list(
        "bounces",
        *(
            {"created": 1714557600, "email": f"b{n}@example.org", "reason": "550 unknown user"}
            for n in range(501)  # more than a page
        ),
    )
    emulator.sendgrid.seed_list("spam_reports", {"created": 1714557600, "email": "s@example.org"})
    emulator.sendgrid.seed_list("unsubscribes", {"created": 1714557600, "email": "u@example.org"})
    emulator.sparkpost.seed_list(
        "suppression-list",
        {
            "recipient": "c@example.org",
            "source": "Spam Complaint",
            "type": "non_transactional",
            "created": "2024-05-01T10:00:00+00:00",
            "description": "FBL",
        },
        {"recipient": "l@example.org", "source": "List Unsubscribe", "type": "non_transactional"},
        {"recipient": "m@example.org", "source": "Manually Added", "type": "transactional"},
    )
    box = secret_box(settings)
    with acting(Actor("operator", "cli")):
        account, done = suppressions.sync_suppressions(engine, box, settings.suppression, "sg")
    assert account == "agency-a" and (done.added, done.unchanged) == (503, 0)
    agency = account_id(engine, "agency-a")
    rows = {e.address: e for e in lists.entries(engine, agency)[0]}
    assert rows["b500@example.org"].reason == "hard_bounce"
    assert rows["b0@example.org"].created_at.isoformat() == "2024-05-01T10:00:00+00:00"
    assert (rows["s@example.org"].reason, rows["u@example.org"].reason) == (
        "complaint",
        "unsubscribe",
    )
    assert {e.source for e in rows.values()} == {"sync"}
    with acting(Actor("operator", "cli")):
        _, again = suppressions.sync_suppressions(engine, box, settings.suppression, "sg")
        account, done = suppressions.sync_suppressions(engine, box, settings.suppression, "sp")
    assert (again.added, again.unchanged) == (0, 503)
    assert account == "a-two" and done.added == 3
    mine = {e.address: e.reason for e in lists.entries(engine, account_id(engine, "a-two"))[0]}
    assert mine == {
        "c@example.org": "complaint",
        "l@example.org": "unsubscribe",
        "m@example.org": "manual",
    }
    # A tenant may not sync another tree's provider: it does not exist for it.
    actor = tokens.authenticate(engine, world["b-one"].token)
    assert actor is not None
    with acting(actor), pytest.raises(NotFound, match="does not exist"):
        suppressions.sync_suppressions(engine, box, settings.suppression, "sp")
