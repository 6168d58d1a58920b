"""The web console: the operator's and tenants' screens, on the admin listener at ``/``.

Rendered on the server (Jinja2), plain HTML forms that work without
JavaScript (one small script adds the copy buttons), no front-end build and
nothing fetched from elsewhere: the pages work offline. Every action is a call
into ``relay.service`` as the signed-in user's actor, the same functions the
command line and the admin API call; no rule lives in a template.

Modules: ``web`` (sessions, CSRF, lock-out, rendering, errors) and ``screens``
(one handler per screen and action). ``make_console`` builds the ASGI app
that ``relay.app`` mounts last on the admin listener (``/api/v1``,
``/metrics`` and the health checks are matched first).
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from relay.console import screens
from relay.console.web import ConsoleContext, Headers, not_found

__all__ = ["ConsoleContext", "make_console"]

STATIC = Path(__file__).parent / "static"


def make_console(ctx: ConsoleContext) -> Starlette:
    """The console as an ASGI app, to mount at ``/``."""
    routes = [*screens.ROUTES, Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Headers)],
        exception_handlers={404: not_found},
    )
    app.state.ctx = ctx
    return app
