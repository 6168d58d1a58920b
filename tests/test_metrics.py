"""/metrics on the admin listener: the counters agree with the ledger."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from relay.store.models import Usage
from tests.support import RelayThread, Tenant, connect, message


def scrape(relay: RelayThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert relay.relay is not None
    text = httpx.get(f"http://127.0.0.1:{relay.relay.admin_port}/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def ledger(relay: RelayThread) -> dict[tuple[str, str], int]:
    with relay.engine.connect() as conn:
        rows = conn.execute(
            select(Usage.kind, Usage.event, func.sum(Usage.recipients)).group_by(
                Usage.kind, Usage.event
            )
        ).all()
    return {(k, e): int(n) for k, e, n in rows}


def test_counters_agree_with_the_ledger(relay: RelayThread, tenant: Tenant) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        for i in range(3):
            client.sendmail(
                tenant.username,
                ["to@example.org", "cc@example.org", f"bcc{i}@example.org"],
                message(tenant.username, to="to@example.org", cc="Carol <cc@Example.ORG>"),
            )
    deadline = time.monotonic() + 10
    while ledger(relay).get(("bcc", "delivered")) != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    samples = scrape(relay)
    for (kind, event), n in ledger(relay).items():
        key = ("relay_recipients_total", (("account", "acme"), ("kind", kind), ("outcome", event)))
        assert samples[key] == n, (kind, event)
    assert samples[("relay_messages_total", (("account", "acme"), ("outcome", "accepted")))] == 3
    assert samples[("relay_messages_total", (("account", "acme"), ("outcome", "delivered")))] == 3
    assert samples[("relay_smtp_replies_total", (("code", "250"),))] == 3
    assert samples[("relay_accept_duration_seconds_count", ())] == 3
    assert samples[("relay_spool_healthy", ())] == 1
    assert (
        samples[
            (
                "relay_delivery_attempts_total",
                (("provider", "agency-outbox"), ("result", "delivered"), ("transport", "file")),
            )
        ]
        == 3
    )


def test_auth_failures_and_sessions_are_counted(relay: RelayThread, tenant: Tenant) -> None:
    with connect(relay, "submission") as client:
        client.docmd("AUTH", "PLAIN AGFwcEBhY21lLnRlc3QAd3Jvbmc=")
        sessions = scrape(relay)[("relay_smtp_sessions", (("listener", "submission"),))]
        assert sessions == 1
    samples = scrape(relay)
    assert samples[("relay_auth_failures_total", (("listener", "submission"),))] == 1


def test_no_label_carries_an_address(relay: RelayThread, tenant: Tenant) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        client.sendmail(
            tenant.username,
            ["secret-person@example.org"],
            message(tenant.username, to="secret-person@example.org"),
        )
    assert relay.relay is not None
    text = httpx.get(f"http://127.0.0.1:{relay.relay.admin_port}/metrics", timeout=5).text
    assert "@" not in text and tenant.password not in text


def test_health_endpoints(relay: RelayThread) -> None:
    assert relay.relay is not None
    base = f"http://127.0.0.1:{relay.relay.admin_port}"
    assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "spool": True, "listeners": True}
