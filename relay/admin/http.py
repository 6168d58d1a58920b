"""The admin listener: /metrics, /healthz, /readyz, the admin API under /api/v1, and
the web console (``relay.console``) at / for every other path.

Served by uvicorn inside the relay's own event loop; the relay owns the
signals, so uvicorn's signal capture is turned off.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Awaitable, Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _Mount(Mount):
    """A mount whose path may hold any character. Starlette matches the rest of
    the path with ``.*``, which stops at a newline: ``/api/v1/accounts/a%0Ab``
    would miss the API, and its JSON errors, for the root's plain-text 404."""

    def __init__(self, path: str, app: ASGIApp) -> None:
        super().__init__(path, app=app)
        self.path_regex = re.compile(self.path_regex.pattern, re.DOTALL)


def make_app(
    registry: Callable[[], CollectorRegistry],
    ready: Callable[[], Awaitable[dict[str, bool]]],
    api: ASGIApp | None = None,
    console: ASGIApp | None = None,
) -> Starlette:
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    routes: list[BaseRoute] = [
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]
    if api is not None:
        routes.append(_Mount("/api/v1", api))
    if console is not None:  # last: everything the routes above do not match
        routes.append(Mount("/", app=console))
    return Starlette(routes=routes)


class AdminServer:
    def __init__(self, app: Starlette, sock: socket.socket) -> None:
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = _Server(config)
        self._sock = sock

    async def serve(self) -> None:
        await self._server.serve(sockets=[self._sock])

    def stop(self) -> None:
        self._server.should_exit = True
