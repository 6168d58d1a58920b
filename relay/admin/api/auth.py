"""Who is calling: the bearer token, checked, turned into an actor with a scope.

Failed token checks are counted per client address (``FailureLimiter``, the
SMTP lock-out's thresholds); a locked address gets 429 with Retry-After, even
with a good token, until the lock-out ends, so guessing costs time. A missing
header is not a guess and is not counted. The limiter is touched only on the
event loop (this dependency is async), never from the thread pool.
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
    if ctx.limiter.locked(address):
        retry = str(math.ceil(ctx.settings.auth.lockout))
        raise ApiError(
            429, "rate_limited", "too many failed token checks; try later", {"Retry-After": retry}
        )
    if credentials is None:
        if request.headers.get("authorization"):
            ctx.limiter.fail(address)  # a malformed header is a failed check
        raise ApiError(401, "unauthorized", "a bearer token is required", _CHALLENGE)
    actor = await anyio.to_thread.run_sync(tokens.authenticate, ctx.engine, credentials.credentials)
    if actor is None:
        ctx.limiter.fail(address)
        raise ApiError(401, "unauthorized", "the token is not valid", _CHALLENGE)
    ctx.limiter.succeed(address)
    return Caller(ctx, actor)


_CHALLENGE = {"WWW-Authenticate": "Bearer"}

Authenticated = Annotated[Caller, Depends(authenticate)]
