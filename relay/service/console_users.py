"""Console users: who may sign in to the web console, their sessions, their actor.

A console user acts as its account with that account's scope, exactly as an
API token of the account does (``relay.service.tokens``): an agency's user
sees its sub-accounts, another tenant's things are "not found". An operator
user (``relay user create EMAIL --operator``) sees every account, as an
operator token does. ``role`` viewer reads; admin may also change things.

Passwords are argon2id hashes made by the SMTP credentials' hasher
(``relay.auth.passwords``). A session is a 256-bit random cookie stored only
as its SHA-256 digest (nothing to guess, so no slow hash; the same reasoning
as API tokens), with its own CSRF token (OWASP's synchroniser token pattern)
and an expiry renewed as it is used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from relay.auth.passwords import Hasher, generate_password
from relay.core.addresses import check_sender
from relay.core.errors import Conflict, Invalid, NotFound
from relay.service import scope
from relay.service.accounts import get_account
from relay.service.audit import arg, audited
from relay.service.scope import Actor, Owner
from relay.store.models import Account, ConsoleSession, ConsoleUser, utcnow

ROLES = ("admin", "viewer")
SESSION_BYTES = 32
# Writing last_seen_at on every page would make each read a write.
TOUCH_EVERY = dt.timedelta(seconds=60)
MIN_PASSWORD, MAX_PASSWORD = 12, 256


@dataclass(frozen=True)
class NewUser:
    email: str
    password: str  # shown once when generated, stored only as its hash


@dataclass(frozen=True)
class UserView:
    id: int
    email: str
    account: str | None
    operator: bool
    role: str
    created_at: dt.datetime
    last_sign_in_at: dt.datetime | None


@dataclass(frozen=True)
class Identity:
    """A signed-in session: who, with which actor, and the session's CSRF token."""

    user_id: int
    email: str
    role: str
    account: str | None
    actor: Actor
    csrf_token: str

    @property
    def may_change(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class SignedIn:
    cookie: str  # set in the browser, stored only as its digest
    csrf_token: str


def check_email(email: str) -> str:
    """A user's email, lower-cased: an address, not a domain."""
    pattern = check_sender(email.strip())
    if "@" not in pattern or pattern.startswith("*@"):
        raise Invalid(f"{email!r} is not an email address", "email")
    return pattern.lower()


def _check_password(password: str | None) -> str:
    if password is None:
        return generate_password()
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password must be at least {MIN_PASSWORD} characters", "password")
    if len(password) > MAX_PASSWORD:
        raise Invalid(f"password must be at most {MAX_PASSWORD} characters", "password")
    return password


def _owner_of_new(session: Session, args: Mapping[str, Any]) -> Owner:
    if args["account"] and not args["operator"]:
        return scope.of_account()(session, args)
    return Owner(None, operator_only=True)


def _owner_of_user(session: Session, args: Mapping[str, Any]) -> Owner:
    email = args["email"].strip().lower()
    row = session.scalar(select(ConsoleUser).where(ConsoleUser.email == email))
    hidden = f"console user {email} does not exist"
    if row is None:
        return Owner(None, hidden)
    if row.operator:
        return Owner(row.account_id, hidden, operator_only=True)
    return Owner(row.account_id, hidden)


@audited("user.create", arg("email"), _owner_of_new)
def create_user(
    engine: Engine,
    hasher: Hasher,
    email: str,
    account: str | None,
    role: str = "admin",
    operator: bool = False,
    password: str | None = None,
) -> NewUser:
    """A console user of ``account`` (an agency's also sees its sub-accounts), or
    with ``operator`` one that sees every account."""
    email = check_email(email)
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}", "role")
    if not operator and not account:
        raise Invalid("name the user's account, or make an operator user", "account")
    password = _check_password(password)
    with Session(engine) as session, session.begin():
        account_id = get_account(session, account).id if account else None
        if session.scalar(select(ConsoleUser.id).where(ConsoleUser.email == email)):
            raise Conflict(f"console user {email} already exists")
        session.add(
            ConsoleUser(
                email=email,
                account_id=account_id,
                operator=operator,
                role=role,
                password_hash=hasher.hash(password),
            )
        )
    return NewUser(email, password)


def list_users(engine: Engine, seen_by: scope.Scope = scope.EVERYTHING) -> list[UserView]:
    """The users a scope sees (a tenant never sees operator users)."""
    query = (
        select(ConsoleUser, Account.name)
        .outerjoin(Account, Account.id == ConsoleUser.account_id)
        .order_by(ConsoleUser.email)
    )
    with Session(engine) as session:
        rows = session.execute(query).all()
    return [
        UserView(u.id, u.email, name, u.operator, u.role, u.created_at, u.last_sign_in_at)
        for u, name in rows
        if seen_by.everything or (not u.operator and seen_by.sees(u.account_id))
    ]


@audited("user.remove", arg("email"), _owner_of_user)
def remove_user(engine: Engine, email: str) -> None:
    """Remove a user; its sessions end with it."""
    email = email.strip().lower()
    with Session(engine) as session, session.begin():
        row = session.scalar(select(ConsoleUser).where(ConsoleUser.email == email))
        if row is None:
            raise NotFound(f"console user {email} does not exist")
        session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == row.id))
        session.delete(row)


@audited("user.reset_password", arg("email"), _owner_of_user)
def reset_password(engine: Engine, hasher: Hasher, email: str, password: str | None) -> NewUser:
    """A new password (given, or generated and shown once); every session of the user ends."""
    email = email.strip().lower()
    password = _check_password(password)
    with Session(engine) as session, session.begin():
        row = session.scalar(select(ConsoleUser).where(ConsoleUser.email == email))
        if row is None:
            raise NotFound(f"console user {email} does not exist")
        row.password_hash = hasher.hash(password)
        session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == row.id))
    return NewUser(email, password)


# -- sessions -----------------------------------------------------------------------


def digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "surrogateescape")).hexdigest()


def sign_in(
    engine: Engine, hasher: Hasher, email: str, password: str, lifetime: float
) -> SignedIn | None:
    """A new session if the password is right; None otherwise (an unknown email
    costs the same argon2 verification, so it cannot be told from a wrong password)."""
    email = email.strip().lower()[:320]
    with Session(engine) as session:
        row = session.scalar(select(ConsoleUser).where(ConsoleUser.email == email))
        stored = row.password_hash if row is not None else None
        user_id = row.id if row is not None else None
    if not hasher.verify(stored, password[:MAX_PASSWORD]) or user_id is None:
        return None
    cookie = secrets.token_urlsafe(SESSION_BYTES)
    csrf = secrets.token_urlsafe(SESSION_BYTES)
    now = utcnow()
    with Session(engine) as session, session.begin():
        session.add(
            ConsoleSession(
                id=digest(cookie),
                user_id=user_id,
                csrf_token=csrf,
                created_at=now,
                last_seen_at=now,
                expires_at=now + dt.timedelta(seconds=lifetime),
            )
        )
        session.execute(
            update(ConsoleUser).where(ConsoleUser.id == user_id).values(last_sign_in_at=now)
        )
        # The user's expired sessions go now: nothing else would remove them.
        session.execute(
            delete(ConsoleSession).where(
                ConsoleSession.user_id == user_id, ConsoleSession.expires_at <= now
            )
        )
    return SignedIn(cookie, csrf)


def identify(engine: Engine, cookie: str, lifetime: float) -> Identity | None:
    """The signed-in user of a session cookie, or None if unknown or expired."""
    if not cookie or len(cookie) > 200:
        return None
    wanted = digest(cookie)
    now = utcnow()
    with Session(engine) as session:
        found = session.execute(
            select(ConsoleSession, ConsoleUser, Account.name)
            .join(ConsoleUser, ConsoleUser.id == ConsoleSession.user_id)
            .outerjoin(Account, Account.id == ConsoleUser.account_id)
            .where(ConsoleSession.id == wanted)
        ).first()
        if found is None:
            return None
        row, user, account = found
        if not hmac.compare_digest(row.id, wanted) or row.expires_at <= now:
            return None
        seen = scope.EVERYTHING
        if not user.operator:
            assert user.account_id is not None  # create_user gives every other user one
            seen = scope.scope_of_account(session, user.account_id)
        actor = Actor(f"user:{user.id}", "console", seen, user.account_id)
        identity = Identity(user.id, user.email, user.role, account, actor, row.csrf_token)
        stale = now - row.last_seen_at > TOUCH_EVERY
    if stale:
        with Session(engine) as session, session.begin():
            session.execute(
                update(ConsoleSession)
                .where(ConsoleSession.id == wanted)
                .values(last_seen_at=now, expires_at=now + dt.timedelta(seconds=lifetime))
            )
    return identity


def sign_out(engine: Engine, cookie: str) -> None:
    with Session(engine) as session, session.begin():
        session.execute(delete(ConsoleSession).where(ConsoleSession.id == digest(cookie)))
