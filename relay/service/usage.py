"""The usage report an operator invoices from: the ledger summed by account and class.

The ledger (``relay.store.models.Usage``) has one ``accepted`` row per message
and class, written with the message, and at most one row per outcome when the
message ends. This module only reads it; ``relay.accounting.report`` does the
arithmetic and the formats.

Which day a recipient counts on: the day it was **accepted**. Outcome rows
carry the day the message ended, which may be later (a message accepted at
23:59 and delivered at 00:01, or retried for days); the report joins each
outcome to its ``accepted`` row and uses that row's day and account. So a
period's figures describe the mail accepted in it: what is billed, and what
became of it, and ``pending`` is exactly what is still in the queue. Counted
by outcome day instead, a period boundary would leave mail pending forever in
one period and negative in the next.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, TypeAlias

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    String,
    and_,
    cast,
    distinct,
    func,
    literal_column,
    null,
    select,
)
from sqlalchemy.orm import Session, aliased

from relay.accounting.ledger import SUPPRESSED
from relay.accounting.report import OUTCOMES, AccountRef, LedgerSums, Report, build_report

# The period's rules live with the report (``relay.service.quick`` reads them too).
from relay.accounting.report import parse_day as parse_day
from relay.accounting.report import parse_period as parse_period
from relay.service.accounts import get_account
from relay.store.models import Account, Usage

# The tag of the message-count rows in the one statement (not an event name).
_MESSAGES = "messages"
# (account id, class, event or _MESSAGES, count): the rows of the one statement.
# A string, so SQLAlchemy 2.0 (whose Select takes one parameter) can import it.
_Sums: TypeAlias = "Select[int, str, str, int]"


def usage_report(
    engine: Engine,
    price_per_1000: Decimal,
    account: str | None = None,
    first: str | dt.date | None = None,
    last: str | dt.date | None = None,
) -> Report:
    """Usage of ``account`` (an agency brings its sub-accounts), or of every
    account, from ``first`` to ``last`` inclusive (either open when None)."""
    first_day, last_day = parse_period(first, last)
    with Session(engine) as session:
        accounts = _selected(session, account)
        ids = [a.id for a in accounts] if account else None
        sums = _ledger_sums(session, ids, first_day, last_day)
    return build_report(accounts, sums, price_per_1000, first_day, last_day)


def _selected(session: Session, name: str | None) -> list[AccountRef]:
    """Every account, or the named one with its sub-accounts when it is an agency."""
    parent = aliased(Account)
    query = select(Account.id, Account.name, parent.name).outerjoin(
        parent, parent.id == Account.parent_id
    )
    if name is not None:
        chosen = get_account(session, name)
        query = query.where((Account.id == chosen.id) | (Account.parent_id == chosen.id))
    return [AccountRef(i, n, p) for i, n, p in session.execute(query).all()]


def _ledger_sums(
    session: Session, ids: list[int] | None, first: dt.date | None, last: dt.date | None
) -> LedgerSums:
    """All the report's sums in one statement (a UNION ALL of three).

    One statement reads one snapshot on both engines. Separate queries could
    see a message accepted and finished between them, counted as ended but not
    as accepted, and print a negative ``pending``.
    """
    accepted = aliased(Usage, name="accepted")
    where = _period_and_accounts(accepted, ids, first, last)
    suppressed = aliased(Usage, name="suppressed")
    statement = _accepted_sums(accepted, where).union_all(
        _outcome_sums(accepted, where),
        _message_counts(accepted, where),
        _accepted_sums(suppressed, _period_and_accounts(suppressed, ids, first, last, SUPPRESSED)),
    )
    return _collect(session.execute(statement).all())


def _accepted_sums(accepted: type[Usage], where: list[ColumnElement[bool]]) -> _Sums:
    """(account, class, "accepted", recipients); likewise for "suppressed", which
    the spool writes with the message, on the day it was refused."""
    return (
        select(accepted.account_id, accepted.kind, accepted.event, func.sum(accepted.recipients))
        .where(*where)
        .group_by(accepted.account_id, accepted.kind, accepted.event)
    )


def _outcome_sums(accepted: type[Usage], where: list[ColumnElement[bool]]) -> _Sums:
    """(account, class, outcome, recipients), each outcome row counted on the
    day and account of its ``accepted`` row (see the module docstring). The
    join follows the ledger's unique key (message_id, kind, event)."""
    ended = aliased(Usage, name="ended")
    same_message_and_class = and_(
        ended.message_id == accepted.message_id,
        ended.kind == accepted.kind,
        ended.event.in_(OUTCOMES),
    )
    return (
        select(accepted.account_id, ended.kind, ended.event, func.sum(ended.recipients))
        .join(ended, same_message_and_class)
        .where(*where)
        .group_by(accepted.account_id, ended.kind, ended.event)
    )


def _message_counts(accepted: type[Usage], where: list[ColumnElement[bool]]) -> _Sums:
    """(account, NULL, "messages", distinct accepted messages): a message has
    one accepted row per class, so it is counted apart from the classes."""
    return (
        select(
            accepted.account_id,
            cast(null(), String()),
            literal_column(f"'{_MESSAGES}'", String()),
            func.count(distinct(accepted.message_id)),
        )
        .where(*where)
        .group_by(accepted.account_id)
    )


def _period_and_accounts(
    accepted: type[Usage],
    ids: list[int] | None,
    first: dt.date | None,
    last: dt.date | None,
    event: str = "accepted",
) -> list[ColumnElement[bool]]:
    where = [accepted.event == event]
    if first is not None:
        where.append(accepted.day >= first)
    if last is not None:
        where.append(accepted.day <= last)
    if ids is not None:
        where.append(accepted.account_id.in_(ids))
    return where


def _collect(rows: Iterable[Sequence[Any]]) -> LedgerSums:
    recipients: dict[tuple[int, str, str], int] = {}
    messages: dict[int, int] = {}
    for account_id, kind, event, n in rows:
        # int(): what SUM and COUNT return differs by engine and driver.
        if event == _MESSAGES:
            messages[int(account_id)] = int(n)
        else:
            recipients[(int(account_id), str(kind), str(event))] = int(n)
    return LedgerSums(recipients, messages)
