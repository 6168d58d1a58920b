"""An account's suppression list: list (filtered, paged), add, remove.

The service (``relay.service.suppressions``) scopes and audits each call;
CSV import and export are the command line's (``relay suppression
import|export``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from relay.admin.api import schemas as s
from relay.admin.api.auth import Authenticated
from relay.admin.api.errors import responses
from relay.service import suppressions

router = APIRouter(responses=responses(401, 429))

AccountName = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]
Address = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]


def _out(entry: Any) -> dict[str, Any]:
    return {
        "address": entry.address,
        "reason": entry.reason,
        "source": entry.source,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "detail": entry.detail,
    }


@router.get(
    "/accounts/{name}/suppressions",
    tags=["suppressions"],
    summary="The account's suppressed addresses, by address",
    responses=responses(404, 422),
)
def list_suppressions(
    name: AccountName, caller: Authenticated, query: Annotated[s.SuppressionQuery, Query()]
) -> s.SuppressionPage:
    rows, total = caller.run(
        suppressions.list_suppressions,
        caller.engine,
        name,
        query.reason,
        query.contains,
        query.limit,
        query.offset,
    )
    items = [s.SuppressionOut(**_out(e)) for e in rows]
    return s.SuppressionPage(items=items, total=total, offset=query.offset)


@router.post(
    "/accounts/{name}/suppressions",
    status_code=201,
    tags=["suppressions"],
    summary="Suppress an address (idempotent: a stronger reason replaces a weaker one)",
    responses=responses(404, 422),
)
def add_suppression(
    name: AccountName, body: s.SuppressionIn, caller: Authenticated
) -> s.SuppressionAdded:
    entry, changed = caller.run(
        suppressions.add_suppression, caller.engine, name, body.address, body.reason, body.detail
    )
    return s.SuppressionAdded(**_out(entry), changed=changed)


@router.delete(
    "/accounts/{name}/suppressions/{address}",
    status_code=204,
    response_class=Response,
    tags=["suppressions"],
    summary="Send to an address again",
    responses=responses(404, 422),
)
def remove_suppression(name: AccountName, address: Address, caller: Authenticated) -> None:
    caller.run(suppressions.remove_suppression, caller.engine, name, address)
