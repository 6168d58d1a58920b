"""Accounts, sending domains, SMTP credentials and verified senders.

Each route is a thin translation: a body into service arguments, the
service's rows into response models. Changes run as the token
(``Caller.run``), so the service's guards hide other tenants' data and the
audit log names the token; reads of rows the service returns unscoped are
checked or filtered here with the same resolvers (``relay.service.scope``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from relay.admin.api import schemas as s
from relay.admin.api.auth import Authenticated
from relay.admin.api.errors import responses
from relay.service import accounts, scope
from relay.store.models import Account, Credential, Sender

router = APIRouter(responses=responses(401, 429))

AccountName = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]
DomainName = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]
Username = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]
SenderPattern = Annotated[str, Path(min_length=1, max_length=320, pattern=s.PRINTABLE)]


def _account(row: Account, agency: str | None) -> s.AccountOut:
    return s.AccountOut(
        name=row.name,
        agency=agency,
        kind="sub-account" if agency else "agency",
        unverified_policy=row.unverified_policy,
        created_at=row.created_at,
    )


@router.get("/accounts", tags=["accounts"], summary="List the accounts this token sees")
def list_accounts(caller: Authenticated) -> list[s.AccountOut]:
    rows = accounts.list_accounts(caller.engine)
    return [_account(a, parent) for a, parent in rows if caller.scope.sees(a.id)]


@router.post(
    "/accounts",
    status_code=201,
    tags=["accounts"],
    summary="Create an agency (operator) or a sub-account",
    responses=responses(403, 404, 409, 422),
)
def create_account(body: s.AccountIn, caller: Authenticated) -> s.AccountOut:
    row = caller.run(accounts.create_account, caller.engine, body.name, body.agency, body.policy)
    return _account(row, body.agency)


@router.get(
    "/accounts/{name}", tags=["accounts"], summary="One account", responses=responses(404, 422)
)
def show_account(name: AccountName, caller: Authenticated) -> s.AccountOut:
    account_id = caller.run(scope.require, caller.engine, scope.of_account(), account=name)
    rows = {a.id: (a, parent) for a, parent in accounts.list_accounts(caller.engine)}
    return _account(*rows[account_id])  # accounts are never deleted


# -- domains ----------------------------------------------------------------------


@router.get(
    "/accounts/{name}/domains",
    tags=["domains"],
    summary="The account's sending domains",
    responses=responses(404, 422),
)
def list_domains(name: AccountName, caller: Authenticated) -> list[s.DomainOut]:
    rows = scope.list_domains(caller.engine, caller.scope, name)
    return [s.DomainOut(name=d.name, account=name, created_at=d.created_at) for d in rows]


@router.post(
    "/accounts/{name}/domains",
    status_code=201,
    tags=["domains"],
    summary="Add a sending domain to a sub-account",
    responses=responses(404, 409, 422),
)
def add_domain(name: AccountName, body: s.DomainIn, caller: Authenticated) -> s.DomainOut:
    row = caller.run(accounts.add_domain, caller.engine, body.domain, name)
    return s.DomainOut(name=row.name, account=name, created_at=row.created_at)


# -- credentials ------------------------------------------------------------------


def _credential(row: Credential) -> s.CredentialOut:
    return s.CredentialOut(
        username=row.username,
        purpose=row.purpose,
        unverified_policy=row.unverified_policy,
        created_at=row.created_at,
        password_set_at=row.updated_at,
    )


@router.get(
    "/domains/{domain}/credentials",
    tags=["credentials"],
    summary="A domain's SMTP users (never a password or hash)",
    responses=responses(404, 422),
)
def list_credentials(domain: DomainName, caller: Authenticated) -> list[s.CredentialOut]:
    caller.run(scope.require, caller.engine, scope.of_domain(), domain=domain)
    return [_credential(c) for c in accounts.list_credentials(caller.engine, domain)]


@router.post(
    "/credentials",
    status_code=201,
    tags=["credentials"],
    summary="Create an SMTP user; a generated password is returned this once",
    responses=responses(404, 409, 422),
)
def create_credential(body: s.CredentialIn, caller: Authenticated) -> s.NewPassword:
    new = caller.run(
        accounts.create_credential,
        caller.engine,
        caller.ctx.hasher,
        body.username,
        body.password,
        body.purpose,
        caller.ctx.settings.auth.max_credentials_per_domain,
        body.policy,
    )
    return s.NewPassword(username=new.username, password=None if body.password else new.password)


@router.post(
    "/credentials/{username}/reset",
    tags=["credentials"],
    summary="Set a new password (the old one fails at once); a generated one is returned once",
    responses=responses(404, 422),
)
def reset_credential(
    username: Username, caller: Authenticated, body: s.PasswordIn | None = None
) -> s.NewPassword:
    chosen = body.password if body else None
    new = caller.run(accounts.reset_credential, caller.engine, caller.ctx.hasher, username, chosen)
    return s.NewPassword(username=new.username, password=None if chosen else new.password)


@router.delete(
    "/credentials/{username}",
    tags=["credentials"],
    summary="Delete an SMTP user (its logins fail at once)",
    responses=responses(404, 422),
)
def delete_credential(username: Username, caller: Authenticated) -> s.Deleted:
    return s.Deleted(username=caller.run(accounts.delete_credential, caller.engine, username))


# -- senders ----------------------------------------------------------------------


def _sender(row: Sender) -> s.SenderOut:
    kind = "address" if "@" in row.pattern else "domain"
    return s.SenderOut(sender=row.pattern, kind=kind, verified=row.verified)


@router.get(
    "/accounts/{name}/senders",
    tags=["senders"],
    summary="The account's senders, verified or waiting for DNS",
    responses=responses(404, 422),
)
def list_senders(name: AccountName, caller: Authenticated) -> list[s.SenderOut]:
    caller.run(scope.require, caller.engine, scope.of_account(), account=name)
    return [_sender(row) for row in caller.run(accounts.list_senders, caller.engine, name)]


@router.post(
    "/accounts/{name}/senders",
    tags=["senders"],
    summary="Verify an address or a whole domain for the account",
    responses=responses(404, 422),
)
def verify_sender(name: AccountName, body: s.SenderIn, caller: Authenticated) -> s.SenderOut:
    return _sender(caller.run(accounts.verify_sender, caller.engine, body.sender, name))


@router.post(
    "/accounts/{name}/senders/dns",
    tags=["senders"],
    summary="Verify a domain by DNS: get the TXT record to publish, or find it published",
    responses=responses(404, 422),
)
def verify_sender_dns(name: AccountName, body: s.DnsIn, caller: Authenticated) -> s.DnsOut:
    found = caller.run(
        accounts.verify_sender_dns, caller.engine, body.domain, name, caller.ctx.resolver()
    )
    return s.DnsOut(
        domain=found.domain, record=found.record, value=found.value, verified=found.verified
    )


@router.delete(
    "/accounts/{name}/senders/{sender}",
    status_code=204,
    response_class=Response,
    tags=["senders"],
    summary="Remove a sender",
    responses=responses(404, 422),
)
def remove_sender(name: AccountName, sender: SenderPattern, caller: Authenticated) -> None:
    caller.run(accounts.remove_sender, caller.engine, sender, name)
