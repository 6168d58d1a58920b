"""Limits through the admin API and the command line (local and remote print the
same): who may set what, the agency's ceiling as 409, bad input as 422 / exit 1,
used and remaining. (The alert rules: config/alerts.test.yml.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from relay.cli import main
from relay.core.settings import Settings
from tests.api_support import Api, World, api_settings, build_world, error, local_cli_reads
from tests.support import RelayThread


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return api_settings(tmp_path / "var", db_url)


@pytest.fixture
def world(settings: Settings, engine: Engine) -> World:
    return build_world(settings, engine)


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


def patch(api: Api, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    response = api("PATCH", path, json=body)
    return response.status_code, response.json()


def test_api_sets_and_shows_limits_within_the_agency(served: RelayThread, world: World) -> None:
    operator, agency, sub = (
        Api(served, world.operator),
        Api(served, world["agency-a"].token),
        Api(served, world["a-one"].token),
    )
    try:
        code, body = patch(operator, "/accounts/agency-a/limits", {"max_messages": "100/min"})
        assert code == 200
        assert body["subject"] == "account agency-a"
        assert body["changed"] == ["max_messages_per_minute"]
        assert body["limits"][0]["limit"] == "messages_per_minute"
        assert (body["limits"][0]["max"], body["limits"][0]["remaining"]) == (100, 100)
        # The agency sets its sub-accounts' limits, within its own.
        code, body = patch(
            agency,
            "/accounts/a-one/limits",
            {"max_messages": ["60/min"], "max_recipients": "5000/day", "max_sessions": 3},
        )
        assert code == 200, body
        assert [u["value"] for u in body["limits"]] == ["60/min", "5000/day", "3"]  # type: ignore[index]
        response = agency("PATCH", "/accounts/a-two/limits", json={"max_messages": "41/min"})
        assert response.status_code == 409
        assert "more than the agency's 100/min" in error(response)["message"]
        # Not its own limits, not a sub-account's own token, not another tree's.
        response = agency("PATCH", "/accounts/agency-a/limits", json={"max_messages": "1/min"})
        assert response.status_code == 403
        response = sub("PATCH", "/accounts/a-one/limits", json={"max_messages": "1/min"})
        assert response.status_code == 403
        response = agency("PATCH", "/accounts/b-one/limits", json={"max_messages": "1/min"})
        assert response.status_code == 404
        response = agency("GET", "/accounts/b-one/limits")
        assert response.status_code == 404
        # Bad input: 422 naming the field.
        response = operator("PATCH", "/accounts/a-one/limits", json={"max_messages": "5/day"})
        assert response.status_code == 422
        assert error(response)["field"] == "max_messages"
        response = operator("PATCH", "/accounts/a-one/limits", json={"max_sessions": "many"})
        assert response.status_code == 422
        # A credential within its account.
        path = "/credentials/app@a-one.test/limits"
        code, body = patch(agency, path, {"max_messages": "10/min"})
        assert code == 200 and body["subject"] == "credential app@a-one.test"
        response = agency("PATCH", path, json={"max_messages": "61/min"})
        assert response.status_code == 409
        assert sub.get(path).status_code == 200  # reads: the account sees its own
        listed = operator.get("/limits").json()
        assert [v["subject"] for v in listed] == ["account a-one", "account agency-a"]
        assert [v["subject"] for v in sub.get("/limits").json()] == ["account a-one"]
    finally:
        for api in (operator, agency, sub):
            api.close()


def test_the_command_line_sets_limits_locally_and_remotely_alike(
    served: RelayThread, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert served.relay is not None
    remote = ["--url", f"http://127.0.0.1:{served.relay.admin_port}", "--token", world.operator]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    for twin, prefix in (("a-one", []), ("a-two", remote)):
        code, out, _ = run(
            *prefix,
            "account",
            "edit",
            twin,
            "--max-messages",
            "100/min",
            "--max-messages",
            "1000/hour",
            "--max-recipients",
            "50000/day",
            "--max-sessions",
            "4",
        )
        assert code == 0
        assert out.splitlines()[0] == (
            f"set limits of account {twin}: max_messages_per_minute, max_messages_per_hour, "
            "max_recipients_per_day, max_sessions"
        )
        assert re.search(r"recipients_per_day\s+50000/day\s+0\s+50000\s+\d{4}-", out)
    local = run("usage", "--limits")
    far = run(*remote, "usage", "--limits")
    assert local == far
    assert local[1].count("50000/day") == 2
    edits = [
        ("credential", "edit", "app@{}.test", "--max-messages", "off/min"),
        ("credential", "edit", "app@{}.test", "--max-messages", "200/min"),
        ("account", "edit", "{}", "--max-messages", "100/day"),
        ("account", "edit", "{}", "--max-sessions", "-1"),
        ("usage", "--limits", "--account", "{}"),
    ]
    results = []
    for argv in edits:
        one = run(*(a.format("a-one") for a in argv))
        two = run(*remote, *(a.format("a-two") for a in argv))
        assert one == (two[0], two[1].replace("a-two", "a-one"), two[2].replace("a-two", "a-one"))
        results.append(one)
    assert results[0][0] == 0 and "set limits of credential app@a-one.test" in results[0][1]
    assert results[1][0] == 1 and "past its account a-one's 100/min" in results[1][2]
    assert results[2][0] == 1 and "--max-messages '100/day'" in results[2][2]
    assert results[3][0] == 1 and "--max-sessions '-1'" in results[3][2]
    assert results[4][0] == 0 and "limits of account a-one" in results[4][1]
