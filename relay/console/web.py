"""The console's plumbing: who is signed in, CSRF, lock-out, rendering, errors.

Sessions: a random cookie (``relay_session``), HttpOnly, SameSite=Strict,
Path=/, Secure when ``[admin] secure_cookie`` says (by default when the request
came over HTTPS). Its SHA-256 is the session row's key
(``relay.service.console_users``). CSRF: each session has its own token, put in
every form as a hidden ``csrf`` field and compared on every POST (OWASP's
synchroniser token pattern); the sign-in form, before any session, uses a
double-submit cookie. SameSite=Strict already keeps other sites' forms from
carrying the cookie; the token also covers same-site attackers.

Failed sign-ins are limited as failed SMTP logins are (``[auth]``): per client
address and per (email, address), then refused for ``lockout`` seconds.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio.to_thread
import dns.resolver
from sqlalchemy import Engine
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from relay.accounting.report import price
from relay.auth.limiter import FailureLimiter
from relay.auth.passwords import Hasher
from relay.core.crypto import SecretBox
from relay.core.errors import Conflict, Invalid, NotFound, OperatorOnly, RelayError
from relay.core.settings import Settings
from relay.service import console_users, scope
from relay.service.console_users import Identity
from relay.service.dnsverify import make_resolver

P = ParamSpec("P")
R = TypeVar("R")

SESSION_COOKIE = "relay_session"
SIGN_IN_CSRF_COOKIE = "relay_sign_in"

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@dataclass
class ConsoleContext:
    """What the console works with, handed over by the composition root (``relay.app``)."""

    engine: Engine
    settings: Settings
    hasher: Hasher
    box: SecretBox
    notify: Any = None  # the relay's Notify, if any
    by_address: FailureLimiter = field(init=False)
    by_user: FailureLimiter = field(init=False)

    def __post_init__(self) -> None:
        auth = self.settings.auth
        self.by_address = FailureLimiter(
            auth.max_failures_per_ip, auth.failure_window, auth.lockout
        )
        self.by_user = FailureLimiter(auth.max_failures_per_user, auth.failure_window, auth.lockout)

    @property
    def price_per_1000(self) -> Decimal:
        return price(self.settings.billing.price_per_1000)

    def resolver(self) -> dns.resolver.Resolver:
        d = self.settings.dns
        return make_resolver(d.nameservers, d.port, d.timeout)


def context(request: Request) -> ConsoleContext:
    ctx: ConsoleContext = request.app.state.ctx
    return ctx


class Headers(BaseHTTPMiddleware):
    """Every page: nothing from elsewhere, never framed, no referrer, never cached."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        )
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def secure(request: Request) -> bool:
    mode = context(request).settings.admin.secure_cookie
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None = None
) -> None:
    """A cookie only this site's pages send back, never readable by a script."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=secure(request),
        httponly=True,
        samesite="strict",
    )


# -- who is signed in -------------------------------------------------------------


async def identity(request: Request) -> Identity | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    ctx = context(request)
    lifetime = ctx.settings.admin.session_lifetime
    return await anyio.to_thread.run_sync(console_users.identify, ctx.engine, cookie, lifetime)


class SignInNeeded(Exception):
    """No valid session: the sign-in page, then back to where the user was going."""


class Refused(Exception):
    """A POST without its CSRF token, or a viewer's change: 403."""


async def signed_in(request: Request) -> Identity:
    found = await identity(request)
    if found is None:
        raise SignInNeeded
    return found


async def may_post(request: Request) -> tuple[Identity, dict[str, str]]:
    """A signed-in admin's POST with its CSRF token: (who, the form's fields)."""
    who = await signed_in(request)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not hmac.compare_digest(fields.get("csrf", ""), who.csrf_token):
        raise Refused("the form's security token is missing or stale; reload the page")
    if not who.may_change:
        raise Refused("your role is viewer: you may look, not change")
    return who, fields


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


async def call(who: Identity, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """A blocking service call as the signed-in user, in a worker thread."""

    def run() -> R:
        with scope.acting(who.actor):
            return fn(*args, **kwargs)

    return await anyio.to_thread.run_sync(run)


# -- rendering ----------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """The outcome of an action, shown at the top of the screen it returns to."""

    kind: str  # success | error
    text: str


def ok(text: str) -> Notice:
    return Notice("success", text)


def failed(exc: Exception) -> Notice:
    return Notice("error", str(exc))


def status_of(exc: RelayError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, OperatorOnly):
        return 403
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, Invalid):
        return 422
    return 400


def render(
    request: Request,
    template: str,
    who: Identity | None,
    status: int = 200,
    notice: Notice | None = None,
    **values: Any,
) -> Response:
    return templates.TemplateResponse(
        request,
        template,
        {"who": who, "notice": notice, "path": request.url.path, **values},
        status_code=status,
    )


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path if request.method == "GET" else "/"
    query = f"?next={target}" if target not in ("/", "/sign-in") else ""
    return RedirectResponse("/sign-in" + query, status_code=303)


async def not_found(request: Request, exc: Exception) -> Response:
    who = await identity(request)
    if who is None:
        return sign_in_redirect(request)
    return render(request, "error.html", who, 404, message="Not found.")


def guarded(
    handler: Callable[[Request], Any],
) -> Callable[[Request], Any]:
    """Turn the console's exceptions into pages: sign-in, 403, the service's 404."""

    async def run(request: Request) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except SignInNeeded:
            return sign_in_redirect(request)
        except Refused as exc:
            who = await identity(request)
            return render(request, "error.html", who, 403, message=str(exc))
        except RelayError as exc:  # NotFound above all: out of scope reads as absent
            who = await identity(request)
            return render(request, "error.html", who, status_of(exc), message=str(exc))

    return run
