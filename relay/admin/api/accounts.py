"""Accounts, sending domains, SMTP credentials and verified senders.

Each route is a thin translation: a body into service arguments, the
service's rows into response models. Changes run as the token
(``Caller.run``), so the service's guards hide other tenants' data and the
audit log names the token; reads of rows the service returns unscoped are
checked or filtered here with the same resolvers (``relay.service.scope``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from relay.admin.api import schemas as s
from relay.admin.api.auth import Authenticated, Caller
from relay.admin.api.errors import responses
from relay.service import account_settings, accounts, confirmations, notifications, scope
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
        **_settings(row),
    )


def _settings(row: Account) -> dict[str, Any]:
    """The feedback-loop settings, as the view shows them (never the secret)."""
    return {
        "notify": list(row.notify_addresses or []),
        "notify_url": row.notify_url,
        "share_suppressions": bool(row.share_suppressions),
        "unsubscribe": bool(row.unsubscribe),
        "open_tracking": row.open_tracking,
        "click_tracking": row.click_tracking,
        "suspended_at": row.suspended_at,
        "suspended_reason": row.suspended_reason,
    }


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


@router.patch(
    "/accounts/{name}",
    tags=["accounts"],
    summary="Change notifications, suppression sharing, unsubscribe and tracking "
    "(operator, or the account's agency)",
    responses=responses(403, 404, 422),
)
def edit_account(name: AccountName, body: s.AccountPatch, caller: Authenticated) -> s.AccountEdited:
    changes = account_settings.AccountChanges(**body.model_dump())
    edited = caller.run(account_settings.edit_account, caller.engine, caller.ctx.box, name, changes)
    base = _account(edited.account, scope.account_name(caller.engine, edited.account.parent_id))
    return s.AccountEdited(
        **base.model_dump(), changed=edited.changed, notify_secret=edited.notify_secret
    )


@router.get(
    "/accounts/{name}/notifications",
    tags=["accounts"],
    summary="What the account was told (newest first), and whether it reached it",
    responses=responses(404, 422),
)
def list_notifications(
    name: AccountName,
    caller: Authenticated,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[s.NotificationOut]:
    rows = caller.run(notifications.visible_notifications, caller.engine, name, limit)
    return [
        s.NotificationOut(
            id=n.id,
            kind=n.kind,
            subject=n.subject,
            detail=n.detail,
            created_at=n.created_at,
            mail_state=n.mail_state,
            mail_error=n.mail_error,
            webhook_state=n.webhook_state,
            webhook_error=n.webhook_error,
        )
        for n in rows
    ]


@router.post(
    "/accounts/{name}/resume",
    tags=["accounts"],
    summary="Lift a suspension for bounce or complaint rates (operator, or the agency)",
    responses=responses(403, 404, 422),
)
def resume_account(name: AccountName, caller: Authenticated) -> s.ResumeOut:
    done = caller.run(accounts.resume_account, caller.engine, name)
    return s.ResumeOut(
        account=done.account, was_suspended=done.was_suspended, released=done.released
    )


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


def _sender(caller: Caller, row: Sender) -> s.SenderOut:
    kind = "address" if "@" in row.pattern else "domain"
    proof = row.proof_account_id
    return s.SenderOut(
        sender=row.pattern,
        kind=kind,
        verified=row.verified,
        method=row.method,
        verified_at=row.verified_at,
        proved_by=scope.account_name(caller.engine, proof) if proof is not None else None,
    )


@router.get(
    "/accounts/{name}/senders",
    tags=["senders"],
    summary="The account's senders: verified (how and when) or waiting for their proof",
    responses=responses(404, 422),
)
def list_senders(
    name: AccountName, caller: Authenticated, query: Annotated[s.SenderQuery, Query()]
) -> list[s.SenderOut]:
    caller.run(scope.require, caller.engine, scope.of_account(), account=name)
    rows = caller.run(accounts.list_senders, caller.engine, name, review=query.review)
    return [_sender(caller, row) for row in rows]


@router.get(
    "/senders/review",
    tags=["senders"],
    summary="Senders of every account this token sees that were verified without proof "
    "before proof was required (methods tenant and unreviewed)",
)
def senders_to_review(caller: Authenticated) -> list[s.ReviewedSenderOut]:
    rows = accounts.senders_to_review(caller.engine, caller.scope)
    return [
        s.ReviewedSenderOut(account=name, **_sender(caller, row).model_dump()) for row, name in rows
    ]


@router.post(
    "/accounts/{name}/senders",
    tags=["senders"],
    summary="Verify an address or a whole domain by say-so: the operator, or an agency "
    "for its sub-account with a proof of its own (a tenant proves by DNS or a mailed code)",
    responses=responses(403, 404, 422),
)
def verify_sender(name: AccountName, body: s.SenderIn, caller: Authenticated) -> s.SenderOut:
    return _sender(caller, caller.run(accounts.verify_sender, caller.engine, body.sender, name))


@router.post(
    "/accounts/{name}/senders/{sender}/confirmation",
    status_code=202,
    tags=["senders"],
    summary="Mail a confirmation code to the address (through the account's route); "
    "a new code replaces the last",
    responses=responses(404, 409, 422),
)
def send_code(name: AccountName, sender: SenderPattern, caller: Authenticated) -> s.CodeSent:
    settings = caller.ctx.settings
    sent = caller.run(
        confirmations.send_code,
        caller.engine,
        caller.ctx.box,
        settings.policy,
        settings.server.hostname,
        sender,
        name,
    )
    return s.CodeSent(
        sender=sent.address, state="pending", sent_from=sent.sent_from, expires_at=sent.expires_at
    )


@router.post(
    "/accounts/{name}/senders/{sender}/confirm",
    tags=["senders"],
    summary="Verify the address with the code mailed to it (once; 24 hours; 5 tries)",
    responses=responses(404, 422),
)
def confirm_sender(
    name: AccountName, sender: SenderPattern, body: s.CodeIn, caller: Authenticated
) -> s.SenderOut:
    row = caller.run(confirmations.confirm, caller.engine, caller.ctx.box, sender, name, body.code)
    return _sender(caller, row)


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
