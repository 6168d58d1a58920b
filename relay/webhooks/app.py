"""The webhook listener's app: ``POST /hooks/{token}``, and what the integrator mounts beside it.

A request is taken in this order, and stores nothing until the last step:
the token names a provider (else 404), the provider's own authentication
passes (401 without credentials, 403 with wrong ones or a stale signature;
a kind whose posts need the network first, Amazon SNS, fetches its signing
certificate and confirms a subscription in ``Webhook.receive`` before that),
the body parses (400), then the events are stored once each and tied to
Relay's message and recipient (``relay.webhooks.store``). The sinks get the
events just stored, after their commit, in a worker thread; a sink that
fails is logged and the provider still gets its 200, since the events are
stored and a retry would only be a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.core.crypto import SecretBox
from relay.core.errors import Invalid, WebhookRefused
from relay.core.events import AccountEvent, EventSink
from relay.core.metrics import Metrics
from relay.providers.registry import KINDS
from relay.webhooks.store import Stored, find_provider, store_events

log = logging.getLogger("relay.webhooks")

# Providers send batches of up to a few thousand events; nothing near this.
MAX_BODY = 10 * 1024 * 1024


def error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    """The admin API's error shape, so one client reads both."""
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status)


def run_sinks(sinks: Sequence[EventSink], events: Sequence[AccountEvent]) -> None:
    """Every sink, each on its own: one failing does not keep the others from the events."""
    for sink in sinks:
        try:
            sink(events)
        except Exception:
            log.exception("event sink %r failed", sink)


def make_webhook_app(
    engine: Engine,
    box: SecretBox,
    metrics: Metrics,
    sinks: Sequence[EventSink] = (),
    extra_routes: Sequence[BaseRoute] = (),
    clock: Callable[[], float] = time.time,
) -> Starlette:
    def count(kind: str, result: str, items: Sequence[object]) -> None:
        for item in items:
            metrics.webhook_events.labels(kind, str(getattr(item, "type", "none")), result).inc()

    def counted(kind: str, outcome: Stored) -> None:
        count(kind, "stored", [e.event for e in outcome.stored])
        count(kind, "duplicate", outcome.duplicate)
        count(kind, "unmatched", outcome.unmatched)

    async def hook(request: Request) -> Response:
        token = request.path_params["token"]
        provider = await asyncio.to_thread(find_provider, engine, box, token)
        record = KINDS[provider.kind] if provider and provider.kind in KINDS else None
        if provider is None or record is None or record.webhook is None:
            return error(404, "not_found", "no such webhook")
        webhook = record.webhook
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(413, "too_large", "the body is too large")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            if provider.key is None:
                raise WebhookRefused("this provider has no webhook key set", 403)
            if webhook.receive is not None:  # SNS: the certificate, a subscription
                handled = await webhook.receive(provider.key, headers, body)
                if handled is not None:
                    return JSONResponse({"handled": handled})
            webhook.authenticate(provider.key, headers, body, clock())
        except WebhookRefused as exc:
            metrics.webhook_events.labels(provider.kind, "none", "refused").inc()
            code = "unauthorized" if exc.status == 401 else "forbidden"
            return error(exc.status, code, str(exc))
        try:
            events = webhook.parse(body)
        except Invalid as exc:
            return error(400, "invalid", str(exc), exc.field)
        outcome = await asyncio.to_thread(
            store_events, engine, provider, events, webhook.batch_id(headers)
        )
        counted(provider.kind, outcome)
        if outcome.stored and sinks:
            await asyncio.to_thread(run_sinks, sinks, outcome.stored)
        return JSONResponse(
            {
                "stored": len(outcome.stored),
                "duplicate": len(outcome.duplicate),
                "unmatched": len(outcome.unmatched),
            }
        )

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else "error"
        return error(exc.status_code, code, str(exc.detail))

    routes: list[BaseRoute] = [Route("/hooks/{token}", hook, methods=["POST"]), *extra_routes]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
