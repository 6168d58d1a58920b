"""httpcore's network backend on the event loop's own transports, for the API legs.

httpcore's default backend on asyncio is anyio: every read and write opens a
cancel scope (``fail_after``), looks up the current task and checkpoints,
and TLS runs through ``ssl.MemoryBIO`` in Python (anyio's ``TLSStream``).
With httpx's client layers gone (:meth:`relay.providers.http.HttpApi._send`),
anyio was the largest part of what is left of a request: 11% of the relay's
CPU in bench/deliver.py's profile. Here a stream is a plain
``asyncio.Protocol`` over the loop's transport (uvloop's, TLS included, in C):
a read returns what the transport has buffered or waits for it; a write hands
the bytes to the transport and waits only while it asks us to (flow control).

What httpcore expects of a backend is kept: its exception types (a connect
failure or TLS refusal ``ConnectError``, a timeout ``ConnectTimeout`` /
``ReadTimeout`` / ``WriteTimeout``, a broken connection ``ReadError`` /
``WriteError``), so httpx's mapping and ours (``OutcomeUnknown`` once the
request was written) are unchanged; a write on a connection the server has
closed already says ``ConnectionNotAvailable``, and the pool sends the request
again on another (the request never left whole, see ``AsyncioStream.write``);
``local_address`` binds the egress address; ``is_readable`` says whether an
idle pooled connection was closed by the server (or sent something unasked),
so the pool never reuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar, cast

import httpcore

T = TypeVar("T")

READ_LIMIT = 256 * 1024  # bytes buffered before the transport stops reading


async def _within(
    awaitable: Awaitable[T],
    seconds: float | None,
    timeout_as: type[Exception],
    error_as: type[Exception],
) -> T:
    """``awaitable`` within ``seconds``, its failures in httpcore's words."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError as exc:
        raise timeout_as(str(exc) or "timed out") from exc
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        raise error_as(str(exc) or type(exc).__name__) from exc


def _socket_readable(sock: Any) -> bool:
    """Whether ``sock`` has bytes (or its end) to read now; a socket gone: yes."""
    try:
        fd = sock.fileno() if sock is not None else -1
    except (OSError, ValueError):
        return True
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; wakes the one reader or writer waiting."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self.paused_writing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not registered as an asyncio.Transport: no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_LIMIT and self.transport is not None:
            self.transport.pause_reading()
            self._paused_reading = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close the transport: HTTP/1.1 has nothing more to say on it

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake_reader()
        self.paused_writing = False
        self._wake(self._drain_waiter, exc)
        self._drain_waiter = None

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._wake(self._drain_waiter, None)
        self._drain_waiter = None

    def _wake_reader(self) -> None:
        self._wake(self._read_waiter, None)
        self._read_waiter = None

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None, exc: BaseException | None) -> None:
        if waiter is not None and not waiter.done():
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(None)

    async def read(self, max_bytes: int) -> bytes:
        while not self.buffer:
            if self.error is not None:
                raise ConnectionResetError(str(self.error) or "connection lost")
            if self.eof:
                return b""
            self._read_waiter = asyncio.get_running_loop().create_future()
            await self._read_waiter
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._paused_reading and len(self.buffer) <= READ_LIMIT // 2:
            self._paused_reading = False
            if self.transport is not None:
                self.transport.resume_reading()
        return data

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing() or self.error is not None:
            raise ConnectionResetError("connection lost")
        if self.paused_writing:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection: the loop's transport and our protocol."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        protocol = self._protocol
        if protocol.buffer:  # already here: no timer, no wait
            return await protocol.read(max_bytes)
        return await _within(
            protocol.read(max_bytes), timeout, httpcore.ReadTimeout, httpcore.ReadError
        )

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        protocol = self._protocol
        if self._transport.is_closing() or protocol.error is not None:
            # The server closed the connection between the pool's choice and this
            # write (an idle one past its keep-alive): nothing more of the request
            # goes out, so the server never had it whole and cannot have acted
            # on it. httpcore's pool then sends it on another connection, as for
            # one that stopped being available; a WriteError would be swallowed
            # and the read would fail as an answer lost (OutcomeUnknown).
            raise httpcore.ConnectionNotAvailable()
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc
        if protocol.paused_writing:  # the transport's buffer is full: wait for room
            await _within(protocol.drain(), timeout, httpcore.WriteTimeout, httpcore.WriteError)

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        handshake = loop.start_tls(
            self._transport,
            self._protocol,
            ssl_context,
            server_hostname=server_hostname,
            ssl_handshake_timeout=timeout,
        )
        try:
            transport = await _within(
                handshake, timeout, httpcore.ConnectTimeout, httpcore.ConnectError
            )
        except BaseException:
            self._transport.close()
            raise
        if transport is None:  # pragma: no cover - the connection went away meanwhile
            raise httpcore.ConnectError("connection lost during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle connection with something to read was closed by the server
            # (or has a stray answer): httpcore's pool must not reuse it. What the
            # loop has not read yet counts too: a FIN that arrived this turn.
            protocol = self._protocol
            return bool(
                protocol.eof
                or protocol.buffer
                or protocol.error is not None
                or self._transport.is_closing()
                or _socket_readable(self._transport.get_extra_info("socket"))
            )
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections through ``loop.create_connection`` (see the module)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(
            _Protocol,
            host,
            port,
            # uvloop has no happy_eyeballs_delay: addresses are tried in turn.
            local_addr=(local_address, 0) if local_address else None,
        )
        transport, protocol = await _within(
            connecting, timeout, httpcore.ConnectTimeout, httpcore.ConnectError
        )
        stream = AsyncioStream(transport, protocol)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        connecting = loop.create_unix_connection(_Protocol, path)
        transport, protocol = await _within(
            connecting, timeout, httpcore.ConnectTimeout, httpcore.ConnectError
        )
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
