"""Who is acting, and which accounts they may see.

An actor is the operator (every account), or an API token: an agency's token
sees the agency and its sub-accounts, a sub-account's token only itself. The
actor of the current call is a context variable: the command line sets the
operator, the admin API sets the token's actor for one request, and the
guards of the service functions (``relay.service.audit.audited``) read it.
A direct call with nothing set is the operator on this machine (the tests,
the demo seed).

Hiding, not refusing: a target outside the actor's scope gets the very
``NotFound`` the service gives for a target that does not exist, word for
word, so a token cannot tell the two apart. Only actions that touch no
tenant's data, such as making a new agency, are refused with ``OperatorOnly``
(403), which says nothing about what exists; so is a tenant's say-so about a
sender of an account it does see (``verify_sender``), after this guard.

Ownership never changes once a row exists (a domain, credential, message,
provider or sub-account never moves to another account), so the owner
resolved in one transaction still owns the target when the service acts in
the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from relay.core.addresses import check_domain, split_username
from relay.core.errors import Invalid, NotFound, OperatorOnly

# The actor lives apart (relay.service.actor): the command line sets it without the ORM.
from relay.service.actor import EVERYTHING as EVERYTHING
from relay.service.actor import LOCAL_OPERATOR as LOCAL_OPERATOR
from relay.service.actor import Actor as Actor
from relay.service.actor import Scope as Scope
from relay.service.actor import acting as acting
from relay.service.actor import current as current
from relay.store.models import Account, Credential, Domain, Message
from relay.store.models import Provider as ProviderRow


def scope_of_account(session: Session, account_id: int) -> Scope:
    """An account and, when it is an agency, its sub-accounts (a sub-account has none)."""
    subs = session.scalars(select(Account.id).where(Account.parent_id == account_id))
    return Scope(frozenset([account_id, *subs]))


def account_name(engine: Engine, account_id: int | None) -> str | None:
    with Session(engine) as session:
        return session.scalar(select(Account.name).where(Account.id == account_id))


def list_domains(engine: Engine, seen_by: Scope, account: str) -> list[Domain]:
    """An account's sending domains (a read the accounts service does not offer yet)."""
    with Session(engine) as session:
        account_id = visible_account(session, seen_by, account)
        query = select(Domain).where(Domain.account_id == account_id).order_by(Domain.name)
        return list(session.scalars(query))


# -- owners: which account a target belongs to ------------------------------------


@dataclass(frozen=True)
class Owner:
    """The account a target belongs to (None: no such target), and what the
    service says when the target does not exist, for when it is hidden.
    ``also``: further targets of the same call (a provider and an account)."""

    account_id: int | None
    hidden: str = ""
    operator_only: bool = False
    unnamed: bool = False  # an optional target the call did not name
    also: tuple[Owner, ...] = ()


# (open session, the call's arguments by name) -> Owner
Resolver = Callable[[Session, Mapping[str, Any]], Owner]


def guard(session: Session, seen_by: Scope, resolve: Resolver, args: Mapping[str, Any]) -> Owner:
    """The target's owner, if it is within ``seen_by``; NotFound or OperatorOnly if not.

    For a restricted actor a missing target is answered here too, with the
    service's own words: the service is then never called with a name that
    another tenant could create in between.
    """
    token = _resolving.set(seen_by)  # names resolve within the scope guarded
    try:
        owner = resolve(session, args)
    finally:
        _resolving.reset(token)
    if not seen_by.everything:
        for target in (owner, *owner.also):
            _check(seen_by, target)
    return owner


def _check(seen_by: Scope, owner: Owner) -> None:
    if owner.unnamed:
        return
    if owner.operator_only:
        raise OperatorOnly("only an operator token may do this")
    if not seen_by.sees(owner.account_id):
        raise NotFound(owner.hidden)


def require(engine: Engine, resolve: Resolver, **args: Any) -> int:
    """For a read: the owner of a target that exists and the current actor may see."""
    with Session(engine) as session:
        owner = guard(session, current().scope, resolve, args)
    if owner.account_id is None:
        raise NotFound(owner.hidden)
    return owner.account_id


def visible_account(session: Session, seen_by: Scope, name: str) -> int:
    """The id of account ``name``, or NotFound if it does not exist or is hidden."""
    owner = guard(session, seen_by, of_account(), {"account": name})
    if owner.account_id is None:
        raise NotFound(owner.hidden)
    return owner.account_id


# -- names: unique per agency tree ---------------------------------------------------
#
# Account and provider names are unique within an agency's tree (the agency and
# its sub-accounts) and an agency's name among agencies, so two trees may both
# have a "shop". Inside a tenant's scope a name is never ambiguous: only what
# the actor sees is considered, so names in other trees are neither found nor
# hinted at. The operator sees every tree: a name held in several is refused
# with the choices, each written ``AGENCY:NAME``, which names exactly one.

QUALIFIER = ":"
# The scope names resolve in: the one ``guard`` checks, else the current actor's.
_resolving: ContextVar[Scope | None] = ContextVar("relay_resolving", default=None)


def _scope(seen_by: Scope | None) -> Scope:
    return seen_by or _resolving.get() or current().scope


def _qualified(session: Session, query: Any, model: Any, name: str) -> Any:
    """``query`` narrowed to ``name``, or to NAME in AGENCY's tree for ``AGENCY:NAME``."""
    agency, sep, short = name.partition(QUALIFIER)
    if sep and agency and short:
        tree = session.scalar(
            select(Account.id).where(Account.name == agency, Account.parent_id.is_(None))
        )
        if tree is not None:
            return query.where(model.tree_id == tree, model.name == short)
    return query.where(model.name == name)


def _one(session: Session, rows: list[Any], what: str, name: str, seen_by: Scope) -> Any:
    """The one row the actor sees, None, or Invalid listing the qualified choices."""
    seen = [r for r in rows if seen_by.sees(r.owner)]
    if len(seen) <= 1:
        return seen[0].id if seen else None
    trees = {r.tree for r in seen}
    agencies = dict(
        session.execute(select(Account.id, Account.name).where(Account.id.in_(trees))).all()
    )
    choices = sorted(f"{agencies.get(r.tree, '?')}{QUALIFIER}{r.name}" for r in seen)
    raise Invalid(f"{what} {name!r} is ambiguous: say which, one of {', '.join(choices)}", what)


def find_account(session: Session, name: str, seen_by: Scope | None = None) -> int | None:
    """The id of the account ``name`` (or ``AGENCY:NAME``) that the actor sees, or None."""
    seen_by = _scope(seen_by)
    query = select(
        Account.id, Account.id.label("owner"), Account.tree_id.label("tree"), Account.name
    )
    rows = list(session.execute(_qualified(session, query, Account, name)).all())
    found: int | None = _one(session, rows, "account", name, seen_by)
    return found


def find_provider(session: Session, name: str, seen_by: Scope | None = None) -> int | None:
    """The id of the provider ``name`` (or ``AGENCY:NAME``) that the actor sees, or None."""
    seen_by = _scope(seen_by)
    query = select(
        ProviderRow.id,
        ProviderRow.account_id.label("owner"),
        ProviderRow.tree_id.label("tree"),
        ProviderRow.name,
    )
    rows = list(session.execute(_qualified(session, query, ProviderRow, name)).all())
    found: int | None = _one(session, rows, "provider", name, seen_by)
    return found


def _account_id(session: Session, name: str) -> int | None:
    return find_account(session, name)


def of_account(arg: str = "account") -> Resolver:
    """The target is the account named by argument ``arg`` (see ``get_account``)."""

    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        name = args[arg]
        return Owner(_account_id(session, name), f"account {name!r} does not exist")

    return resolve


def of_new_account(agency_arg: str = "agency") -> Resolver:
    """A new sub-account belongs to its agency; a new agency to no tenant at all."""
    parent = of_account(agency_arg)

    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        if not args[agency_arg]:
            return Owner(None, operator_only=True)
        return parent(session, args)

    return resolve


def of_credential(arg: str = "username") -> Resolver:
    """An existing SMTP user (``reset_credential``, ``delete_credential``)."""

    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        local, domain = split_username(args[arg])
        owner = session.scalar(
            select(Domain.account_id)
            .join(Credential, Credential.domain_id == Domain.id)
            .where(Credential.username == f"{local}@{domain}")
        )
        return Owner(owner, f"credential {local}@{domain} does not exist")

    return resolve


def of_credential_domain(arg: str = "username") -> Resolver:
    """A new SMTP user belongs to the account of its domain (``create_credential``)."""

    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        _, domain = split_username(args[arg])
        return Owner(
            _domain_owner(session, domain),
            f"domain {domain} is not a sending domain of any account "
            f"(add it with: relay domain add {domain} --account NAME)",
        )

    return resolve


def of_domain(arg: str = "domain") -> Resolver:
    """A sending domain (``list_credentials``)."""

    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        domain = check_domain(args[arg])
        return Owner(_domain_owner(session, domain), f"domain {domain} does not exist")

    return resolve


def _domain_owner(session: Session, domain: str) -> int | None:
    return session.scalar(select(Domain.account_id).where(Domain.name == domain))


def of_message(arg: str = "queue_id") -> Resolver:
    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        queue_id = args[arg]
        owner = session.scalar(select(Message.account_id).where(Message.id == queue_id))
        return Owner(owner, f"message {queue_id} is not in the queue")

    return resolve


def of_held(id_arg: str = "queue_id", account_arg: str = "account") -> Resolver:
    """Release or discard: one message, an account's paused mail, or (operator
    only) every account's paused mail from a sender."""
    by_id, by_account = of_message(id_arg), of_account(account_arg)

    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        if args[id_arg]:
            return by_id(session, args)
        if args[account_arg]:
            return by_account(session, args)
        return Owner(None, operator_only=True)

    return resolve


def of_provider(arg: str = "name", optional: bool = False) -> Resolver:
    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        name = args[arg]
        if name is None and optional:
            return Owner(None, unnamed=True)
        found = find_provider(session, name)
        owner = session.scalar(select(ProviderRow.account_id).where(ProviderRow.id == found))
        return Owner(owner, f"provider {name!r} does not exist")

    return resolve


def each(first: Resolver, *more: Resolver) -> Resolver:
    """A call on several targets: each must be visible; ``first`` owns the call."""

    def resolve(session: Session, args: Mapping[str, Any]) -> Owner:
        owner = first(session, args)
        return replace(owner, also=tuple(other(session, args) for other in more))

    return resolve
