"""An Amazon SES provider through the admin API: added after its live check against moto's
SES v2 server and the emulator's SMTP sink, shown masked, tested, its egress listed; a
bad row refused with the field. Real HTTP to a real relay on loopback, SQLite only
(the provider rows are the same on PostgreSQL, which test_api covers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.providers import ses
from tests.api_support import Api, World, api_settings, build_world, error
from tests.aws import (  # noqa: F401 (moto_server, moto_state: the fixtures moto_url, moto)
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    SENDER,
    Moto,
    moto_server,
    moto_state,
)
from tests.support import RelayThread


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


def ses_row(moto: Moto, emulator: Emulator, **extra: Any) -> dict[str, Any]:
    return {
        "name": "aws",
        "account": "agency-a",
        "kind": "ses",
        "region": REGION,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "configuration_set": "relay-events",
        "api_url": moto.url,
        "test_address": SENDER,
        **{k: v for k, v in emulator.provider_options("ses").items() if k.startswith("smtp_")},
        **extra,
    }


def test_an_ses_provider_through_the_api(op: Api, moto: Moto, emulator: Emulator) -> None:
    emulator.smtp.users[ACCESS_KEY_ID] = ses.smtp_password(SECRET_ACCESS_KEY, REGION)
    refused = op.post("/providers", ses_row(moto, emulator, test_address="ops@unverified.test"))
    assert refused.status_code == 422, refused.text
    assert "not a verified identity" in error(refused)["message"]
    bad_region = op.post("/providers", ses_row(moto, emulator, region="moon-1", check=False))
    assert bad_region.status_code == 422 and error(bad_region)["field"] == "region"

    added = op.post("/providers", ses_row(moto, emulator))
    assert added.status_code == 201, added.text
    legs = added.json()["legs"]
    assert [leg["ok"] for leg in legs] == [True] and "account can send" in legs[0]["detail"]

    shown = op.get("/providers/aws")
    assert SECRET_ACCESS_KEY not in shown.text
    assert shown.json()["secrets"] == {"secret_access_key": "****EKEY"}
    assert shown.json()["options"]["configuration_set"] == "relay-events"

    sent = op.post("/providers/aws/test", {"to": "friend@example.org"}).json()
    assert sent["ok"] is True, sent
    assert [leg["transport"] for leg in sent["legs"]] == ["api", "smtp"]
    [api_copy] = moto.sent()
    assert api_copy.destinations[0] == "friend@example.org"
    [smtp_copy] = emulator.smtp.messages
    assert smtp_copy.user == ACCESS_KEY_ID and b"X-SES-CONFIGURATION-SET: relay-events" in (
        smtp_copy.data
    )
    egress = op.get("/providers/aws/egress").json()
    assert egress == [
        {"transport": "api", "address": "127.0.0.1"},
        {"transport": "smtp", "address": "127.0.0.1"},
    ]
