"""Amazon SES end to end: mail into the relay, delivered by its workers through SES v2
(moto's server on loopback), its bounce back through SNS to the webhook listener,
and the next message to that address suppressed. SQLite and PostgreSQL; no mocks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from relay.core.crypto import secret_box
from relay.core.settings import Settings
from relay.service import providers
from relay.store.models import Attempt, Provider, Recipient
from tests.aws import (  # noqa: F401 (moto_server, moto_state: the fixtures moto_url, moto)
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    Moto,
    moto_server,
    moto_state,
)
from tests.support import RelayThread, Tenant, make_settings, message
from tests.test_delivery import send, wait_for
from tests.test_ses_events import (  # noqa: F401 (sns_signer: the fixture signer)
    TOPIC,
    FakeSns,
    bounce,
    sns_post,
    sns_signer,
    suppressed,
)


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(
        tmp_path / "var",
        db_url,
        webhooks={"listen": "127.0.0.1:0", "public_url": "https://hooks.relay.test"},
    )


@pytest.fixture
def served(settings: Settings, engine: Engine, tenant: Tenant, moto: Moto) -> Iterator[RelayThread]:
    moto.verify(tenant.username.rpartition("@")[2])  # the sending domain, as SES wants it
    options = {"region": REGION, "access_key_id": ACCESS_KEY_ID, "api_url": moto.url}
    secrets = {"secret_access_key": SECRET_ACCESS_KEY, "webhook_key": TOPIC}
    config = providers.ProviderConfig("aws", "ses", options, secrets)
    providers.add_provider(engine, secret_box(settings), "agency", config)
    providers.set_default(engine, "aws", "acme")
    with Session(engine) as session, session.begin():
        session.execute(update(Provider).where(Provider.name == "aws").values(webhook_token="t"))
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


def test_delivered_by_ses_bounced_through_sns_then_suppressed(
    served: RelayThread,
    tenant: Tenant,
    engine: Engine,
    moto: Moto,
    signer: tuple[rsa.RSAPrivateKey, FakeSns],
) -> None:
    gone, cc, hidden = "gone@example.org", "cc@example.org", "hidden@example.org"
    data = message(tenant.username, to=gone, cc=cc, bcc=hidden, body="Grüße\r\n")
    first = send(served, tenant, [gone, cc, hidden], data)
    wait_for(engine, first, ("delivered",))
    [sent] = moto.sent()
    assert sent.destinations[:3] == [gone, cc, hidden]
    assert hidden not in sent.raw_data and "Bcc" not in sent.raw_data
    assert "Grüße" in sent.raw_data
    with engine.connect() as conn:
        ids = conn.execute(
            select(Attempt.transport, Attempt.provider_message_id).where(
                Attempt.message_id == first
            )
        ).all()
    assert [tuple(row) for row in ids] == [("api", sent.id)]

    key, sns = signer
    assert served.relay is not None
    url = f"http://127.0.0.1:{served.relay.webhooks_port}/hooks/t"
    post = sns_post(key, "Notification", bounce(first, gone), sns.cert_url)
    response = httpx.post(url, content=json.dumps(post).encode(), timeout=20)
    assert response.json() == {"stored": 1, "duplicate": 0, "unmatched": 0}, response.text
    assert suppressed(engine, gone) == "hard_bounce"

    second = send(served, tenant, [gone, cc], message(tenant.username, to=f"{gone}, {cc}"))
    wait_for(engine, second, ("delivered",))
    assert moto.sent()[-1].destinations[0] == cc
    assert gone not in moto.sent()[-1].destinations[:1]
    with engine.connect() as conn:
        states = dict(
            conn.execute(
                select(Recipient.address, Recipient.state).where(Recipient.message_id == second)
            ).all()
        )
    assert states == {gone: "suppressed", cc: "delivered"}
