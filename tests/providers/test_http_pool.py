"""The shared HTTP client of the API legs (relay.providers.http.ShardedTransport,
registry.make_http_client): small pools, each request on the least busy, every
connection kept and reused, a connection the provider closed never reused; the
pool as large as the deliveries Pace may put in flight; the request as the
client would have sent it. Real HTTP to the emulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpcore
import httpx
import pytest
import trustme
import uvloop
from sqlalchemy import Engine

from relay.core.errors import TransientError
from relay.core.message import OutboundMessage
from relay.core.settings import Settings
from relay.emulator import Emulator, serve_emulator
from relay.providers import sendgrid_json, sparkpost
from relay.providers.aio import AsyncioBackend
from relay.providers.chain import OutcomeUnknown
from relay.providers.http import SHARD_CONNECTIONS, ShardedTransport
from relay.providers.registry import build_provider, make_http_client
from relay.server import setup_logging
from tests.support import RelayThread

from . import corpus
from .conftest import API_KEY, MakeProvider
from .corpus import outbound


def message(n: int) -> OutboundMessage:
    return outbound(corpus.plain(), queue_id=f"Q{n}")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    http = make_http_client(max_connections=32, trust_env=False)
    try:
        yield http
    finally:
        await http.aclose()


def transport_of(http: httpx.AsyncClient) -> ShardedTransport:
    transport = http._transport
    assert isinstance(transport, ShardedTransport)
    return transport


async def send_wave(emulator: Emulator, http: httpx.AsyncClient, start: int, count: int) -> None:
    chain = build_provider(
        "sendgrid", "sg", {"api_url": emulator.sendgrid_url}, {"api_key": API_KEY}, http=http
    )
    receipts = await asyncio.gather(*(chain.send(message(start + n)) for n in range(count)))
    assert all(r.transport == "api" for r in receipts)


def test_the_pools_add_up_to_the_connections_asked_for() -> None:
    for asked in (1, 7, 8, 9, 100, 256, 1000):
        transport = ShardedTransport(asked)
        assert asked <= transport.max_connections < asked + len(transport.shards)
        sizes = [s._pool._max_connections for s in transport.shards]
        assert max(sizes) <= SHARD_CONNECTIONS and len(set(sizes)) == 1
        assert transport.busy == [0] * len(transport.shards)


async def test_requests_spread_over_the_pools_and_every_connection_is_reused(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    # Each request is held 100 ms, so 32 at once need 32 connections: 4 pools of 8.
    emulator.sendgrid.latency(0.1)
    transport = transport_of(client)
    assert len(transport.shards) == 4
    await send_wave(emulator, client, 0, 32)
    assert emulator.sendgrid.max_in_flight == 32  # none waited for a connection
    assert emulator.sendgrid.connections() == 32
    assert [len(s._pool.connections) for s in transport.shards] == [8, 8, 8, 8]
    assert transport.busy == [0, 0, 0, 0]  # every slot given back
    await send_wave(emulator, client, 100, 32)
    assert len(emulator.sendgrid.received) == 64
    assert emulator.sendgrid.connections() == 32  # the second wave opened none


async def test_light_load_reuses_one_connection(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    for n in range(5):
        await send_wave(emulator, client, n, 1)
    assert emulator.sendgrid.connections() == 1
    transport = transport_of(client)
    assert [len(s._pool.connections) for s in transport.shards] == [1, 0, 0, 0]


async def test_a_connection_the_provider_closed_is_not_reused(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    await send_wave(emulator, client, 0, 4)
    assert emulator.sendgrid.connections() <= 4
    before = emulator.sendgrid.connections()
    assert emulator.drop_http_connections() > 0
    for _ in range(100):  # bounded: the server's side closes on its next loop turn
        if emulator.open_http_connections() == 0:
            break
        await asyncio.sleep(0.01)
    assert emulator.open_http_connections() == 0
    # The client was not told; a reused dead connection would fail the send
    # (OutcomeUnknown). Each goes on a new connection instead.
    await send_wave(emulator, client, 10, 4)
    assert len(emulator.sendgrid.received) == 8
    assert all(seen.status == 202 for seen in emulator.sendgrid.received)
    assert emulator.sendgrid.connections() > before


async def test_the_request_carries_the_clients_headers_and_ours(emulator: Emulator) -> None:
    http = make_http_client(trust_env=False)
    http.headers["User-Agent"] = "relay-test"
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, headers={"X-Message-Id": "m1"})

    # The API leg must send what AsyncClient would: its defaults, our key, the body.
    http._transport = httpx.MockTransport(record)
    chain = build_provider(
        "sendgrid", "sg", {"api_url": "https://api.example.test"}, {"api_key": API_KEY}, http=http
    )
    receipt = await chain.send(message(1))
    await http.aclose()
    assert receipt.provider_message_id == "m1"
    request = seen[0]
    assert str(request.url) == "https://api.example.test/v3/mail/send"
    assert request.headers["user-agent"] == "relay-test"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers.get_list("content-type") == ["application/json"]
    assert request.headers["host"] == "api.example.test"
    assert int(request.headers["content-length"]) == len(request.content)
    assert request.extensions["timeout"]["read"] == 30.0
    assert json.loads(request.content)["subject"] == "Hello"


def test_the_pool_follows_provider_concurrency_max(settings: Settings, engine: Engine) -> None:
    # Pace may grow a provider's deliveries to provider_concurrency_max: as many
    # connections, or the extra deliveries would wait for one on our side.
    queue = replace(settings.queue, concurrency=10, provider_concurrency_max=300)
    thread = RelayThread(replace(settings, queue=queue), engine).start()
    try:
        assert thread.relay is not None
        transport = transport_of(thread.relay.pool._http)
        assert transport.max_connections >= 300
        assert all(s._pool._max_connections <= SHARD_CONNECTIONS for s in transport.shards)
    finally:
        thread.stop()


async def test_httpx_logs_no_line_per_request_at_info(
    emulator: Emulator, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    root, httpx_log = logging.getLogger(), logging.getLogger("httpx")
    saved = (root.handlers[:], root.level, httpx_log.level)
    try:
        for level, shown in (("INFO", False), ("DEBUG", True)):
            httpx_log.setLevel(logging.NOTSET)
            setup_logging(replace(settings, server=replace(settings.server, log_level=level)))
            async with make_http_client(trust_env=False) as http:
                await send_wave(emulator, http, 0, 1)  # the API leg: never a line of httpx's
                await http.get(emulator.sendgrid_url + "/v3/scopes")  # a plain client call
            err = capsys.readouterr().err
            assert "HTTP Request: POST" not in err
            assert ("HTTP Request: GET" in err) is shown, (level, err)
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        httpx_log.setLevel(saved[2])


RICH: dict[str, Any] = {
    "attachment": corpus.with_attachment,
    "inline_image": corpus.inline_image,
    "international": corpus.international,
    "smtputf8": corpus.smtputf8,
    "nested": corpus.nested,
}


@pytest.mark.parametrize("name", sorted(RICH))
def test_the_orjson_bodies_say_what_json_dumps_said(name: str) -> None:
    msg = RICH[name]()
    if not isinstance(msg, bytes):
        msg["X-Custom"] = 'Ünïcode välue 😀 ☃ and "quotes" \\ and \t tab'
        msg["X-Relay-Category"] = "news, ünï"
    out = outbound(msg, [("to@example.org", "to"), ("cc@example.org", "cc")], ip_pool="pool")
    for payload in sendgrid_json.convert(out):
        old = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        assert json.loads(sendgrid_json.encode(payload)) == json.loads(old) == payload


async def test_sparkposts_body_is_the_transmission(
    emulator: Emulator, make_provider: MakeProvider
) -> None:
    msg = corpus.international()
    msg["X-Custom"] = 'Ünïcode välue 😀 ☃ and "quotes"'
    out = outbound(msg, [("to@example.org", "to")], ip_pool="pool", campaign="spring")
    receipt = await make_provider("sparkpost").send(out)
    assert receipt.transport == "api"
    assert emulator.sparkpost.received[-1].body == sparkpost.transmission(out)


# -- the network backend (relay.providers.aio), on both event loops -----------------

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}  # tests run on asyncio, the relay on uvloop


async def _backend_cases() -> None:
    emu = await serve_emulator(api_key=API_KEY)
    http = make_http_client(max_connections=16, trust_env=False)
    try:
        chain = build_provider(
            "sendgrid",
            "sg",
            {"api_url": emu.sendgrid_url, "timeout": 0.5},
            {"api_key": API_KEY},
            http=http,
        )
        api = chain.primary.provider
        assert (await api.send(message(1))).transport == "api"
        # No answer in time once the request was written: the outcome is unknown.
        emu.sendgrid.stall(5)
        with pytest.raises(OutcomeUnknown, match="no answer within"):
            await api.send(message(2))
        emu.sendgrid.wake()
        # The server closed the idle connections: the next request opens a new one.
        emu.drop_http_connections()
        for _ in range(100):
            if emu.open_http_connections() == 0:
                break
            await asyncio.sleep(0.01)
        assert (await api.send(message(3))).transport == "api"
        # Nothing listens: never sent, another transport may carry it.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed = sock.getsockname()[1]
        gone = build_provider(
            "sendgrid", "x", {"api_url": f"http://127.0.0.1:{closed}"}, {"api_key": API_KEY}
        )
        with pytest.raises(TransientError, match="unreachable: ConnectError"):
            await gone.primary.provider.send(message(4))
        await gone.aclose()
    finally:
        await http.aclose()
        await emu.aclose()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_timeouts_closed_connections_and_refusals_keep_their_meaning(loop: str) -> None:
    LOOPS[loop](_backend_cases())


async def _tls_cases(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    peers: list[Any] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        while True:  # keep-alive: one request after another
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nX-Message-Id: tls1\r\n\r\n"
            )
            await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    trusted = make_http_client(verify=ca_context(ca), trust_env=False)
    untrusted = make_http_client(trust_env=False)  # the system's CAs: not ours
    try:
        for n in range(3):
            chain = build_provider(
                "sendgrid", "sg", {"api_url": url}, {"api_key": API_KEY}, http=trusted
            )
            receipt = await chain.primary.provider.send(message(n))
            assert receipt.provider_message_id == "tls1"
        assert len(peers) == 1  # one TLS connection, reused
        chain = build_provider(
            "sendgrid", "sg", {"api_url": url}, {"api_key": API_KEY}, http=untrusted
        )
        with pytest.raises(TransientError, match="ConnectError"):
            await chain.primary.provider.send(message(9))
    finally:
        await trusted.aclose()
        await untrusted.aclose()
        server.close()


def ca_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_tls_to_the_provider_is_verified_and_its_connection_reused(loop: str) -> None:
    LOOPS[loop](_tls_cases(trustme.CA()))


async def test_the_egress_address_is_the_source_of_the_connection(emulator: Emulator) -> None:
    # 127.0.0.2 is loopback too (127/8): bound as the provider's static egress.
    options = {"api_url": emulator.sendgrid_url, "source_address": "127.0.0.2"}
    chain = build_provider("sendgrid", "sg", options, {"api_key": API_KEY})
    try:
        await chain.primary.provider.send(message(1))
    finally:
        await chain.aclose()
    assert emulator.sendgrid.received[-1].peer.startswith("127.0.0.2:")


async def test_a_write_on_a_connection_the_server_closed_goes_to_another(
    emulator: Emulator,
) -> None:
    # The pool chose the connection, then the server closed it (its keep-alive
    # ran out) before the request was written: nothing left, so the pool must
    # send it on another connection rather than report an answer lost.
    port = int(emulator.sendgrid_url.rsplit(":", 1)[1])
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
    for _ in range(100):  # bounded: until the server has the connection
        if emulator.open_http_connections():
            break
        await asyncio.sleep(0.01)
    emulator.drop_http_connections()
    for _ in range(100):
        if stream.get_extra_info("is_readable") and emulator.open_http_connections() == 0:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(httpcore.ConnectionNotAvailable):
        await stream.write(b"POST /v3/mail/send HTTP/1.1\r\n", timeout=5)
    await stream.aclose()
