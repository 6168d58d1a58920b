"""Mailgun and SMTP-only providers through the admin API, over real HTTP against a
real relay and the emulator, on both databases: added after the live check,
listed and shown with their transports, an edit that removes the key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from relay.core.settings import Settings
from relay.emulator import Emulator
from tests.api_support import Api, World, api_settings, build_world, error
from tests.emulated import API_KEY
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
def op(settings: Settings, engine: Engine, world: World) -> Iterator[Api]:
    thread = RelayThread(settings, engine).start()
    api = Api(thread, world.operator)
    yield api
    api.close()
    thread.stop()


def test_mailgun_and_smtp_only_providers(op: Api, emulator: Emulator) -> None:
    body = {
        "name": "mg",
        "account": "agency-a",
        "kind": "mailgun",
        "api_key": API_KEY,
        "smtp_password": API_KEY,
        "sending_domain": "mg.example.com",
        "region": "eu",
        "api_url": emulator.mailgun_url,
        "smtp_host": "127.0.0.1",
        "smtp_port": emulator.smtp_port,
        "smtp_tls": "none",
        "test_address": "ops@agency-a.test",
    }
    made = op.post("/providers", body)
    assert made.status_code == 201, made.text
    assert [(g["transport"], g["ok"]) for g in made.json()["legs"]] == [
        ("api", True),
        ("smtp", True),
    ]
    assert API_KEY not in made.text
    listed = {p["name"]: p for p in op.get("/providers").json()}
    assert (listed["mg"]["kind"], listed["mg"]["transports"]) == ("mailgun", "api+smtp")
    assert listed["a-one-smtp"]["transports"] == "smtp"
    assert listed["agency-a-outbox"]["transports"] == "file"
    shown = op.get("/providers/mg").json()
    assert shown["transports"] == "api+smtp" and shown["options"]["region"] == "eu"

    dropped = op("PATCH", "/providers/mg", json={"remove_secrets": ["api_key"]})
    assert dropped.status_code == 200, dropped.text
    assert [g["transport"] for g in dropped.json()["legs"]] == ["smtp"]
    assert op.get("/providers/mg").json()["transports"] == "smtp"
    unknown = op("PATCH", "/providers/mg", json={"remove_secrets": ["password"]})
    assert unknown.status_code == 422

    emulator.mailgun.domains["nowhere.example.com"] = "unknown"
    refused = op.post(
        "/providers", {**body, "name": "mg2", "sending_domain": "nowhere.example.com"}
    )
    assert refused.status_code == 422 and "Domain not found" in error(refused)["message"]
