"""The audit log: every change asked through the API or the command line.

A change is recorded by decorating the service function that makes it::

    @audited("credential.reset", target=arg("username"), owner=scope.of_credential())
    def reset_credential(engine, hasher, username, password): ...

The decorator is also the function's tenant guard: before the call it
resolves the target's owner and checks it against the current actor
(``relay.service.scope``), so the command line, the API and any later caller
get the same rule from the same place.

Write-ahead: the entry is written (``pending``) before the function runs and
completed with its result after, so no change is ever made without an entry;
one still ``pending`` means the process stopped mid-change. An entry holds
who (``operator`` or ``token:<id>``), by which way, the action, the target's
name, the time and the result, with the error's message when it failed:
never an argument's value other than the target's name, so never a secret.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from relay.core.errors import Conflict, Invalid, NotFound, OperatorOnly
from relay.service import scope
from relay.service.pages import Page, check_limit, decode_cursor, encode_cursor
from relay.service.scope import Actor, Resolver, Scope
from relay.store.models import Account, AuditEntry

log = logging.getLogger("relay.audit")

P = ParamSpec("P")
R = TypeVar("R")
Target = Callable[[Mapping[str, Any]], str]

_RESULTS: tuple[tuple[type[Exception], str], ...] = (
    (Invalid, "invalid"),
    (NotFound, "not_found"),
    (Conflict, "conflict"),
    (OperatorOnly, "forbidden"),
)


def arg(name: str) -> Target:
    """The target is the value of argument ``name``."""
    return lambda args: str(args[name])


def held_mail(args: Mapping[str, Any]) -> str:
    """One message by id, or paused mail in bulk by the listing's filters."""
    if args.get("queue_id"):
        return str(args["queue_id"])
    keys = ("sender", "account", "reason", "campaign")
    parts = [f"{key} {args[key]}" for key in keys if args.get(key)]
    return "paused mail of " + ", ".join(parts) if parts else "paused mail"


def audited(
    action: str, target: Target, owner: Resolver
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Guard and record calls of a service function whose first argument is the engine."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            engine: Engine = values["engine"]
            entry = _begin(engine, scope.current(), action, target(values), owner, values)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                _finish(engine, entry, *_outcome(exc))
                raise
            _finish(engine, entry, "ok", None)
            return result

        return call

    return wrap


def _begin(
    engine: Engine,
    actor: Actor,
    action: str,
    target: str,
    owner: Resolver,
    values: Mapping[str, Any],
) -> int:
    """Check the actor may act, and write the entry: pending, or refused."""
    with Session(engine) as session, session.begin():
        entry = AuditEntry(
            actor=actor.name,
            via=actor.via,
            actor_account_id=actor.account_id,
            action=action,
            target=target[:400],
            result="pending",
        )
        session.add(entry)
        try:
            entry.account_id = scope.guard(session, actor.scope, owner, values).account_id
        except Exception as exc:
            entry.result, entry.detail = _outcome(exc)
            session.commit()
            raise
        session.flush()
        return entry.id


def _finish(engine: Engine, entry_id: int, result: str, detail: str | None) -> None:
    """Complete the entry. A failure here must not hide the change's own result:
    the change is done (or not) already, and the entry stays ``pending``."""
    try:
        with Session(engine) as session, session.begin():
            session.execute(
                update(AuditEntry)
                .where(AuditEntry.id == entry_id)
                .values(result=result, detail=detail)
            )
    except Exception:
        log.exception("audit entry %d stays pending: could not record %s", entry_id, result)


def _outcome(exc: Exception) -> tuple[str, str | None]:
    """Our own errors carry a message meant for the client; anything else only its kind."""
    for kind, result in _RESULTS:
        if isinstance(exc, kind):
            return result, str(exc)[:2000]
    return "error", type(exc).__name__


# -- reading ----------------------------------------------------------------------


@dataclass(frozen=True)
class EntryView:
    id: int
    at: dt.datetime
    actor: str
    via: str
    action: str
    target: str
    account: str | None
    result: str
    detail: str | None


def list_entries(
    engine: Engine,
    seen_by: Scope = scope.EVERYTHING,
    *,
    account: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> Page[EntryView]:
    """Newest first. A tenant sees the entries about its accounts and those of its tokens."""
    limit = check_limit(limit)
    query = (
        select(AuditEntry, Account.name)
        .outerjoin(Account, Account.id == AuditEntry.account_id)
        .order_by(AuditEntry.id.desc())
    )
    if seen_by.accounts is not None:
        query = query.where(
            or_(
                AuditEntry.account_id.in_(seen_by.accounts),
                AuditEntry.actor_account_id.in_(seen_by.accounts),
            )
        )
    if cursor is not None:
        (last_id,) = decode_cursor(cursor, int)
        query = query.where(AuditEntry.id < last_id)
    with Session(engine) as session:
        if account is not None:
            account_id = scope.visible_account(session, seen_by, account)
            query = query.where(AuditEntry.account_id == account_id)
        rows = session.execute(query.limit(limit + 1)).all()
    items = [_view(e, name) for e, name in rows[:limit]]
    more = len(rows) > limit
    return Page(items, encode_cursor(items[-1].id) if more and items else None)


def _view(entry: AuditEntry, account: str | None) -> EntryView:
    return EntryView(
        entry.id,
        entry.at,
        entry.actor,
        entry.via,
        entry.action,
        entry.target,
        account,
        entry.result,
        entry.detail,
    )
