"""The migrations build exactly the schema the models describe, on both engines."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relay.store.engine import make_engine, migrate
from relay.store.models import Base


def _drift(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        engine.dispose()


def test_migrations_match_the_models(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    assert _drift(any_db_url) == []


def test_the_newest_migration_goes_down_and_up_again(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    try:
        migrate(engine)
        migrate(engine, "-0004")
        migrate(engine)
    finally:
        engine.dispose()
    assert _drift(any_db_url) == []
