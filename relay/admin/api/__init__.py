"""The admin API: JSON under /api/v1 on the admin listener, with its OpenAPI document.

FastAPI builds the document (``/api/v1/openapi.json``) and the docs pages
(Swagger UI at ``/api/v1/docs``, ReDoc at ``/api/v1/redoc``) from the routes
and their models. The pages' scripts and styles are served by Relay itself
(fastapi-offline ships them), not from a CDN: the docs work on a host
without internet. Routes are synchronous:
FastAPI runs them in its thread pool, so the service layer's blocking
database calls never stall the relay's event loop, which also serves SMTP.

Modules: ``auth`` (tokens, rate limit), ``errors`` (one error shape),
``schemas`` (bodies), and one router per resource group.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

from relay import __version__
from relay.admin.api import accounts, errors, limits, providers, queue, reports, suppressions
from relay.admin.api.context import ApiContext
from relay.service.scope import Actor, Scope, acting

DESCRIPTION = """\
The operator's verbs of the `relay` command line, over HTTP.

**Tokens.** Every route but the health checks takes `Authorization: Bearer
<token>` (`relay token create`). An operator token sees every account; an
agency's token its own account and its sub-accounts; a sub-account's token
only itself. Anything else answers 404, exactly as if it did not exist.

**Errors.** `{"error": {"code", "message", "field"}}`: 422 malformed or
invalid input (`field` names it), 404 not found (or not yours), 409 a
conflict, 401 no valid token, 403 operator only, 429 too many failed token
checks from your address (see `Retry-After`).
"""


# Where the docs pages' own scripts, styles and icon are served, under /api/v1.
DOCS_ASSETS = "/docs/assets"


def make_api(ctx: ApiContext) -> ASGIApp:
    """The API as an ASGI app, to mount at /api/v1."""
    app = build_app()
    app.state.ctx = ctx
    return _Contained(app)


def build_app() -> FastAPI:
    """Routes, models and error handlers: everything but the context."""
    app = FastAPIOffline(
        title="Relay admin API",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
        static_url=DOCS_ASSETS,
    )
    errors.install(app)
    routers = (
        accounts.router,
        limits.router,
        providers.router,
        queue.router,
        reports.router,
        suppressions.router,
        reports.health,
    )
    for router in routers:
        app.include_router(router)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, without a running relay (as served, less ``servers``)."""
    return build_app().openapi()


# Who a request is until its token says otherwise: sees nothing, may do nothing.
ANONYMOUS = Actor("anonymous", "api", Scope(frozenset()))


class _Contained:
    """The API's outermost layer, for two things a route must not be able to forget.

    Every request starts as ``ANONYMOUS``: a service call that is not made
    through ``Caller.run`` finds no account rather than acting as the
    operator (the context variable's default, meant for local calls).

    Starlette answers an unexpected error with our 500 body and then re-raises
    it for the server to log; it is logged already (``errors._unexpected``), so
    it stops here instead of reaching uvicorn a second time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        with acting(ANONYMOUS):
            try:
                await self.app(scope, receive, send)
            except Exception:
                if scope["type"] != "http":
                    raise
