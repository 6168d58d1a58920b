"""The operator's most typed listings, read without SQLAlchemy (``relay.store.lite``).

Each function answers what the full service read answers for the operator (who
sees every tenant), as the dicts the command line prints, or None when it would
have to resolve, refuse or explain something (a qualified or ambiguous name, a
name that does not exist): the caller then takes the full path, whose errors
stay the one source of wording. ``tests/test_cli_startup.py`` holds each one to
its full read on both engines.

Only for the local command line acting as the operator: no scope is applied.
"""

from __future__ import annotations

from typing import Any

from relay.core.addresses import check_domain
from relay.core.errors import RelayError
from relay.store.lite import Reader

# Qualifies a name by its agency (``relay.service.scope.QUALIFIER``, not imported:
# that module loads the ORM).
_QUALIFIER = ":"
# The review methods of ``relay.service.accounts.REVIEW`` (same reason).
_REVIEW = ("tenant", "unreviewed")


def accounts(db: Reader) -> list[dict[str, Any]]:
    """``relay account list``: every account by name, with its agency's."""
    rows = db.rows(
        "SELECT a.name, p.name AS agency, a.unverified_policy, a.suspended_at,"
        " a.suspended_reason FROM accounts a LEFT JOIN accounts p ON p.id = a.parent_id"
        " ORDER BY a.name"
    )
    for row in rows:
        row["suspended_at"] = db.when(row["suspended_at"])
    return rows


def credentials(db: Reader, domain: str) -> list[dict[str, Any]] | None:
    """``relay credential list DOMAIN``; None for a domain that is not there."""
    try:
        domain = check_domain(domain)
    except RelayError:
        return None
    found = db.rows("SELECT id FROM domains WHERE name = :name", name=domain)
    if not found:
        return None
    rows = db.rows(
        "SELECT username, purpose, unverified_policy, created_at, updated_at"
        " FROM credentials WHERE domain_id = :domain ORDER BY username",
        domain=found[0]["id"],
    )
    return [
        {
            "username": r["username"],
            "purpose": r["purpose"],
            "unverified_policy": r["unverified_policy"],
            "created_at": _iso(db, r["created_at"]),
            "password_set_at": _iso(db, r["updated_at"]),
        }
        for r in rows
    ]


def senders(db: Reader, account: str, review: bool) -> list[dict[str, Any]] | None:
    """``relay sender list --account NAME [--review]``; None unless NAME is one account."""
    found = (
        []
        if _QUALIFIER in account
        else db.rows("SELECT id FROM accounts WHERE name = :name", name=account)
    )
    if len(found) != 1:
        return None
    where = " AND s.verified = :yes AND s.method IN (:m0, :m1)" if review else ""
    rows = db.rows(
        "SELECT s.pattern, s.verified, s.method, s.verified_at, p.name AS proved_by"
        " FROM senders s LEFT JOIN accounts p ON p.id = s.proof_account_id"
        f" WHERE s.account_id = :account{where} ORDER BY s.pattern",
        account=found[0]["id"],
        **({"yes": True, "m0": _REVIEW[0], "m1": _REVIEW[1]} if review else {}),
    )
    return [
        {
            "sender": r["pattern"],
            "verified": db.flag(r["verified"]),
            "method": r["method"],
            "verified_at": _iso(db, r["verified_at"]),
            "proved_by": r["proved_by"],
        }
        for r in rows
    ]


def _iso(db: Reader, value: Any) -> str | None:
    at = db.when(value)
    return at.isoformat() if at else None
