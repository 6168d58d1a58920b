"""Bearer tokens of the admin API: create (shown once), list, revoke, authenticate.

A token is ``rly_`` and 32 random bytes (base64url), 256 bits of entropy, so
it is stored as its plain SHA-256 digest: a slow hash such as argon2 guards
low-entropy passwords against guessing, and nothing is left to guess here,
while every API request verifies a token and should cost microseconds. The
digest is looked up by equality and compared again in constant time; the
token itself is printed once and never stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, aliased

from relay.core.errors import Conflict, Invalid, NotFound
from relay.service import scope
from relay.service.accounts import get_account
from relay.service.audit import audited
from relay.service.scope import Actor, Owner
from relay.store.models import Account, ApiToken, utcnow

PREFIX = "rly_"
TOKEN_BYTES = 32
SHOWN = len(PREFIX) + 8  # characters a listing shows to name a token
# Writing last_used_at on every request would make each read a write.
TOUCH_EVERY = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class NewToken:
    id: int
    token: str  # shown once, stored only as its digest
    account: str | None
    operator: bool


@dataclass(frozen=True)
class TokenView:
    id: int
    prefix: str
    account: str | None
    scope: str  # operator | agency | sub-account
    label: str | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _owner_of_new(session: Session, args: Mapping[str, Any]) -> Owner:
    if args["account"]:
        return scope.of_account()(session, args)
    return Owner(None, operator_only=True)


def _owner_of_token(session: Session, args: Mapping[str, Any]) -> Owner:
    owner = session.scalar(select(ApiToken.account_id).where(ApiToken.id == args["token_id"]))
    return Owner(owner, f"token {args['token_id']} does not exist")


def _describe_new(args: Mapping[str, Any]) -> str:
    if args["operator"]:
        return "operator token"
    return f"token for account {args['account']}"


@audited("token.create", _describe_new, _owner_of_new)
def create_token(
    engine: Engine, account: str | None, operator: bool = False, label: str | None = None
) -> NewToken:
    """A token for ``account`` (an agency's also sees its sub-accounts) or, with
    ``operator``, one that sees every account (``account`` then names its holder)."""
    if not operator and not account:
        raise Invalid("name the token's account, or make an operator token", "account")
    if label is not None and len(label) > 200:
        raise Invalid("label must be at most 200 characters", "label")
    token = PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    with Session(engine) as session, session.begin():
        account_id = get_account(session, account).id if account else None
        row = ApiToken(
            token_hash=digest(token),
            prefix=token[:SHOWN],
            account_id=account_id,
            operator=operator,
            label=label,
        )
        session.add(row)
        session.flush()
        token_id = row.id
    return NewToken(token_id, token, account, operator)


def list_tokens(engine: Engine) -> list[TokenView]:
    parent = aliased(Account)
    query = (
        select(ApiToken, Account.name, parent.id)
        .outerjoin(Account, Account.id == ApiToken.account_id)
        .outerjoin(parent, parent.id == Account.parent_id)
        .order_by(ApiToken.id)
    )
    with Session(engine) as session:
        return [_view(t, name, parent_id) for t, name, parent_id in session.execute(query).all()]


def _view(row: ApiToken, account: str | None, parent_id: int | None) -> TokenView:
    kind = "operator" if row.operator else "sub-account" if parent_id else "agency"
    return TokenView(
        row.id,
        row.prefix,
        account,
        kind,
        row.label,
        row.created_at,
        row.last_used_at,
        row.revoked_at,
    )


@audited("token.revoke", lambda args: f"token {args['token_id']}", _owner_of_token)
def revoke_token(engine: Engine, token_id: int) -> None:
    """Refuse the token from now on, on every node (the row is kept for the audit)."""
    with Session(engine) as session, session.begin():
        row = session.get(ApiToken, token_id)
        if row is None:
            raise NotFound(f"token {token_id} does not exist")
        if row.revoked_at is not None:
            raise Conflict(f"token {token_id} is already revoked")
        row.revoked_at = utcnow()


def authenticate(engine: Engine, presented: str) -> Actor | None:
    """The actor a presented token stands for, or None if it is unknown or revoked."""
    if not presented.startswith(PREFIX) or len(presented) > 200:
        return None
    wanted = digest(presented)
    with Session(engine) as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == wanted))
        if row is None or row.revoked_at is not None:
            return None
        # The lookup matched the digest already; this keeps the final say constant-time.
        if not hmac.compare_digest(row.token_hash, wanted):
            return None
        seen = scope.EVERYTHING
        if not row.operator:
            assert row.account_id is not None  # create_token gives every other token one
            seen = scope.scope_of_account(session, row.account_id)
        actor = Actor(f"token:{row.id}", "api", seen, row.account_id)
        stale = row.last_used_at is None or utcnow() - row.last_used_at > TOUCH_EVERY
    if stale:
        _touch(engine, row.id)
    return actor


def _touch(engine: Engine, token_id: int) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow())
        )
