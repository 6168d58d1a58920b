"""What SendGrid's and SparkPost's API legs share: the pooled client, the key,
and the translation of httpx's exceptions at our boundary (httpx's own
``map_httpcore_exceptions`` habit, one level up).

The translation keeps apart what the provider provably did not get from what
it may have got. A failure to connect, a TLS handshake refused, a pool or
write timeout: the request never reached the provider whole, so another
transport may carry the message now (``TransientError``). A read timeout, a
connection reset or a broken response once the request was written: the
provider may have taken the message and only its answer was lost
(``OutcomeUnknown``); sending it by SMTP now could deliver it twice.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpcore
import httpx

from relay.core.errors import TransientError
from relay.core.settings import Secret
from relay.providers.aio import AsyncioBackend
from relay.providers.chain import OutcomeUnknown

SHARD_CONNECTIONS = 8  # connections per sub-pool of ShardedTransport


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small connection pools behind one transport, each request on the least busy.

    httpcore's pool looks at every pooled connection on each request and each
    response (``has_expired``: a readability poll of its socket; ``is_idle``
    counted once per idle connection, so quadratic), all on the event loop. A
    provider answering in 200 ms needs 100 or more connections for 500 msg/s
    (Little's law), and one pool of 256 made that scan a third of the relay's
    CPU (bench/deliver.py, 200 ms, py-spy). Pools of :data:`SHARD_CONNECTIONS`
    keep each scan short, with the same total. A request goes to the pool
    with the fewest requests in flight, so none waits for a connection while
    another pool has room, and under light load the first pool's connections
    are reused and the others stay empty.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        verify: bool | ssl.SSLContext = True,
        local_address: str | None = None,
        keepalive_expiry: float = 30.0,
        per_shard: int = SHARD_CONNECTIONS,
    ) -> None:
        count = max(1, math.ceil(max_connections / max(1, per_shard)))
        size = math.ceil(max_connections / count)
        # Every connection kept alive: one closed after its request is a new TCP
        # (and TLS) handshake for the next, while as many are in flight again.
        limits = httpx.Limits(
            max_connections=size, max_keepalive_connections=size, keepalive_expiry=keepalive_expiry
        )
        # One TLS context for all: loading the trust store once, not once per pool.
        context = (
            verify
            if isinstance(verify, ssl.SSLContext)
            else httpx.create_ssl_context(verify=verify)
        )
        self.shards = [
            httpx.AsyncHTTPTransport(verify=context, local_address=local_address, limits=limits)
            for _ in range(count)
        ]
        backend = AsyncioBackend()
        for shard in self.shards:
            # The same pool httpx made, on the loop's own transports (relay.providers.aio).
            shard._pool = httpcore.AsyncConnectionPool(
                ssl_context=context,
                max_connections=size,
                max_keepalive_connections=size,
                keepalive_expiry=keepalive_expiry,
                local_address=local_address,
                network_backend=backend,
            )
        self.max_connections = size * count
        self.busy = [0] * count  # requests in flight per pool, until their response is closed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self.busy
        index = busy.index(min(busy))
        busy[index] += 1
        try:
            response = await self.shards[index].handle_async_request(request)
        except BaseException:
            busy[index] -= 1
            raise
        response.stream = _Counted(response.stream, busy, index)
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


class _Counted(httpx.AsyncByteStream):
    """A response body that gives its pool's slot back when closed (once)."""

    __slots__ = ("_busy", "_index", "_open", "_stream")

    def __init__(self, stream: Any, busy: list[int], index: int) -> None:
        self._stream = stream
        self._busy = busy
        self._index = index
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._busy[self._index] -= 1
        await self._stream.aclose()


class HttpApi:
    """Base of an API leg. Subclasses set ``label`` and ``_headers``."""

    label = "API"
    default_url = ""

    def __init__(
        self,
        name: str,
        api_key: Secret,
        *,
        http: httpx.AsyncClient,
        api_url: str | None = None,
        timeout: float = 30.0,
        own_http: bool = False,
        options: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Secret] | None = None,
    ) -> None:
        # options and secrets: the whole row, for kinds whose API needs more
        # than a key (Mailgun's sending domain, SES's region and key pair).
        self.options: Mapping[str, Any] = options or {}
        self.secrets: Mapping[str, Secret] = secrets or {}
        self.name = name
        self.api_url = (api_url or self.default_url).rstrip("/")
        self.timeout = timeout
        self._key = api_key
        self._http = http
        self._own_http = own_http  # a client of its own (egress address, TLS options)
        # What AsyncClient.request would add to each request (see _send).
        self._urls: dict[str, httpx.URL] = {}
        self._defaults = [(k.lower(), v) for k, v in http.headers.multi_items()]
        self._timeout = httpx.Timeout(timeout).as_dict()

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.name!r}, api_url={self.api_url!r})"

    def _headers(self) -> dict[str, str]:
        """Headers of every request (the key); a leg that signs each request adds its own."""
        return {}

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request; a timeout or a connection failure is transient, in our words.

        ``headers`` add to (or replace) :meth:`_headers` for this request (a
        multipart body's boundary, SES's signature). Once the request is written, no answer is
        ``OutcomeUnknown``, not a refusal: the provider may have the message.
        """
        try:
            return await self._send(method, path, body, headers)
        except httpx.ReadTimeout as exc:
            raise OutcomeUnknown(
                f"{self.label} sent no answer within {self.timeout:g} s", transport="api"
            ) from exc
        except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
            raise OutcomeUnknown(
                f"{self.label} connection lost awaiting the answer: {type(exc).__name__}",
                transport="api",
            ) from exc
        except httpx.TimeoutException as exc:  # connect, write or pool: never sent whole
            raise TransientError(
                f"{self.label} timed out after {self.timeout:g} s", transport="api"
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise TransientError(
                f"{self.label} unreachable: {type(exc).__name__}: {exc}", transport="api"
            ) from exc

    async def _send(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> httpx.Response:
        """The request straight to the client's transport, then its whole body.

        ``AsyncClient.send`` wraps each request in layers we never use here
        (auth flows, redirects, cookies, event hooks) and merges headers through
        several ``Headers`` copies: a fifth of the relay's CPU per delivery in
        bench/deliver.py's profile, about 0.25 ms a message. What they did that
        matters is done here: the client's default headers (ours win, whatever
        their case), the timeout, and the transport the client would pick for
        the URL (a proxy mount from the environment included).
        """
        client = self._http
        if client.is_closed:  # as AsyncClient.send says it
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self.api_url + path)
            if len(self._urls) < 32:  # a leg's few paths, parsed once
                self._urls[path] = url
        own = {**self._headers(), **(headers or {})}
        names = {name.lower() for name in own}
        request = httpx.Request(
            method,
            url,
            content=body,
            headers=[*(h for h in self._defaults if h[0] not in names), *own.items()],
            extensions={"timeout": self._timeout},
        )
        # The client's own choice of transport (httpx has no public name for it).
        response = await client._transport_for_url(url).handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()
