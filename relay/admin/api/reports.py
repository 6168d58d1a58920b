"""Usage (JSON, CSV or the command line's table), the audit log, and health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from relay.accounting.report import as_dict, render
from relay.admin.api import schemas as s
from relay.admin.api.auth import Authenticated, Caller, context
from relay.admin.api.errors import responses
from relay.service import audit, scope, usage

router = APIRouter(responses=responses(401, 429))
health = APIRouter(tags=["health"])


_USAGE_FORMATS = {
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        "text/plain": {"schema": {"type": "string"}},
    },
    "description": "The report: JSON, or CSV or the table as `format` asks",
}


@router.get(
    "/usage",
    tags=["usage"],
    summary="Billable recipients by account, period and class, with cost",
    response_model=s.UsageReport,
    responses={200: _USAGE_FORMATS, **responses(404, 422)},
)
def usage_report(caller: Authenticated, q: Annotated[s.UsageQuery, Query()]) -> Response:
    """An agency brings its sub-accounts. Without ``account``, a tenant's token
    reports its own account (an agency's with its sub-accounts), an operator's
    every account."""
    account = _usage_account(caller, q.account)
    report = caller.run(
        usage.usage_report, caller.engine, caller.ctx.price_per_1000, account, q.first, q.last
    )
    if q.format == "json":
        return JSONResponse(as_dict(report))
    text = render(report, q.format)
    return Response(text, media_type="text/csv" if q.format == "csv" else "text/plain")


def _usage_account(caller: Caller, account: str | None) -> str | None:
    if account is not None:
        caller.run(scope.require, caller.engine, scope.of_account(), account=account)
        return account
    if caller.scope.everything:
        return None
    return scope.account_name(caller.engine, caller.actor.account_id)


@router.get(
    "/audit",
    tags=["audit"],
    summary="Changes made through the API or the command line, newest first",
    responses=responses(404, 422),
)
def audit_log(caller: Authenticated, q: Annotated[s.AuditQuery, Query()]) -> s.AuditPage:
    page = audit.list_entries(
        caller.engine, caller.scope, account=q.account, cursor=q.cursor, limit=q.limit
    )
    items = [s.AuditOut(**vars(entry)) for entry in page.items]
    return s.AuditPage(items=items, next_cursor=page.next_cursor)


@health.get("/healthz", summary="The process is alive (no token needed)")
def healthz() -> s.Health:
    return s.Health(status="ok")


@health.get(
    "/readyz",
    summary="Database reachable, spool writable, listeners up (no token needed)",
    response_model=s.Readiness,
    responses={503: {"model": s.Readiness, "description": "Not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    checks = await context(request).ready()
    ok = all(checks.values())
    body = s.Readiness(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
