"""The emulator plays the providers' event webhooks: what arrives, signed or authenticated.

A small HTTP receiver on loopback takes the posts; SendGrid's signature is
checked with the ``sendgrid`` package's own EventWebhook helper, as a relay
would, against the public key the emulator shows as SendGrid's console does.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sendgrid.helpers.eventwebhook import EventWebhook

from relay.emulator import Emulator
from relay.emulator.events import BATCH_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, fate

from . import corpus
from .conftest import MakeProvider
from .corpus import outbound


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A loopback HTTP/1.1 endpoint that keeps each POST and answers ``status``."""

    posts: list[Post] = field(default_factory=list)
    status: int = 200
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.posts.append(Post(path, headers, body))
            reply = f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            writer.write(reply.encode())
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    try:
        yield found
    finally:
        server.close()
        await server.wait_closed()


RCPTS = [
    ("ok@example.org", "to"),
    ("bounce+1@example.org", "cc"),
    ("softbounce+1@example.org", "bcc"),
    ("complaint+1@example.org", "bcc"),
    ("unsubscribe+1@example.org", "bcc"),
]


def with_ids(message: Any) -> Any:
    ids = {a: n for n, (a, _) in enumerate(message.recipients, start=100)}
    return dataclasses.replace(message, recipient_ids=ids)


def verified(emulator: Emulator, post: Post) -> bool:
    helper = EventWebhook()
    key = helper.convert_public_key_to_ecdsa(emulator.sendgrid_events_key)
    return bool(
        helper.verify_signature(
            post.body.decode(),
            post.headers[SIGNATURE_HEADER.lower()],
            post.headers[TIMESTAMP_HEADER.lower()],
            key,
        )
    )


def test_fate_by_local_part() -> None:
    assert [fate(a) for a, _ in RCPTS] == [
        "delivered",
        "bounce",
        "softbounce",
        "complaint",
        "unsubscribe",
    ]
    assert fate("bounce@example.org") == "bounce"
    assert fate("bouncer@example.org") == "delivered"


async def test_sendgrid_api_events_are_signed_and_carry_the_custom_args(
    emulator: Emulator, make_provider: MakeProvider, receiver: Receiver
) -> None:
    emulator.set_events_url("sendgrid", receiver.url("/hooks/sg"))
    api = make_provider("sendgrid").primary.provider
    await api.send(with_ids(outbound(corpus.plain(X_Relay_Category="news"), RCPTS)))
    await emulator.flush_events()
    [post] = receiver.posts
    assert post.path == "/hooks/sg" and verified(emulator, post)
    events = post.json()
    got = [(e["email"], e["event"], e.get("type")) for e in events]
    assert got == [
        ("ok@example.org", "delivered", None),
        ("bounce+1@example.org", "bounce", "bounce"),
        ("softbounce+1@example.org", "bounce", "blocked"),
        ("complaint+1@example.org", "delivered", None),
        ("complaint+1@example.org", "spamreport", None),
        ("unsubscribe+1@example.org", "delivered", None),
        ("unsubscribe+1@example.org", "unsubscribe", None),
    ]
    assert len({e["sg_event_id"] for e in events}) == len(events)
    assert all(e["relay_message_id"] == "Q1" and e["category"] == ["news"] for e in events)
    # One personalization holds them all (so the To and Cc lines stay as
    # written): no recipient id, the receiver matches the address in the message.
    assert not any("relay_recipient_id" in e for e in events)
    assert all(isinstance(e["timestamp"], int) and e["sg_message_id"] for e in events)
    [accepted] = emulator.sendgrid.received
    assert all(e["sg_message_id"].startswith(accepted.message_id or "-") for e in events)


async def test_a_tampered_sendgrid_post_does_not_verify(
    emulator: Emulator, make_provider: MakeProvider, receiver: Receiver
) -> None:
    emulator.set_events_url("sendgrid", receiver.url("/sg"))
    await make_provider("sendgrid").primary.provider.send(outbound(corpus.plain()))
    await emulator.flush_events()
    [post] = receiver.posts
    assert verified(emulator, post)
    forged = dataclasses.replace(post, body=post.body.replace(b"delivered", b"bounce"))
    assert not verified(emulator, forged)
    stale = dict(post.headers, **{TIMESTAMP_HEADER.lower(): "1000"})
    assert not verified(emulator, dataclasses.replace(post, headers=stale))


async def test_sparkpost_api_batches_with_basic_auth_batch_id_and_rcpt_meta(
    emulator: Emulator, make_provider: MakeProvider, receiver: Receiver
) -> None:
    emulator.set_events_url("sparkpost", receiver.url("/hooks/sp"), ("hook", "s3cret"))
    api = make_provider("sparkpost").primary.provider
    await api.send(with_ids(outbound(corpus.plain(), RCPTS, campaign="spring", queue_id="Q2")))
    await api.send(outbound(corpus.plain(), queue_id="Q3"))
    await emulator.flush_events()
    first, second = receiver.posts
    expected = "Basic " + base64.b64encode(b"hook:s3cret").decode()
    assert first.headers["authorization"] == expected
    assert first.headers[BATCH_HEADER.lower()] != second.headers[BATCH_HEADER.lower()]
    events = [(kind, e) for item in first.json() for kind, e in item["msys"].items()]
    got = [(kind, e["rcpt_to"], e["type"], e.get("bounce_class")) for kind, e in events]
    assert got == [
        ("message_event", "ok@example.org", "delivery", None),
        ("message_event", "bounce+1@example.org", "bounce", "10"),
        ("message_event", "softbounce+1@example.org", "bounce", "22"),
        ("message_event", "complaint+1@example.org", "delivery", None),
        ("message_event", "complaint+1@example.org", "spam_complaint", None),
        ("message_event", "unsubscribe+1@example.org", "delivery", None),
        ("unsubscribe_event", "unsubscribe+1@example.org", "list_unsubscribe", None),
    ]
    metas = [e["rcpt_meta"] for _, e in events]
    assert metas[0] == {"relay_message_id": "Q2", "relay_recipient_id": "100"}
    assert metas[2] == {"relay_message_id": "Q2", "relay_recipient_id": "102"}
    assert len({e["event_id"] for _, e in events}) == len(events)
    assert all(e["campaign_id"] == "spring" and e["timestamp"].isdigit() for _, e in events)
    [(_, only)] = [(k, e) for item in second.json() for k, e in item["msys"].items()]
    assert only["rcpt_meta"] == {"relay_message_id": "Q3"}


async def test_smtp_legs_post_events_from_their_api_headers(
    emulator: Emulator, make_provider: MakeProvider, receiver: Receiver
) -> None:
    emulator.set_events_url("sendgrid", receiver.url("/sg"))
    emulator.set_events_url("sparkpost", receiver.url("/sp"), ("u", "p"))
    for kind in ("sendgrid", "sparkpost"):
        chain = make_provider(kind)
        assert chain.fallback is not None
        rcpts = [("bounce+2@example.org", "to")]
        await chain.fallback.provider.send(with_ids(outbound(corpus.plain(), rcpts)))
    await emulator.flush_events()
    sg, sp = sorted(receiver.posts, key=lambda p: p.path)
    assert verified(emulator, sg)
    [event] = sg.json()
    assert event["event"] == "bounce" and event["email"] == "bounce+2@example.org"
    assert (event["relay_message_id"], event["relay_recipient_id"]) == ("Q1", "100")
    [item] = sp.json()
    bounce = item["msys"]["message_event"]
    assert bounce["type"] == "bounce" and bounce["bounce_class"] == "10"
    assert bounce["rcpt_meta"] == {"relay_message_id": "Q1", "relay_recipient_id": "100"}


async def test_no_events_without_a_url_and_a_dead_receiver_fails_nothing(
    emulator: Emulator, make_provider: MakeProvider, receiver: Receiver
) -> None:
    api = make_provider("sendgrid").primary.provider
    await api.send(outbound(corpus.plain()))
    await emulator.flush_events()
    assert emulator.events.posted == []
    emulator.set_events_url("sendgrid", "http://127.0.0.1:9/nothing-listens")
    receipt = await api.send(outbound(corpus.plain()))
    assert receipt.transport == "api"
    await emulator.flush_events()
    [posted] = emulator.events.posted
    assert posted.status == 0 and posted.error


async def relay_emulate(*args: str) -> asyncio.subprocess.Process:
    code = "import sys; from relay.emulator import main; sys.exit(main(sys.argv[1:]))"
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-c",
        code,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_relay_emulate_posts_events_where_told(receiver: Receiver) -> None:
    proc = await relay_emulate(
        "--api-key",
        "k",
        "--sendgrid-events-url",
        receiver.url("/sg"),
        "--sparkpost-events-url",
        receiver.url("/sp"),
        "--sparkpost-events-auth",
        "hook:pw",
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or "verification key" not in lines[-1]:
        lines.append((await asyncio.wait_for(proc.stdout.readline(), 20)).decode())
    assert f"sendgrid events -> {receiver.url('/sg')}\n" in lines
    assert f"sparkpost events -> {receiver.url('/sp')}\n" in lines
    sparkpost_url = lines[1].split()[-1]
    transmission = {
        "recipients": [{"address": {"email": "a@example.org"}}],
        "content": {"email_rfc822": "From: s@example.com\r\nSubject: x\r\n\r\nhi\r\n"},
        "metadata": {"relay_message_id": "Q1"},
    }
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(
            sparkpost_url + "/api/v1/transmissions",
            json=transmission,
            headers={"Authorization": "k"},
        )
    assert response.status_code == 200
    proc.send_signal(signal.SIGTERM)  # the emulator waits for its posts as it closes
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
    [post] = receiver.posts
    assert post.path == "/sp"
    assert post.headers["authorization"] == "Basic " + base64.b64encode(b"hook:pw").decode()


async def test_relay_emulate_refuses_auth_without_a_password() -> None:
    proc = await relay_emulate("--sparkpost-events-auth", "justuser")
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2 and b"USER:PASS" in stderr
