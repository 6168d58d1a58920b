"""moto's SES v2 server on loopback, for the tests of the Amazon SES provider.

moto (https://github.com/getmoto/moto) runs in server mode on 127.0.0.1: a
real HTTP SES v2 endpoint others wrote, which reads SigV4-signed requests and
keeps what it was sent. It has no ``GetAccount`` (moto 5.2), so the session
fixture adds the route and a handler to moto's SES v2 responder that answers
from :data:`ACCOUNT_STATE`; everything else is moto's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

# AWS's documentation example key pair (IAM User Guide), never a real one.
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"  # moto's default account id
SENDER = "sender@example.com"
ACCOUNT_STATE: dict[str, Any] = {}


def _get_account(self: Any) -> str:
    """GetAccount, which moto lacks: the account as the test sets it."""
    return json.dumps(ACCOUNT_STATE)


@pytest.fixture(scope="session", name="moto_url")
def moto_server() -> Iterator[str]:
    import moto.sesv2.urls
    from moto.server import ThreadedMotoServer
    from moto.sesv2.responses import SESV2Response

    SESV2Response.get_account = _get_account  # type: ignore[attr-defined]
    moto.sesv2.urls.url_paths["{0}/v2/email/account$"] = SESV2Response.dispatch
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class Moto:
    """One test's view of the moto server: reset, identities, what SES was sent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = boto3.client(
            "sesv2",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def verify(self, identity: str) -> None:
        self.client.create_email_identity(EmailIdentity=identity)

    def sent(self) -> list[Any]:
        from moto.ses.models import ses_backends

        return list(ses_backends[MOTO_ACCOUNT][REGION].sent_messages)


@pytest.fixture(name="moto")
def moto_state(moto_url: str) -> Moto:
    httpx.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    ACCOUNT_STATE.clear()
    ACCOUNT_STATE.update(
        SendingEnabled=True, ProductionAccessEnabled=True, EnforcementStatus="HEALTHY"
    )
    state = Moto(moto_url)
    state.verify(SENDER)
    return state
