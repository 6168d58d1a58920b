"""Amazon SES events through Amazon SNS to the relay's webhook listener, on loopback.

Real parts: a relay with its public listener, real HTTP, real SMTP to make
the messages, SQLite and PostgreSQL, and an HTTPS server of the test's own
(its CA made by trustme) standing in for SNS's certificate and subscription
URLs, allowed by ``ses_events.trust_for_tests``. The SNS signature is made
here as AWS documents it (the canonical string written out below, RSA PKCS#1
v1.5 over SHA1 or SHA256) with a signing certificate made with cryptography.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from relay.cli import main
from relay.core.crypto import secret_box
from relay.core.events import EventType
from relay.core.settings import Settings
from relay.providers import ses_events
from relay.reputation.rates import account_rates
from relay.service import providers
from relay.store.models import Account, Provider, Suppression
from tests.support import RelayThread, Tenant, fresh_engine, make_settings, seed_tenant
from tests.test_webhooks import send, stored, url

TOPIC = "arn:aws:sns:us-east-1:123456789012:relay-events"
OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:someone-else"


def signing_pair() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


class FakeSns:
    """HTTPS on loopback: the signing certificate and the subscribe URL, and what was asked."""

    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.asked: list[str] = []
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_context)
        self.client_context = ssl.create_default_context()
        ca.configure_trust(self.client_context)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.asked.append(self.path)
                body = (
                    owner.pem if self.path.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"
                )
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = server_context.wrap_socket(self.server.socket, server_side=True)
        self.host_port = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def cert_url(self) -> str:
        return f"https://{self.host_port}/SimpleNotificationService-test.pem"

    def __enter__(self) -> FakeSns:
        self.thread.start()
        ses_events.trust_for_tests(self.host_port, self.client_context)
        return self

    def __exit__(self, *exc: object) -> None:
        ses_events.trust_for_tests(self.host_port, None)
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


SIGNED = {
    "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "SubscriptionConfirmation": [
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ],
}


def sns_post(
    key: rsa.RSAPrivateKey,
    kind: str,
    message: str,
    cert_url: str,
    *,
    topic: str = TOPIC,
    version: str = "1",
    **extra: str,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": message,
        "Timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "SignatureVersion": version,
        "SigningCertURL": cert_url,
        **extra,
    }
    text = "".join(f"{name}\n{doc[name]}\n" for name in SIGNED[kind] if name in doc)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text.encode(), padding.PKCS1v15(), algorithm)
    doc["Signature"] = base64.b64encode(signature).decode()
    return doc


def ses_event(kind: str, queue_id: str, destination: list[str], **part: Any) -> str:
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    event = {
        "eventType": kind,
        "mail": {
            "timestamp": now,
            "messageId": "0100018c-ses-message-id",
            "source": "sender@acme.test",
            "destination": destination,
            "tags": {"relay_message_id": [queue_id], "ses:configuration-set": ["relay-events"]},
        },
        kind[:1].lower() + kind[1:]: {"timestamp": now, **part},
    }
    return json.dumps(event)


def bounce(queue_id: str, address: str, bounce_type: str = "Permanent") -> str:
    recipients = [{"emailAddress": address, "status": "5.1.1", "diagnosticCode": "550 5.1.1 gone"}]
    return ses_event(
        "Bounce",
        queue_id,
        [address],
        bounceType=bounce_type,
        bounceSubType="General",
        bouncedRecipients=recipients,
    )


@pytest.fixture(name="signer")
def sns_signer() -> Iterator[tuple[rsa.RSAPrivateKey, FakeSns]]:
    key, pem = signing_pair()
    with FakeSns(pem) as sns:
        yield key, sns


@pytest.fixture
def hook_settings(tmp_path: Path, any_db_url: str) -> Settings:
    return make_settings(
        tmp_path / "var",
        any_db_url,
        webhooks={"listen": "127.0.0.1:0", "public_url": "https://hooks.relay.test"},
        queue={"workers": False},
    )


@pytest.fixture
def hook_engine(hook_settings: Settings) -> Iterator[Engine]:
    engine = fresh_engine(hook_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def acme(hook_settings: Settings, hook_engine: Engine) -> Tenant:
    tenant = seed_tenant(hook_settings, hook_engine)
    options = {"region": "us-east-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE"}
    secrets = {"secret_access_key": "s3cret", "webhook_key": TOPIC}
    config = providers.ProviderConfig("ses", "ses", options, secrets)
    providers.add_provider(hook_engine, secret_box(hook_settings), "agency", config)
    with Session(hook_engine) as session, session.begin():
        session.execute(update(Provider).where(Provider.name == "ses").values(webhook_token="tok"))
    return tenant


@pytest.fixture
def relay(hook_settings: Settings, hook_engine: Engine, acme: Tenant) -> Iterator[RelayThread]:
    thread = RelayThread(hook_settings, hook_engine)
    thread.start()
    yield thread
    thread.stop()


def post(relay: RelayThread, doc: dict[str, Any] | bytes) -> httpx.Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    headers = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "x"}
    return httpx.post(url(relay, "tok"), content=body, headers=headers, timeout=20)


def suppressed(engine: Engine, address: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(Suppression.reason).where(Suppression.address == address)
        ).scalar()


def test_a_subscription_is_confirmed_once_its_signature_holds(
    relay: RelayThread, signer: tuple[rsa.RSAPrivateKey, FakeSns]
) -> None:
    key, sns = signer
    subscribe = f"https://{sns.host_port}/?Action=ConfirmSubscription&Token=t0k"
    forged_key, _ = signing_pair()
    forged = sns_post(
        forged_key,
        "SubscriptionConfirmation",
        "You have chosen to subscribe",
        sns.cert_url,
        SubscribeURL=subscribe,
        Token="t0k",
    )
    assert post(relay, forged).status_code == 403
    assert not any("ConfirmSubscription" in path for path in sns.asked)

    good = sns_post(
        key,
        "SubscriptionConfirmation",
        "You have chosen to subscribe",
        sns.cert_url,
        SubscribeURL=subscribe,
        Token="t0k",
    )
    response = post(relay, good)
    assert response.status_code == 200, response.text
    assert "confirmed" in response.json()["handled"]
    assert sns.asked.count("/?Action=ConfirmSubscription&Token=t0k") == 1
    assert sns.asked.count("/SimpleNotificationService-test.pem") == 1  # fetched once, cached


def test_urls_off_sns_are_never_fetched(
    relay: RelayThread, signer: tuple[rsa.RSAPrivateKey, FakeSns]
) -> None:
    key, sns = signer
    for cert_url, subscribe in (
        ("https://169.254.169.254/latest/meta-data.pem", sns.cert_url),
        (f"http://{sns.host_port}/cert.pem", sns.cert_url),
        ("https://sns.eu-west-1.amazonaws.com/cert.pem", sns.cert_url),  # not the topic's region
        (sns.cert_url, "https://evil.example/subscribe"),
    ):
        doc = sns_post(
            key,
            "SubscriptionConfirmation",
            "m",
            cert_url,
            SubscribeURL=subscribe,
            Token="t",
        )
        response = post(relay, doc)
        assert response.status_code == 403, (cert_url, subscribe, response.text)
        assert "refusing to fetch" in response.json()["error"]["message"]
    assert not any("ConfirmSubscription" in path for path in sns.asked)


def test_a_bounce_reaches_the_suppression_list_and_a_soft_one_does_not(
    relay: RelayThread,
    hook_engine: Engine,
    acme: Tenant,
    signer: tuple[rsa.RSAPrivateKey, FakeSns],
) -> None:
    key, sns = signer
    queue_id = send(relay, acme, "gone@example.org", "full@example.org")
    hard = sns_post(key, "Notification", bounce(queue_id, "gone@example.org"), sns.cert_url)
    response = post(relay, hard)
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 1, "duplicate": 0, "unmatched": 0}
    assert suppressed(hook_engine, "gone@example.org") == "hard_bounce"
    soft = sns_post(
        key,
        "Notification",
        bounce(queue_id, "full@example.org", "Transient"),
        sns.cert_url,
        version="2",
        Subject="Amazon SES Email Event Notification",
    )
    assert post(relay, soft).json() == {"stored": 1, "duplicate": 0, "unmatched": 0}
    assert suppressed(hook_engine, "full@example.org") is None
    rows = stored(hook_engine)
    assert [(r.address, r.type, r.bounce_class, r.message_id) for r in rows] == [
        ("gone@example.org", "bounce", "hard", queue_id),
        ("full@example.org", "bounce", "soft", queue_id),
    ]
    assert rows[0].detail == "Permanent/General: 550 5.1.1 gone"
    # SNS retries: the same notification again is a duplicate.
    assert post(relay, hard).json() == {"stored": 0, "duplicate": 1, "unmatched": 0}
    # Another message's id (or none of ours) ties to nothing.
    stray = sns_post(key, "Notification", bounce("nope", "gone@example.org"), sns.cert_url)
    assert post(relay, stray).json() == {"stored": 0, "duplicate": 0, "unmatched": 1}


def test_a_complaint_feeds_reputation(
    relay: RelayThread,
    hook_engine: Engine,
    acme: Tenant,
    signer: tuple[rsa.RSAPrivateKey, FakeSns],
) -> None:
    key, sns = signer
    queue_id = send(relay, acme, "angry@example.org")
    complaint = ses_event(
        "Complaint",
        queue_id,
        ["angry@example.org"],
        complainedRecipients=[{"emailAddress": "angry@example.org"}],
        complaintFeedbackType="abuse",
    )
    response = post(relay, sns_post(key, "Notification", complaint, sns.cert_url))
    assert response.json()["stored"] == 1, response.text
    with hook_engine.connect() as conn:
        account = conn.execute(select(Account.id).where(Account.name == "acme")).scalar_one()
        rates = account_rates(conn, account, dt.datetime.now(dt.UTC))
    assert all(r.complaints == 1 for r in rates)
    assert stored(hook_engine)[0].detail == "abuse"


def test_bad_signature_wrong_topic_or_unsigned_store_nothing(
    relay: RelayThread,
    hook_engine: Engine,
    acme: Tenant,
    signer: tuple[rsa.RSAPrivateKey, FakeSns],
) -> None:
    key, sns = signer
    queue_id = send(relay, acme, "gone@example.org")
    event = bounce(queue_id, "gone@example.org")
    tampered = sns_post(key, "Notification", event, sns.cert_url)
    tampered["Message"] = tampered["Message"].replace("Permanent", "Transient")
    assert post(relay, tampered).status_code == 403
    other = sns_post(key, "Notification", event, sns.cert_url, topic=OTHER_TOPIC)
    response = post(relay, other)
    assert response.status_code == 403 and "another SNS topic" in response.text
    unsigned = sns_post(key, "Notification", event, sns.cert_url)
    del unsigned["Signature"]
    assert post(relay, unsigned).status_code == 401
    assert post(relay, b"[]").status_code == 401
    bad_version = sns_post(key, "Notification", event, sns.cert_url)
    bad_version["SignatureVersion"] = "3"
    assert post(relay, bad_version).status_code == 403
    assert stored(hook_engine) == []
    assert suppressed(hook_engine, "gone@example.org") is None


def test_every_ses_event_type_is_read() -> None:
    def parse(kind: str, destination: list[str], **part: Any) -> list[tuple[str, str]]:
        doc = {
            "Type": "Notification",
            "MessageId": "m1",
            "Message": ses_event(kind, "Q1", destination, **part),
        }
        events = ses_events.parse_events(json.dumps(doc).encode())
        assert all(e.message_id == "Q1" for e in events)
        return [(e.type.value, e.address) for e in events]

    two = ["a@example.org", "b@example.org"]
    assert parse("Delivery", two, recipients=two, smtpResponse="250 ok") == [
        ("delivered", "a@example.org"),
        ("delivered", "b@example.org"),
    ]
    delayed = [{"emailAddress": "a@example.org"}]
    assert parse("DeliveryDelay", two, delayedRecipients=delayed, delayType="MailboxFull") == [
        ("deferred", "a@example.org")
    ]
    assert parse("Reject", two, reason="Bad content") == [
        ("dropped", "a@example.org"),
        ("dropped", "b@example.org"),
    ]
    one = ["a@example.org"]
    assert parse("Open", one) == [("open", "a@example.org")]
    assert parse("Click", one, link="https://x.test") == [("click", "a@example.org")]
    assert parse("Subscription", one) == [("unsubscribe", "a@example.org")]
    assert parse("Open", two) == []  # an open names no recipient of several
    assert parse("Send", one) == []
    # Identity notifications say notificationType instead of eventType.
    legacy = json.loads(bounce("Q1", "a@example.org"))
    legacy["notificationType"] = legacy.pop("eventType")
    doc = {"Type": "Notification", "MessageId": "m2", "Message": json.dumps(legacy)}
    [event] = ses_events.parse_events(json.dumps(doc).encode())
    assert event.type is EventType.BOUNCE and event.provider_event_id == "m2:a@example.org"


def test_cli_adds_an_ses_provider_and_prints_its_webhook_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_WEBHOOKS_PUBLIC_URL", "https://hooks.example.net/")
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert main(["account", "create", "agency"]) == 0
    base = ["provider", "add", "aws", "--account", "agency", "--kind", "ses", "--no-check"]
    capsys.readouterr()
    assert main([*base, "--region", "us-east-1", "--secret-access-key", "s3cret"]) == 1
    assert "--access-key-id" in capsys.readouterr().err
    good = [*base, "--region", "eu-west-1", "--access-key-id", "AKIAIOSFODNN7EXAMPLE"]
    assert main([*good, "--secret-access-key", "s3cret", "--configuration-set", "cs"]) == 0
    capsys.readouterr()
    assert main(["provider", "webhook", "aws"]) == 0
    out = capsys.readouterr().out
    assert "SNS" in out and "Create subscription" in out and "configuration set" in out.lower()
    assert main(["provider", "edit", "aws", "--webhook-key", "not-an-arn"]) == 1
    assert "topic's ARN" in capsys.readouterr().err
    arn = "arn:aws:sns:eu-west-1:123456789012:relay-events"
    assert main(["provider", "edit", "aws", "--webhook-key", arn]) == 0
    capsys.readouterr()
    from relay.core.settings import load_settings
    from relay.store.engine import make_engine

    engine = make_engine(load_settings().database.url)
    with Session(engine) as session:
        row = session.scalars(select(Provider).where(Provider.name == "aws")).one()
        assert row.kind == "ses" and row.options["region"] == "eu-west-1"
        assert row.options["configuration_set"] == "cs"
        assert "s3cret" not in json.dumps(row.options) and "s3cret" not in str(row.secrets)
    engine.dispose()
