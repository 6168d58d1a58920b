"""The emulator itself: its checks, its HTTP controls, loopback only, ``relay emulate``."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from typing import Any

import httpx
import pytest

from relay.emulator import Emulator, serve_emulator

from .conftest import API_KEY


def good_mail(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "a@example.org"}]}],
        "from": {"email": "s@example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "x"}, {"type": "text/html", "value": "<p>"}],
    }
    body.update(changes)
    return body


async def post_mail(emulator: Emulator, http: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await http.post(
        emulator.sendgrid_url + "/v3/mail/send",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )


async def test_a_good_request_is_accepted(emulator: Emulator, http: httpx.AsyncClient):
    response = await post_mail(emulator, http, good_mail())
    assert response.status_code == 202 and response.headers["x-message-id"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {
                "personalizations": [
                    {"to": [{"email": "a@example.org"}], "bcc": [{"email": "A@example.org"}]}
                ]
            },
            "personalizations.0.bcc",
        ),
        ({"personalizations": [{"cc": [{"email": "a@example.org"}]}]}, "personalizations.0.to"),
        (
            {"personalizations": [{"to": [{"email": "a@example.org", "name": "Doe, J"}]}]},
            "personalizations.0.to.0.name",
        ),
        (
            {"personalizations": [{"to": [{"email": f"r{i}@example.org"} for i in range(1001)]}]},
            "personalizations",
        ),
        (
            {
                "content": [
                    {"type": "text/html", "value": "<p>"},
                    {"type": "text/plain", "value": "x"},
                ]
            },
            "content",
        ),
        ({"content": [{"type": "text/plain", "value": ""}]}, "content.0.value"),
        ({"headers": {"Reply-To": "x@example.com"}}, "headers.Reply-To"),
        ({"headers": {"X-Count": 3}}, "headers.X-Count"),
        ({"subject": ""}, "subject"),
        ({"from": {"email": "not an address"}}, "from.email"),
        ({"categories": [f"c{i}" for i in range(11)]}, "categories"),
        ({"reply_to": {"email": "r@example.com"}, "reply_to_list": []}, "reply_to"),
        ({"attachments": [{"content": "!!", "filename": "a"}]}, "attachments.0.content"),
        (
            {"attachments": [{"content": "eA==", "filename": "a", "disposition": "inline"}]},
            "attachments.0.content_id",
        ),
        ({"ip_pool_name": "x"}, "ip_pool_name"),
        ({"custom_args": "a string"}, "custom_args"),
    ],
)
async def test_sendgrid_refusals_name_the_field(
    changes: dict[str, Any], field: str, emulator: Emulator, http: httpx.AsyncClient
):
    response = await post_mail(emulator, http, good_mail(**changes))
    assert response.status_code == 400
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_sendgrid_checks_key_media_type_and_size(emulator: Emulator, http: httpx.AsyncClient):
    url = emulator.sendgrid_url + "/v3/mail/send"
    body = json.dumps(good_mail())
    wrong = await http.post(
        url,
        content=body,
        headers={"Authorization": "Bearer nope", "Content-Type": "application/json"},
    )
    assert wrong.status_code == 401
    bare = await http.post(
        url, content=body, headers={"Authorization": API_KEY, "Content-Type": "application/json"}
    )
    assert bare.status_code == 401
    form = await http.post(
        url,
        content=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "text/plain"},
    )
    assert form.status_code == 415
    huge = good_mail(attachments=[{"content": "A" * (31 * 1024 * 1024), "filename": "a"}])
    assert (await post_mail(emulator, http, huge)).status_code == 413
    assert [r.auth_scheme for r in emulator.sendgrid.received][:2] == ["Bearer", "bare"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"recipients": [], "content": {"email_rfc822": "From: a@b.example\r\n\r\nx"}},
            422,
            "1400",
        ),
        (
            {
                "recipients": [{"address": "a@example.org"}],
                "content": {"email_rfc822": "From: a@b.example\r\n\r\nx", "subject": "s"},
            },
            422,
            "1301",
        ),
        (
            {
                "recipients": [{"address": "a@example.org"}],
                "content": {"email_rfc822": "Subject: no from\r\n\r\nx"},
            },
            422,
            "3020",
        ),
        (
            {
                "recipients": [{"address": "a@example.org"}],
                "campaign_id": "c" * 65,
                "content": {"email_rfc822": "From: a@b.example\r\n\r\nx"},
            },
            422,
            "1300",
        ),
    ],
)
async def test_sparkpost_refusals(
    body: dict[str, Any], status: int, code: str, emulator: Emulator, http: httpx.AsyncClient
):
    response = await http.post(
        emulator.sparkpost_url + "/api/v1/transmissions",
        content=json.dumps(body),
        headers={"Authorization": API_KEY, "Content-Type": "application/json"},
    )
    assert response.status_code == status
    assert response.json()["errors"][0]["code"] == code


async def test_http_controls(emulator: Emulator, http: httpx.AsyncClient):
    control = emulator.sendgrid_url + "/_emulator"
    await http.post(control + "/fail", json={"status": 503, "count": 2})
    assert [(await post_mail(emulator, http, good_mail())).status_code for _ in range(3)] == [
        503,
        503,
        202,
    ]
    await http.post(control + "/rate-limit", json={"count": 1, "reset_in": 5})
    limited = await post_mail(emulator, http, good_mail())
    assert limited.status_code == 429 and int(limited.headers["x-ratelimit-reset"]) > 0
    assert limited.headers["x-ratelimit-remaining"] == "0"
    seen = (await http.get(control + "/requests")).json()
    assert [r["status"] for r in seen] == [503, 503, 202, 429]
    assert API_KEY not in json.dumps(seen)
    await http.post(control + "/reset", json={})
    assert (await http.get(control + "/requests")).json() == []


async def test_sparkpost_controls_suppress_and_stall(emulator: Emulator, http: httpx.AsyncClient):
    control = emulator.sparkpost_url + "/_emulator"
    await http.post(control + "/suppress", json={"addresses": ["gone@example.org"]})
    await http.post(control + "/stall", json={"seconds": 30, "count": 1})
    body = {
        "recipients": [
            {"address": {"email": "gone@example.org"}},
            {"address": {"email": "a@example.org"}},
        ],
        "content": {"email_rfc822": "From: s@example.com\r\n\r\nx"},
    }
    url = emulator.sparkpost_url + "/api/v1/transmissions"
    headers = {"Authorization": API_KEY, "Content-Type": "application/json"}
    with pytest.raises(httpx.ReadTimeout):
        await http.post(url, content=json.dumps(body), headers=headers, timeout=0.2)
    response = await http.post(url, content=json.dumps(body), headers=headers)
    results = response.json()["results"]
    assert (results["total_rejected_recipients"], results["total_accepted_recipients"]) == (1, 1)


async def test_sparkpost_accepts_basic_auth_with_the_key(
    emulator: Emulator, http: httpx.AsyncClient
):
    token = base64.b64encode(f"{API_KEY}:".encode()).decode()
    response = await http.get(
        emulator.sparkpost_url + "/api/v1/account", headers={"Authorization": f"Basic {token}"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com"])
async def test_loopback_only(host: str):
    with pytest.raises(ValueError, match="loopback"):
        await serve_emulator(host)


async def test_relay_emulate_prints_its_addresses_and_stops_on_sigterm():
    code = "import sys; from relay.emulator import main; sys.exit(main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-c",
        code,
        "--host",
        "127.0.0.1",
        "--api-key",
        "k",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(3)]
    assert lines[0].startswith("SendGrid API   http://127.0.0.1:")
    assert lines[2].startswith("SMTP           127.0.0.1:")
    url = lines[0].split()[-1]
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(url + "/v3/scopes", headers={"Authorization": "Bearer k"})
    assert response.status_code == 200
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
