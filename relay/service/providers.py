"""Providers as account resources: add, list, set defaults."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from relay.core.crypto import SecretBox
from relay.core.errors import Conflict, Invalid, NotFound
from relay.service.accounts import check_domain, get_account
from relay.store.models import Account
from relay.store.models import Provider as ProviderRow

KINDS = ("sendgrid", "sparkpost", "smtp", "outbox")
SECRET_KEYS = ("api_key", "smtp_password")


def add_provider(
    engine: Engine,
    box: SecretBox,
    name: str,
    account: str,
    kind: str,
    options: dict[str, Any],
    secrets: dict[str, str],
    domain: str | None = None,
) -> ProviderRow:
    if kind not in KINDS:
        raise Invalid(f"kind must be one of {', '.join(KINDS)}", "kind")
    name = name.strip()
    if not name:
        raise Invalid("provider name is empty", "name")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        owner = get_account(session, account)
        if session.scalar(select(ProviderRow.id).where(ProviderRow.name == name)):
            raise Conflict(f"provider {name!r} already exists")
        row = ProviderRow(
            name=name,
            account_id=owner.id,
            kind=kind,
            options={k: v for k, v in options.items() if v is not None},
            secrets=box.seal(secrets),
            domain=check_domain(domain) if domain else None,
        )
        session.add(row)
    return row


def get_provider(session: Session, name: str) -> ProviderRow:
    row = session.scalar(select(ProviderRow).where(ProviderRow.name == name))
    if row is None:
        raise NotFound(f"provider {name!r} does not exist")
    return row


def set_default(engine: Engine, name: str, account: str, scope: str = "own") -> None:
    """The account's own default, or (an agency's) default for its sub-accounts."""
    if scope not in ("own", "subaccounts"):
        raise Invalid("--for must be own or subaccounts", "for")
    with Session(engine) as session, session.begin():
        owner = get_account(session, account)
        provider = get_provider(session, name)
        _check_usable(session, provider, owner)
        if scope == "subaccounts":
            if owner.parent_id is not None:
                raise Invalid(
                    f"{account} is a sub-account; only an agency has a default for sub-accounts",
                    "account",
                )
            owner.subaccount_provider_id = provider.id
        else:
            owner.default_provider_id = provider.id


def _check_usable(session: Session, provider: ProviderRow, account: Account) -> None:
    """An account may use its own providers and its agency's."""
    if provider.account_id in (account.id, account.parent_id):
        return
    raise Invalid(f"provider {provider.name!r} belongs to another account", "provider")


def list_providers(engine: Engine) -> list[tuple[ProviderRow, str]]:
    with Session(engine) as session:
        rows = session.execute(
            select(ProviderRow, Account.name)
            .join(Account, Account.id == ProviderRow.account_id)
            .order_by(ProviderRow.name)
        ).all()
        return [(p, a) for p, a in rows]
