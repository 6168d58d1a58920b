"""Providers: add and edit (each after its live check), list, show (secrets masked),
test, remove, defaults, assignments, egress.

The rules live in ``relay.service.provider_checks`` and ``relay.service.providers``
(which also write the audit log); the command line calls the same functions.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from relay.admin.api import schemas as s
from relay.admin.api.auth import Authenticated
from relay.admin.api.errors import responses
from relay.providers.registry import KINDS, SECRETS, parse_connections, parse_rate
from relay.service import notifications, provider_checks, providers, scope
from relay.service.accounts import list_accounts

router = APIRouter(tags=["providers"], responses=responses(401, 429))

ProviderName = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]
AccountName = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]


class ProviderOut(BaseModel):
    name: str
    kind: str
    transports: str = Field(description='How it sends: "api+smtp", "api", "smtp" or "file"')
    account: str
    domain: str | None
    ip_pool: str | None


class ProviderDetail(BaseModel):
    name: str
    kind: str
    transports: str = Field(description='How it sends: "api+smtp", "api", "smtp" or "file"')
    account: str | None
    domain: str | None
    options: dict[str, Any]
    secrets: dict[str, str] = Field(description="Masked: never more than the last 4 characters")
    used_by: list[str]


class ConnectionIn(s.Request):
    api_key: Annotated[str | None, s.text(500)] = None
    api_url: Annotated[str | None, s.text(500)] = None
    smtp_host: Annotated[str | None, s.text(253)] = None
    smtp_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    smtp_user: Annotated[str | None, s.text(320)] = None
    smtp_password: Annotated[str | None, s.text(500)] = None
    smtp_tls: Annotated[str | None, s.choice(("implicit", "starttls", "none"))] = None
    allow_insecure_tls: bool | None = None
    ip_pool: Annotated[str | None, s.text(64)] = None
    source_address: Annotated[str | None, s.text(64)] = None
    domain: Annotated[str | None, s.text(253)] = None
    test_address: Annotated[str | None, s.text(320)] = None
    webhook_key: Annotated[str | None, s.text(500)] = Field(
        None,
        description="Event webhook: SendGrid's verification key, SparkPost's USER:PASSWORD, "
        "Mailgun's HTTP webhook signing key (stored sealed, shown masked)",
    )
    region: Annotated[str | None, s.text(32)] = Field(
        None, description="Mailgun: us or eu; Amazon SES: the AWS region"
    )
    sending_domain: Annotated[str | None, s.text(253)] = None
    configuration_set: Annotated[str | None, s.text(64)] = None
    access_key_id: Annotated[str | None, s.text(128)] = None
    secret_access_key: Annotated[str | None, s.text(500)] = Field(
        None, description="Amazon SES: the IAM secret (stored sealed, shown masked)"
    )
    max_rate: float | Annotated[str, s.text(32)] | None = Field(
        None,
        description="Most messages a second to this provider, all processes and nodes together: "
        'a number (per second), or "N/s", "N/min", "N/h"; "off" clears it',
    )
    max_connections: int | Annotated[str, s.text(8)] | None = Field(
        None,
        description='Most deliveries at once to this provider, all processes together; "off" '
        "clears it",
    )
    check: bool = Field(True, description="Run the live check first (false: save unchecked)")

    def options(self) -> dict[str, Any]:
        keys = (
            "api_url",
            "smtp_host",
            "smtp_port",
            "smtp_user",
            "smtp_tls",
            "allow_insecure_tls",
            "ip_pool",
            "source_address",
            "test_address",
            "region",
            "sending_domain",
            "configuration_set",
            "access_key_id",
        )
        return {k: getattr(self, k) for k in keys} | self.ceilings()

    def ceilings(self) -> dict[str, Any]:
        """max_rate and max_connections as stored (``Invalid``, a 422, if malformed)."""
        rate, conns = self.max_rate, self.max_connections
        return {
            "max_rate": parse_rate(rate) if isinstance(rate, str) else rate,
            "max_connections": parse_connections(conns) if isinstance(conns, str) else conns,
        }

    def secrets(self) -> dict[str, str]:
        return {
            "api_key": self.api_key or "",
            "smtp_password": self.smtp_password or "",
            "webhook_key": self.webhook_key or "",
            "secret_access_key": self.secret_access_key or "",
        }


class EditIn(ConnectionIn):
    remove_secrets: list[Annotated[str, s.choice(SECRETS)]] = Field(
        default_factory=list,
        description="Secrets to drop, e.g. api_key to make a SendGrid provider SMTP only",
    )


class ProviderIn(ConnectionIn):
    name: s.Name
    account: s.Name
    kind: Annotated[str, s.choice(tuple(KINDS))]


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


class WebhookOut(BaseModel):
    url: str = Field(description="Paste into the provider's console; the token in it is secret")
    kind: str
    key_set: bool = Field(description="A webhook key is stored (events are refused until it is)")
    setup: str = Field(description="The steps in the provider's console")


class Egress(BaseModel):
    transport: str
    address: str


def _legs(result: provider_checks.CheckResult | None) -> list[Leg]:
    return [
        Leg(transport=g.transport, ok=g.ok, detail=g.detail)
        for g in (result.legs if result else [])
    ]


class Checked(BaseModel):
    name: str
    checked: bool
    legs: list[Leg] = Field(description="Each transport's result in the live check")


@router.post(
    "/providers",
    summary="Add a provider to an account, after its live check (refused with the "
    "provider's own error if it fails)",
    status_code=201,
    responses=responses(404, 409, 422),
)
async def add_provider(body: ProviderIn, caller: Authenticated) -> Checked:
    config = providers.ProviderConfig(
        body.name, body.kind, body.options(), body.secrets(), body.domain
    )
    hostname = caller.ctx.settings.server.hostname
    with scope.acting(caller.actor):
        row, result = await provider_checks.add_checked(
            caller.engine, caller.ctx.box, body.account, config, hostname, check=body.check
        )
    return Checked(name=row.name, checked=result is not None, legs=_legs(result))


@router.patch(
    "/providers/{name}",
    summary="Change a provider; the live check runs first and a failing edit is refused",
    responses=responses(404, 422),
)
async def edit_provider(name: ProviderName, body: EditIn, caller: Authenticated) -> Checked:
    await anyio.to_thread.run_sync(
        lambda: caller.run(scope.require, caller.engine, scope.of_provider(), name=name)
    )
    hostname = caller.ctx.settings.server.hostname
    with scope.acting(caller.actor):
        _, result = await provider_checks.edit_checked(
            caller.engine,
            caller.ctx.box,
            name,
            body.options(),
            body.secrets(),
            body.domain,
            hostname,
            check=body.check,
            remove=body.remove_secrets,
        )
    return Checked(name=name, checked=result is not None, legs=_legs(result))


@router.get("/providers", summary="The providers of the accounts this token sees")
def list_providers(caller: Authenticated) -> list[ProviderOut]:
    return [
        ProviderOut(
            name=p.name,
            kind=p.kind,
            transports=providers.transports_of(caller.ctx.box, p),
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
    shown = caller.run(providers.show_provider, caller.engine, caller.ctx.box, name)
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
        lambda: caller.run(providers.load_config, caller.engine, caller.ctx.box, name)
    )
    hostname = caller.ctx.settings.server.hostname
    result = await provider_checks.test_send(config, body.to, hostname)
    if not result.ok and caller.ctx.notify is not None:  # the owner is told (once a day)
        notice = await anyio.to_thread.run_sync(
            lambda: caller.run(notifications.check_failed, caller.engine, name, result.detail)
        )
        if notice is not None:
            caller.ctx.notify(notice)
    legs = [Leg(transport=g.transport, ok=g.ok, detail=g.detail) for g in result.legs]
    return TestResult(ok=result.ok, legs=legs)


@router.get(
    "/providers/{name}/webhook",
    summary="The provider's event webhook URL (made the first time) and its setup steps",
    responses=responses(404, 422),
)
def webhook(name: ProviderName, caller: Authenticated) -> WebhookOut:
    caller.run(scope.require, caller.engine, scope.of_provider(), name=name)
    public_url = caller.ctx.settings.webhooks.public_url
    found = caller.run(providers.webhook, caller.engine, caller.ctx.box, name, public_url)
    return WebhookOut(url=found.url, kind=found.kind, key_set=found.key_set, setup=found.setup)


@router.get(
    "/providers/{name}/egress",
    summary="The addresses the relay connects to the provider from (to allowlist)",
    responses=responses(404, 422),
)
def egress(name: ProviderName, caller: Authenticated) -> list[Egress]:
    caller.run(scope.require, caller.engine, scope.of_provider(), name=name)
    config = caller.run(providers.load_config, caller.engine, caller.ctx.box, name)
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
    moved = caller.run(providers.remove_provider, caller.engine, name, replacement)
    return Removed(name=name, replacement=replacement, moved=moved)


@router.put(
    "/accounts/{name}/default-provider",
    summary="The account's default provider, or (an agency's) the default of its sub-accounts",
    responses=responses(404, 422),
)
def set_default(name: AccountName, body: DefaultIn, caller: Authenticated) -> DefaultOut:
    caller.run(providers.set_default, caller.engine, body.provider, name, body.for_)
    return DefaultOut(account=name, provider=body.provider, for_=body.for_)


@router.put(
    "/accounts/{name}/assigned-provider",
    summary="Put a sub-account on a provider (it wins over the defaults)",
    responses=responses(404, 422),
)
def assign(name: AccountName, body: AssignIn, caller: Authenticated) -> Assignment:
    caller.run(providers.assign, caller.engine, body.provider, name)
    return Assignment(account=name, provider=body.provider)


@router.delete(
    "/accounts/{name}/assigned-provider",
    summary="Take a sub-account off its assigned provider; its defaults apply",
    responses=responses(404, 409, 422),
)
def unassign(name: AccountName, caller: Authenticated) -> Assignment:
    caller.run(providers.unassign, caller.engine, name)
    return Assignment(account=name, provider=None)
