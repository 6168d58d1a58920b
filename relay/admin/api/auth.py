"""Who is calling: the bearer token, checked, turned into an actor with a scope.

Failed token checks are counted per client address (``FailureLimiter``, the
SMTP lock-out's thresholds); from a locked address an unknown token gets 429
with Retry-After until the lock-out ends. A valid token is always accepted,
whatever other tokens did from the same address: the check is one digest and
one indexed read, so it runs first, and a lock-out refuses only what fails it
(tokens carry 256 random bits, so the lock-out sheds noise; it never stands
between a guesser and a token it could not find anyway). A missing header is
not a guess and is not counted. The limiter is touched only on the event loop
(this dependency is async), never from the thread pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ParamSpec, TypeVar

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from relay.admin.api.context import ApiContext
from relay.admin.api.errors import ApiError
from relay.service import scope, tokens
from relay.service.scope import Actor, Scope

P = ParamSpec("P")
R = TypeVar("R")

bearer = HTTPBearer(
    auto_error=False,
    description="A token from `relay token create`: `Authorization: Bearer rly_...`",
)


@dataclass(frozen=True)
class Caller:
    """One authenticated request: the API's context and the token's actor."""

    ctx: ApiContext
    actor: Actor

    @property
    def engine(self) -> Engine:
        return self.ctx.engine

    @property
    def scope(self) -> Scope:
        return self.actor.scope

    def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call a service function as this token (its guards and audit see the actor)."""
        with scope.acting(self.actor):
            return fn(*args, **kwargs)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    ctx = context(request)
    address = request.client.host if request.client else "unknown"
    if credentials is None:
        if request.headers.get("authorization"):
            _failed(ctx, address)  # a malformed header is a failed check
        raise ApiError(401, "unauthorized", "a bearer token is required", _CHALLENGE)
    actor = await anyio.to_thread.run_sync(tokens.authenticate, ctx.engine, credentials.credentials)
    if actor is None:
        _failed(ctx, address)
        raise ApiError(401, "unauthorized", "the token is not valid", _CHALLENGE)
    return Caller(ctx, actor)


def _failed(ctx: ApiContext, address: str) -> None:
    """Count a failed check; 429 while the address is locked (a valid token still passes).

    A valid token does not reset the count: a guesser holding a token of its
    own would otherwise reset it between guesses.
    """
    if not ctx.limiter.locked(address):
        ctx.limiter.fail(address)
        return
    retry = str(math.ceil(ctx.settings.auth.lockout))
    raise ApiError(
        429, "rate_limited", "too many failed token checks; try later", {"Retry-After": retry}
    )


_CHALLENGE = {"WWW-Authenticate": "Bearer"}

Authenticated = Annotated[Caller, Depends(authenticate)]
