"""``relay suppression sync`` from Mailgun's own lists (bounces, complaints,
unsubscribes), paged as Mailgun pages them, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from relay.core.crypto import secret_box
from relay.core.errors import Invalid
from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.service import providers, suppressions
from relay.service.scope import Actor, acting
from relay.suppression import lists, sync
from tests.api_support import World, account_id, api_settings, build_world
from tests.emulated import add_emulated_provider


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return api_settings(tmp_path / "var", db_url)


@pytest.fixture
def world(settings: Settings, engine: Engine) -> World:
    return build_world(settings, engine)


def test_sync_reads_every_page_of_the_three_lists(
    settings: Settings, engine: Engine, world: World, emulator: Emulator
) -> None:
    add_emulated_provider(settings, engine, emulator, "mg", "mailgun", "agency-a")
    emulator.mailgun.seed_list(
        "bounces",
        *(
            {
                "address": f"b{n}@example.org",
                "code": "550",
                "error": "No such mailbox",
                "created_at": "Wed, 01 May 2024 10:00:00 UTC",
            }
            for n in range(sync.MAILGUN_PAGE + 1)  # more than a page
        ),
    )
    emulator.mailgun.seed_list(
        "complaints", {"address": "c@example.org", "created_at": "Wed, 01 May 2024 10:00:00 UTC"}
    )
    emulator.mailgun.seed_list("unsubscribes", {"address": "u@example.org", "tags": ["*"]})
    box = secret_box(settings)
    with acting(Actor("operator", "cli")):
        account, done = suppressions.sync_suppressions(engine, box, settings.suppression, "mg")
    assert account == "agency-a" and (done.added, done.unchanged) == (sync.MAILGUN_PAGE + 3, 0)
    rows = {e.address: e for e in lists.entries(engine, account_id(engine, "agency-a"))[0]}
    last = f"b{sync.MAILGUN_PAGE}@example.org"
    assert rows[last].reason == "hard_bounce" and "No such mailbox" in (rows[last].detail or "")
    assert rows["b0@example.org"].created_at.isoformat() == "2024-05-01T10:00:00+00:00"
    assert (rows["c@example.org"].reason, rows["u@example.org"].reason) == (
        "complaint",
        "unsubscribe",
    )
    with acting(Actor("operator", "cli")):
        _, again = suppressions.sync_suppressions(engine, box, settings.suppression, "mg")
    assert (again.added, again.unchanged) == (0, sync.MAILGUN_PAGE + 3)


def test_an_smtp_only_provider_has_no_lists_to_read(
    settings: Settings, engine: Engine, world: World, emulator: Emulator
) -> None:
    add_emulated_provider(settings, engine, emulator, "mg", "mailgun", "agency-a")
    box = secret_box(settings)
    config = providers.load_config(engine, box, "mg")
    with acting(Actor("operator", "cli")):
        providers.save_edit(engine, box, providers.edited(config, {}, {}, None, ["api_key"]))
        with pytest.raises(Invalid, match="no API key"):
            suppressions.sync_suppressions(engine, box, settings.suppression, "mg")
