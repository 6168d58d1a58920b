"""Sending limits of accounts and credentials: read them with their use, set them.

``PATCH`` is the operator's, or an agency's for its sub-accounts and their
credentials (within the agency's own limits: 409 naming the ceiling).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path

from relay.admin.api import schemas as s
from relay.admin.api.auth import Authenticated
from relay.admin.api.errors import responses
from relay.service import limits

router = APIRouter(responses=responses(401, 429))

AccountName = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]
Username = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]


def _out(view: limits.LimitsView) -> s.LimitsOut:
    return s.LimitsOut.model_validate(asdict(view))


def _changes(body: s.LimitsPatch) -> dict[str, int | None]:
    def listed(value: list[str] | str | None) -> list[str] | None:
        return [value] if isinstance(value, str) else value

    return limits.parse_changes(
        listed(body.max_messages), listed(body.max_recipients), body.max_sessions
    )


@router.get(
    "/limits",
    tags=["limits"],
    summary="Every account you see that has a limit, with used and remaining",
)
def list_limited(caller: Authenticated) -> list[s.LimitsOut]:
    return [_out(v) for v in caller.run(limits.limited_accounts, caller.engine)]


@router.get(
    "/accounts/{name}/limits",
    tags=["limits"],
    summary="An account's limits: used, remaining and when each resets",
    responses=responses(404, 422),
)
def account_limits(name: AccountName, caller: Authenticated) -> s.LimitsOut:
    return _out(caller.run(limits.account_limits, caller.engine, name))


@router.patch(
    "/accounts/{name}/limits",
    tags=["limits"],
    summary="Set an account's limits (operator, or the agency of a sub-account)",
    responses=responses(403, 404, 409, 422),
)
def set_account_limits(
    name: AccountName, body: s.LimitsPatch, caller: Authenticated
) -> s.LimitsOut:
    changes = _changes(body)
    return _out(caller.run(limits.set_account_limits, caller.engine, name, changes))


@router.get(
    "/credentials/{username}/limits",
    tags=["limits"],
    summary="A credential's own limits: used, remaining and when each resets",
    responses=responses(404, 422),
)
def credential_limits(username: Username, caller: Authenticated) -> s.LimitsOut:
    return _out(caller.run(limits.credential_limits, caller.engine, username))


@router.patch(
    "/credentials/{username}/limits",
    tags=["limits"],
    summary="Set a credential's limits, within its account's",
    responses=responses(403, 404, 409, 422),
)
def set_credential_limits(
    username: Username, body: s.LimitsPatch, caller: Authenticated
) -> s.LimitsOut:
    changes = _changes(body)
    return _out(caller.run(limits.set_credential_limits, caller.engine, username, changes))
