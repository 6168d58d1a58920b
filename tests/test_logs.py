"""Logs: one line per message event, with its queue id; JSON when asked; no secrets."""

from __future__ import annotations

import json
import logging
import time

import pytest

from relay.server import JSONFormatter
from tests.support import PASSWORD, RelayThread, Tenant, connect, message


def test_one_line_per_event_with_the_queue_id(
    relay: RelayThread, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        client.docmd("MAIL", f"FROM:<{tenant.username}>")
        client.docmd("RCPT", "TO:<bob@example.org>")
        code, reply = client.data(message(tenant.username))
    assert code == 250
    queue_id = reply.decode().rsplit(" ", 1)[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        r.getMessage().startswith(f"{queue_id}: state=delivered") for r in caplog.records
    ):
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(queue_id)]
    assert lines[0].startswith(f"{queue_id}: account=acme from=<{tenant.username}>")
    assert "state=queued" in lines[0]
    assert lines[-1] == f"{queue_id}: state=delivered"
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in everything


def test_json_lines() -> None:
    record = logging.LogRecord(
        "relay.smtp", logging.INFO, __file__, 1, "%s: state=%s", ("ABC123", "queued"), None
    )
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "ABC123: state=queued"
    assert line["level"] == "INFO" and line["logger"] == "relay.smtp"
