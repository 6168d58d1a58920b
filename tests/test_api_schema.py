"""A property-based run of the OpenAPI document (schemathesis), on both engines.

For every operation schemathesis makes valid and invalid requests from the
document (bounded: 20 examples an operation and mode, no deadline) and sends
them with an operator token to the real admin listener. Every answer must be
no 5xx, a documented status with a documented content type and headers, and
a body matching its schema; invalid requests must be refused with a 4xx.
Marked slow: ``-m "not slow"`` leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from relay.admin.api import openapi_document
from tests.api_support import World, api_settings, build_world
from tests.pg_harness import drop_database, fresh_database, postgres_url
from tests.support import RelayThread, fresh_engine

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('schema')}/relay.db"
        return
    base = postgres_url()
    if base is None:
        pytest.skip("PostgreSQL not available (RELAY_TEST_POSTGRES_URL unset)")
    url = fresh_database(base)
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def served(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RelayThread, World]]:
    var: Path = tmp_path_factory.mktemp("var")
    relay_settings = api_settings(var, database)
    engine: Engine = fresh_engine(relay_settings)
    world = build_world(relay_settings, engine)
    thread = RelayThread(relay_settings, engine).start()
    yield thread, world
    thread.stop()
    engine.dispose()


# Adding and editing a provider run its live check against the hosts in the
# request: generated hosts would send traffic off this machine. Those two
# operations are tested with loopback providers in test_api.py instead.
schema = (
    schemathesis.openapi.from_dict(openapi_document())
    .exclude(method="POST", path="/providers")
    .exclude(method="PATCH", path="/providers/{name}")
)


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(
    case: schemathesis.Case, served: tuple[RelayThread, World]
) -> None:
    relay, world = served
    assert relay.relay is not None
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{relay.relay.admin_port}/api/v1",
        headers={"Authorization": f"Bearer {world.operator}"},
        checks=CHECKS,
    )


def test_the_served_document_is_the_tested_one(served: tuple[RelayThread, World]) -> None:
    relay = served[0].relay
    assert relay is not None
    document = httpx.get(f"http://127.0.0.1:{relay.admin_port}/api/v1/openapi.json").json()
    assert document.pop("servers") == [{"url": "/api/v1"}]
    assert document == openapi_document()
