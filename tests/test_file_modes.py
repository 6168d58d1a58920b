"""var/ and the SQLite database are private to the relay's user: directories
0700, files 0600, from creation on, and loose ones tightened at start
(issue 10, finding 8)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from relay.store.engine import make_engine, migrate
from tests.support import RelayThread, make_settings, seed_tenant


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> object:
    old = os.umask(0o022)  # what a default login gives: files 0644, directories 0755
    yield
    os.umask(old)


def test_a_new_relay_makes_everything_private(tmp_path: Path) -> None:
    var = tmp_path / "var"
    settings = make_settings(var)
    thread = RelayThread(settings).start()
    try:
        assert thread.engine.url.database == str(var / "relay.db")
        seed_tenant(settings, thread.engine)
        assert mode(var) == 0o700
        assert mode(var / "tls") == 0o700
        assert mode(var / "tls" / "selfsigned.key") == 0o600
        assert mode(var / "secret.key") == 0o600
        for name in ("relay.db", "relay.db-wal", "relay.db-shm"):  # open in WAL mode
            assert mode(var / name) == 0o600, name
    finally:
        thread.stop()
        thread.engine.dispose()


def test_loose_files_are_tightened_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    var = tmp_path / "var"
    for sub in ("tls", "outbox", "outbox/old"):
        (var / sub).mkdir(parents=True)
    database = var / "relay.db"
    engine = make_engine(f"sqlite:///{database}")
    migrate(engine)
    engine.dispose()
    for path in (var, var / "tls", var / "outbox", var / "outbox" / "old"):
        path.chmod(0o755)
    database.chmod(0o644)
    (var / "secret.key").write_text("an-old-key-written-loose\n")
    (var / "secret.key").chmod(0o644)

    caplog.set_level(logging.WARNING, logger="relay.files")
    thread = RelayThread(make_settings(var)).start()
    try:
        for path in (var, var / "tls", var / "outbox", var / "outbox" / "old"):
            assert mode(path) == 0o700, path
        assert mode(database) == 0o600
        assert mode(var / "secret.key") == 0o600
        assert f"tightened {database} from 0644 to 0600" in caplog.text
        assert f"tightened {var / 'outbox'} from 0755 to 0700" in caplog.text
    finally:
        thread.stop()
        thread.engine.dispose()
