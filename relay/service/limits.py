"""Sending limits of accounts and credentials: set them, and read their use.

Set by the operator, or by an agency for its sub-accounts and their
credentials, within its own limits: where an agency has a limit, the sum of
its sub-accounts' (those that have one) may not pass it, and an agency may
not leave one of its sub-accounts without it. A credential's limit may not
pass its account's. Whatever is set, the agency's own limits also count all
its tree's traffic when mail is sent (``relay.limits.leases``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from relay.core.addresses import split_username
from relay.core.errors import Conflict, Invalid, OperatorOnly
from relay.core.limits import BY_NAME, KINDS, check_value, parse_spec, spell
from relay.limits.usage import LimitUse, uses
from relay.service import scope
from relay.service.accounts import get_account
from relay.service.audit import arg, audited
from relay.store.models import Account, Credential, Domain


@dataclass(frozen=True)
class LimitsView:
    subject: str  # "account acme", "credential app@acme.test"
    limits: list[LimitUse] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def parse_changes(
    max_messages: Sequence[str] | None = None,
    max_recipients: Sequence[str] | None = None,
    max_sessions: str | int | None = None,
) -> dict[str, int | None]:
    """The options as given (``100/min``, ``off``...) -> {limit name: value or None}."""
    changes: dict[str, int | None] = {}
    for counts, specs in (("messages", max_messages), ("recipients", max_recipients)):
        for spec in specs or ():
            changes.update(parse_spec(spec, counts))
    if max_sessions is not None:
        text = str(max_sessions).strip().lower()
        if text in ("off", "none"):
            changes["sessions"] = None
        elif text.isdigit():
            changes["sessions"] = check_value(int(text), "sessions")
        else:
            raise Invalid(f"--max-sessions {max_sessions!r}: give a number, or off", "max_sessions")
    return changes


def _values(row: Account | Credential) -> dict[str, int | None]:
    return {k.name: getattr(row, f"max_{k.name}") for k in KINDS}


def _view(session: Session, key: str, label: str, row: Account | Credential) -> LimitsView:
    return LimitsView(label, uses(session.connection(), key, _values(row), time.time()))


def _guard(account: Account) -> None:
    """Operator, or the agency of a sub-account (never an account's own token:
    limits are set from above)."""
    actor = scope.current()
    if actor.scope.everything or actor.account_id is None:
        return
    if account.parent_id is None or actor.account_id != account.parent_id:
        raise OperatorOnly("only an operator, or its agency for a sub-account, may set its limits")


def _check_tree(session: Session, account: Account, new: Mapping[str, int | None]) -> None:
    """An agency's limits cap the sum of its sub-accounts' (the new values included)."""
    actor = scope.current()
    if account.parent_id is None:
        subs = _children(session, account.id)
        for name, value in new.items():
            total = sum(v for c in subs if (v := getattr(c, f"max_{name}")) is not None)
            if value is not None and total > value:
                raise Conflict(
                    f"the sub-accounts of {account.name} have {_spell(name, total)} of "
                    f"{name} in all, more than {_spell(name, value)}: lower theirs first"
                )
        return
    agency = session.get(Account, account.parent_id)
    assert agency is not None
    children = [c for c in _children(session, agency.id) if c.id != account.id]
    for name, value in new.items():
        cap = getattr(agency, f"max_{name}")
        if cap is None:
            continue
        if value is None:
            if actor.scope.everything:
                continue  # the operator may; the agency's ceiling still holds at send time
            raise Conflict(
                f"agency {agency.name} has {name} {_spell(name, cap)}: "
                f"its sub-account {account.name} needs one too, within it"
            )
        total = value + sum(v for c in children if (v := getattr(c, f"max_{name}")) is not None)
        if total > cap:
            raise Conflict(
                f"the sub-accounts of agency {agency.name} would have {_spell(name, total)} "
                f"of {name} in all, more than the agency's {_spell(name, cap)}"
            )


def _children(session: Session, agency_id: int) -> list[Account]:
    return list(session.scalars(select(Account).where(Account.parent_id == agency_id)))


def _spell(name: str, value: int) -> str:
    return spell(BY_NAME[name], value)


def _apply(row: Account | Credential, changes: Mapping[str, int | None]) -> list[str]:
    for name, value in changes.items():
        setattr(row, f"max_{name}", value)
    return [f"max_{name}" for name in changes]


@audited("account.limits", arg("name"), scope.of_account("name"))
def set_account_limits(engine: Engine, name: str, changes: Mapping[str, int | None]) -> LimitsView:
    """Set (or clear, None) an account's limits; the view of them after."""
    if not changes:
        raise Invalid("nothing to change: give --max-messages, --max-recipients or --max-sessions")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        account = get_account(session, name)
        _guard(account)
        _check_tree(session, account, changes)
        changed = _apply(account, changes)
        session.flush()
        view = _view(session, f"a:{account.id}", f"account {account.name}", account)
    return LimitsView(view.subject, view.limits, changed)


def _credential(session: Session, username: str) -> tuple[Credential, Account]:
    row = session.execute(
        select(Credential, Account)
        .join(Domain, Domain.id == Credential.domain_id)
        .join(Account, Account.id == Domain.account_id)
        .where(Credential.username == "@".join(split_username(username)))
    ).first()
    if row is None:  # the scope guard said it exists
        raise Invalid(f"credential {username} does not exist", "username")
    return row[0], row[1]


@audited("credential.limits", arg("username"), scope.of_credential("username"))
def set_credential_limits(
    engine: Engine, username: str, changes: Mapping[str, int | None]
) -> LimitsView:
    """Set (or clear) a credential's limits, each within its account's (a credential
    without one is held by its account's alone)."""
    if not changes:
        raise Invalid("nothing to change: give --max-messages, --max-recipients or --max-sessions")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        credential, account = _credential(session, username)
        actor = scope.current()
        if not actor.scope.everything and actor.account_id not in (account.id, account.parent_id):
            raise OperatorOnly("only an operator or the account's agency may set its limits")
        if not actor.scope.everything and actor.account_id == account.id and account.parent_id:
            raise OperatorOnly("only an operator or the account's agency may set its limits")
        for name, value in changes.items():
            cap = getattr(account, f"max_{name}")
            if cap is not None and value is not None and value > cap:
                raise Conflict(
                    f"{name} of credential {credential.username} would be "
                    f"{spell(BY_NAME[name], value)}, past its account {account.name}'s "
                    f"{_spell(name, cap)}"
                )
        changed = _apply(credential, changes)
        session.flush()
        view = _view(session, f"c:{credential.id}", f"credential {credential.username}", credential)
    return LimitsView(view.subject, view.limits, changed)


def account_limits(engine: Engine, name: str) -> LimitsView:
    """An account's limits with used, remaining and reset (the caller's scope checked)."""
    scope.require(engine, scope.of_account("name"), name=name)
    with Session(engine) as session:
        account = get_account(session, name)
        return _view(session, f"a:{account.id}", f"account {account.name}", account)


def credential_limits(engine: Engine, username: str) -> LimitsView:
    scope.require(engine, scope.of_credential("username"), username=username)
    with Session(engine) as session:
        credential, _ = _credential(session, username)
        return _view(session, f"c:{credential.id}", f"credential {credential.username}", credential)


def limited_accounts(engine: Engine) -> list[LimitsView]:
    """Every account the caller sees that has a limit, with its use (``relay usage --limits``)."""
    seen = scope.current().scope
    columns = [getattr(Account, f"max_{k.name}") for k in KINDS]
    with Session(engine) as session:
        rows = session.scalars(
            select(Account).where(func.coalesce(*columns).is_not(None)).order_by(Account.name)
        ).all()
        return [
            _view(session, f"a:{a.id}", f"account {a.name}", a) for a in rows if seen.sees(a.id)
        ]
