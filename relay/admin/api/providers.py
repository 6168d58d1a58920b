"""Providers: list, show (secrets masked), test, remove, defaults, assignments, egress.

Adding and editing are not here yet: their rule (a test address is needed,
and the live check must pass before anything is saved) lives in the command
line (``relay.cli_providers``), not in the service, and is not repeated.

``relay.service.providers`` does not record its changes in the audit log
yet, so the changes made here go through ``audited`` wrappers of its
functions; once that module carries the decorators itself, these go.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from relay.admin.api import schemas as s
from relay.admin.api.auth import Authenticated
from relay.admin.api.errors import responses
from relay.service import provider_checks, providers, scope
from relay.service.accounts import list_accounts
from relay.service.audit import arg, audited

router = APIRouter(tags=["providers"], responses=responses(401, 429))

ProviderName = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]
AccountName = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]

_remove = audited(
    "provider.remove",
    arg("name"),
    scope.each(scope.of_provider("name"), scope.of_provider("replacement", optional=True)),
)(providers.remove_provider)
_set_default = audited(
    "provider.default",
    lambda a: f"{a['account']} ({a['scope']}): {a['name']}",
    scope.each(scope.of_account("account"), scope.of_provider("name")),
)(providers.set_default)
_assign = audited(
    "provider.assign",
    lambda a: f"{a['account']}: {a['name']}",
    scope.each(scope.of_account("account"), scope.of_provider("name")),
)(providers.assign)
_unassign = audited("provider.unassign", arg("account"), scope.of_account("account"))(
    providers.unassign
)


class ProviderOut(BaseModel):
    name: str
    kind: str
    account: str
    domain: str | None
    ip_pool: str | None


class ProviderDetail(BaseModel):
    name: str
    kind: str
    account: str | None
    domain: str | None
    options: dict[str, Any]
    secrets: dict[str, str] = Field(description="Masked: never more than the last 4 characters")
    used_by: list[str]


class TestIn(s.Request):
    to: Annotated[str, s.text(320)] = Field(description="Where the test message goes")


class Leg(BaseModel):
    transport: str
    ok: bool
    detail: str


class TestResult(BaseModel):
    ok: bool
    legs: list[Leg]


class Removed(BaseModel):
    name: str
    replacement: str | None
    moved: list[str] = Field(description="Accounts whose routes moved to the replacement")


class DefaultIn(s.Request):
    provider: s.Name
    for_: Annotated[str, s.choice(("own", "subaccounts"))] = Field("own", alias="for")


class DefaultOut(BaseModel):
    account: str
    provider: str
    for_: str = Field(serialization_alias="for")


class AssignIn(s.Request):
    provider: s.Name


class Assignment(BaseModel):
    account: str
    provider: str | None


class Egress(BaseModel):
    transport: str
    address: str


@router.get("/providers", summary="The providers of the accounts this token sees")
def list_providers(caller: Authenticated) -> list[ProviderOut]:
    return [
        ProviderOut(
            name=p.name,
            kind=p.kind,
            account=account,
            domain=p.domain,
            ip_pool=(p.options or {}).get("ip_pool"),
        )
        for p, account in providers.list_providers(caller.engine)
        if caller.scope.sees(p.account_id)
    ]


@router.get(
    "/providers/{name}",
    summary="One provider, its secrets masked, and the accounts routed through it",
    responses=responses(404, 422),
)
def show_provider(name: ProviderName, caller: Authenticated) -> ProviderDetail:
    caller.run(scope.require, caller.engine, scope.of_provider(), name=name)
    shown = providers.show_provider(caller.engine, caller.ctx.box, name)
    if not caller.scope.everything:
        visible = {a.name for a, _ in list_accounts(caller.engine) if caller.scope.sees(a.id)}
        shown["used_by"] = [n for n in shown["used_by"] if n in visible]
    return ProviderDetail(**shown)


@router.post(
    "/providers/{name}/test",
    summary="Send a test message now through each of the provider's transports",
    responses=responses(404, 422),
)
async def test_provider(name: ProviderName, body: TestIn, caller: Authenticated) -> TestResult:
    await anyio.to_thread.run_sync(
        lambda: caller.run(scope.require, caller.engine, scope.of_provider(), name=name)
    )
    config = await anyio.to_thread.run_sync(
        providers.load_config, caller.engine, caller.ctx.box, name
    )
    hostname = caller.ctx.settings.server.hostname
    result = await provider_checks.test_send(config, body.to, hostname)
    legs = [Leg(transport=g.transport, ok=g.ok, detail=g.detail) for g in result.legs]
    return TestResult(ok=result.ok, legs=legs)


@router.get(
    "/providers/{name}/egress",
    summary="The addresses the relay connects to the provider from (to allowlist)",
    responses=responses(404, 422),
)
def egress(name: ProviderName, caller: Authenticated) -> list[Egress]:
    caller.run(scope.require, caller.engine, scope.of_provider(), name=name)
    config = providers.load_config(caller.engine, caller.ctx.box, name)
    return [Egress(transport=t, address=a) for t, a in provider_checks.egress_addresses(config)]


@router.delete(
    "/providers/{name}",
    summary="Remove a provider; accounts routed through it move to the replacement",
    responses=responses(404, 409, 422),
)
def remove_provider(
    name: ProviderName,
    caller: Authenticated,
    replacement: Annotated[
        str | None, Query(min_length=1, max_length=320, pattern=s.PRINTABLE)
    ] = None,
) -> Removed:
    moved = caller.run(_remove, caller.engine, name, replacement)
    return Removed(name=name, replacement=replacement, moved=moved)


@router.put(
    "/accounts/{name}/default-provider",
    summary="The account's default provider, or (an agency's) the default of its sub-accounts",
    responses=responses(404, 422),
)
def set_default(name: AccountName, body: DefaultIn, caller: Authenticated) -> DefaultOut:
    caller.run(_set_default, caller.engine, body.provider, name, body.for_)
    return DefaultOut(account=name, provider=body.provider, for_=body.for_)


@router.put(
    "/accounts/{name}/assigned-provider",
    summary="Put a sub-account on a provider (it wins over the defaults)",
    responses=responses(404, 422),
)
def assign(name: AccountName, body: AssignIn, caller: Authenticated) -> Assignment:
    caller.run(_assign, caller.engine, body.provider, name)
    return Assignment(account=name, provider=body.provider)


@router.delete(
    "/accounts/{name}/assigned-provider",
    summary="Take a sub-account off its assigned provider; its defaults apply",
    responses=responses(404, 409, 422),
)
def unassign(name: AccountName, caller: Authenticated) -> Assignment:
    caller.run(_unassign, caller.engine, name)
    return Assignment(account=name, provider=None)
