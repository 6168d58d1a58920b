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

import datetime as dt
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from relay.core.addresses import check_domain
from relay.core.errors import RelayError
from relay.store.lite import Reader

if TYPE_CHECKING:
    from decimal import Decimal

    from relay.accounting.report import Report
    from relay.core.crypto import SecretBox  # loads cryptography: the caller opens it

# Qualifies a name by its agency (``relay.service.scope.QUALIFIER``, not imported:
# that module loads the ORM).
_QUALIFIER = ":"
# The review methods of ``relay.service.accounts.REVIEW`` (same reason).
_REVIEW = ("tenant", "unreviewed")
# ``relay.service.suppressions.MAX_PAGE``: a larger page is refused there.
_MAX_PAGE = 1000


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


def senders(db: Reader, account: str | None, review: bool) -> list[dict[str, Any]] | None:
    """``relay sender list --account NAME [--review]``, or every account's senders to
    review (``--review`` alone, each with its account); None unless NAME is one account."""
    where = " AND s.verified = :yes AND s.method IN (:m0, :m1)" if review else ""
    values: dict[str, Any] = {"yes": True, "m0": _REVIEW[0], "m1": _REVIEW[1]} if review else {}
    if account is not None:
        owner = _account_id(db, account)
        if owner is None:
            return None
        where = " AND s.account_id = :account" + where
        values["account"] = owner
    elif not review:
        return None  # the full path says what to give
    rows = db.rows(
        "SELECT a.name AS account, s.pattern, s.verified, s.method, s.verified_at,"
        " p.name AS proved_by FROM senders s JOIN accounts a ON a.id = s.account_id"
        " LEFT JOIN accounts p ON p.id = s.proof_account_id"
        f" WHERE 1 = 1{where}"
        + (" ORDER BY s.pattern" if account is not None else " ORDER BY a.name, s.pattern"),
        **values,
    )
    return [
        {
            **({"account": r["account"]} if account is None else {}),
            "sender": r["pattern"],
            "verified": db.flag(r["verified"]),
            "method": r["method"],
            "verified_at": _iso(db, r["verified_at"]),
            "proved_by": r["proved_by"],
        }
        for r in rows
    ]


def tokens(db: Reader) -> list[dict[str, Any]]:
    """``relay token list`` (``relay.service.tokens.list_tokens``): never the tokens."""
    rows = db.rows(
        "SELECT t.id, t.prefix, t.operator, a.name AS account, a.parent_id, t.label,"
        " t.created_at, t.last_used_at, t.revoked_at FROM api_tokens t"
        " LEFT JOIN accounts a ON a.id = t.account_id ORDER BY t.id"
    )
    return [
        {
            "id": r["id"],
            "prefix": r["prefix"],
            "scope": "operator" if r["operator"] else "sub-account" if r["parent_id"] else "agency",
            "account": r["account"],
            "label": r["label"],
            "created_at": db.when(r["created_at"]),
            "last_used_at": db.when(r["last_used_at"]),
            "revoked_at": db.when(r["revoked_at"]),
        }
        for r in rows
    ]


def users(db: Reader) -> list[dict[str, Any]]:
    """``relay user list`` (``relay.service.console_users.list_users``): never passwords."""
    rows = db.rows(
        "SELECT u.email, a.name AS account, u.operator, u.role, u.created_at,"
        " u.last_sign_in_at FROM console_users u LEFT JOIN accounts a ON a.id = u.account_id"
        " ORDER BY u.email"
    )
    for r in rows:
        r["operator"] = db.flag(r["operator"])
        r["created_at"] = db.when(r["created_at"])
        r["last_sign_in_at"] = db.when(r["last_sign_in_at"])
    return rows


def suppressions(
    db: Reader, account: str, reason: str | None, contains: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int] | None:
    """``relay suppression list`` (``relay.suppression.lists.entries``): the account's
    own entries by address, expired soft bounces left out; None unless ACCOUNT is
    one account and the page is one the service takes."""
    owner = _account_id(db, account)
    if owner is None or not 1 <= limit <= _MAX_PAGE or offset < 0:
        return None
    where = "account_id = :account AND (expires_at IS NULL OR expires_at > :now)"
    values: dict[str, Any] = {"account": owner, "now": db.at(dt.datetime.now(dt.UTC))}
    if reason:
        where += " AND reason = :reason"
        values["reason"] = reason
    if contains and contains.strip():
        # As SQLAlchemy's ``contains(autoescape=True)``: the text as is, "/" escaping.
        escaped = re.sub(r"([/%_])", r"/\1", contains.strip())
        where += " AND address LIKE :pattern ESCAPE '/'"
        values["pattern"] = f"%{escaped}%"
    total = db.rows(f"SELECT count(*) AS n FROM suppressions WHERE {where}", **values)[0]["n"]
    rows = db.rows(
        "SELECT address, reason, source, created_at, expires_at, detail FROM suppressions"
        f" WHERE {where} ORDER BY address LIMIT :limit OFFSET :offset",
        limit=limit,
        offset=offset,
        **values,
    )
    for r in rows:
        r["created_at"] = db.when(r["created_at"])
        r["expires_at"] = db.when(r["expires_at"])
    return rows, int(total)


def provider_exists(db: Reader, name: str) -> bool | None:
    """True when ``[policy] system_provider`` names one provider (``relay config
    check``); None when only the full look-up can say (a qualified, ambiguous or
    unknown name: it words the error)."""
    if _QUALIFIER in name:
        return None
    return len(db.rows("SELECT id FROM providers WHERE name = :name", name=name)) == 1 or None


# How each kind's legs follow its secrets (``relay.providers.registry.transports``,
# whose records load the HTTP and SMTP clients): whether it writes files, the
# secret its API leg needs (None: no API), whether it has an SMTP leg, and
# whether that relay takes the API's secret as its password. A kind not here
# defers to the registry; a test holds this table to the records.
LEGS: dict[str, tuple[bool, str | None, bool, bool]] = {
    "sendgrid": (False, "api_key", True, True),
    "sparkpost": (False, "api_key", True, True),
    "mailgun": (False, "api_key", True, False),
    "ses": (False, "secret_access_key", True, True),
    "smtp": (False, None, True, True),
    "outbox": (True, None, False, False),
}


def transports(kind: str, secrets: Mapping[str, Any]) -> list[str] | None:
    """The legs of a row of ``kind`` with these secrets: api, smtp, file; None for
    a kind this table does not know."""
    if kind not in LEGS:
        return None
    file, api_secret, smtp, key_is_password = LEGS[kind]
    if file:
        return ["file"]
    out = []
    if api_secret is not None and secrets.get(api_secret):
        out.append("api")
    if smtp and (
        api_secret is None
        or secrets.get("smtp_password")
        or (key_is_password and secrets.get(api_secret))
    ):
        out.append("smtp")
    return out


def providers(db: Reader, box: SecretBox) -> list[dict[str, Any]] | None:
    """``relay provider list``: every provider by name with its owner, and how it
    sends (its secrets say; never shown); None if a kind needs the registry."""
    rows = db.rows(
        "SELECT p.name, p.kind, p.secrets, a.name AS account, p.domain, p.options"
        " FROM providers p JOIN accounts a ON a.id = p.account_id ORDER BY p.name"
    )
    items = []
    for r in rows:
        legs = transports(r["kind"], box.open(r["secrets"]))
        if legs is None:
            return None
        options = db.doc(r["options"]) or {}
        items.append(
            {
                "name": r["name"],
                "kind": r["kind"],
                "transports": "+".join(legs) or "-",
                "account": r["account"],
                "domain": r["domain"],
                "ip_pool": options.get("ip_pool"),
            }
        )
    return items


# ``relay.providers.registry.SECRETS``: the secrets a provider row may hold.
SECRETS = ("api_key", "smtp_password", "webhook_key", "secret_access_key")


def provider(db: Reader, box: SecretBox, name: str) -> dict[str, Any] | None:
    """``relay provider show NAME`` (``relay.service.providers.show_provider``):
    secrets masked; None unless NAME is one provider of a kind this module knows."""
    from relay.core.crypto import mask

    if _QUALIFIER in name:
        return None
    found = db.rows(
        "SELECT p.id, p.name, p.kind, p.options, p.secrets, p.domain, a.name AS account"
        " FROM providers p LEFT JOIN accounts a ON a.id = p.account_id WHERE p.name = :name",
        name=name,
    )
    if len(found) != 1:
        return None
    row = found[0]
    secrets = box.open(row["secrets"])
    legs = transports(row["kind"], secrets)
    if legs is None:
        return None
    used_by = db.rows(
        "SELECT name FROM accounts WHERE default_provider_id = :id"
        " OR subaccount_provider_id = :id OR assigned_provider_id = :id ORDER BY name",
        id=row["id"],
    )
    return {
        "name": row["name"],
        "kind": row["kind"],
        "transports": "+".join(legs),
        "account": row["account"],
        "domain": row["domain"],
        "options": dict(db.doc(row["options"]) or {}),
        "secrets": {k: mask(secrets.get(k)) for k in SECRETS if secrets.get(k)},
        "used_by": [r["name"] for r in used_by],
    }


def messages(
    db: Reader, state: str | None, account: str | None, limit: int
) -> list[dict[str, Any]] | None:
    """``relay queue list [--state S] [--account A] [--limit N]``, newest first
    (``relay.service.queue.page_messages``); None for what only it checks (an
    unknown state, a name that is not one account, a limit below 1)."""
    from relay.core.outcomes import MessageState

    if limit < 1 or (state is not None and state not in set(MessageState)):
        return None
    where: list[str] = []
    values: dict[str, Any] = {}
    if state is not None:
        where.append("m.state = :state")
        values["state"] = state
    if account is not None:
        owner = _account_id(db, account)
        if owner is None:
            return None
        where.append("m.account_id = :account")
        values["account"] = owner
    rows = db.rows(
        "SELECT m.id, m.state, a.name AS account, m.mail_from, m.size, m.attempts,"
        " m.created_at, m.reason FROM messages m JOIN accounts a ON a.id = m.account_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY m.created_at DESC, m.id DESC LIMIT :limit",
        limit=limit,
        **values,
    )
    for r in rows:
        r["created_at"] = _iso(db, r["created_at"])
    return rows


def usage(
    db: Reader, price_per_1000: Decimal, account: str | None, first: str | None, last: str | None
) -> Report | None:
    """``relay usage`` (``relay.service.usage.usage_report``): the ledger's sums in one
    statement (one snapshot: see ``_ledger_sums`` there), by the accepted row's day
    and account; None unless ACCOUNT, when given, is one account."""
    from relay.accounting.report import (
        OUTCOMES,
        AccountRef,
        LedgerSums,
        build_report,
        parse_period,
    )

    first_day, last_day = parse_period(first, last)  # refuses as the full path does
    values: dict[str, Any] = {}
    chosen = ""
    if account is not None:
        owner = _account_id(db, account)
        if owner is None:
            return None
        chosen = " WHERE a.id = :owner OR a.parent_id = :owner"
        values["owner"] = owner
    accounts = [
        AccountRef(r["id"], r["name"], r["agency"])
        for r in db.rows(
            "SELECT a.id, a.name, p.name AS agency FROM accounts a"
            f" LEFT JOIN accounts p ON p.id = a.parent_id{chosen}",
            **values,
        )
    ]
    where = ""
    if first_day is not None:
        where += " AND {t}.day >= :first"
        values["first"] = db.day(first_day)
    if last_day is not None:
        where += " AND {t}.day <= :last"
        values["last"] = db.day(last_day)
    if account is not None:
        ids = [a.id for a in accounts]
        values.update({f"a{i}": v for i, v in enumerate(ids)})
        where += " AND {t}.account_id IN (" + ", ".join(f":a{i}" for i in range(len(ids))) + ")"
    outcomes = ", ".join(f"'{o}'" for o in OUTCOMES)
    accepted = "accepted.event = 'accepted'" + where.format(t="accepted")
    rows = db.rows(
        "SELECT accepted.account_id, accepted.kind, accepted.event,"
        " SUM(accepted.recipients) AS n FROM usage accepted"
        f" WHERE {accepted} GROUP BY accepted.account_id, accepted.kind, accepted.event"
        " UNION ALL SELECT accepted.account_id, ended.kind, ended.event, SUM(ended.recipients)"
        " FROM usage accepted JOIN usage ended ON ended.message_id = accepted.message_id"
        f" AND ended.kind = accepted.kind AND ended.event IN ({outcomes})"
        f" WHERE {accepted} GROUP BY accepted.account_id, ended.kind, ended.event"
        " UNION ALL SELECT accepted.account_id, CAST(NULL AS VARCHAR), 'messages',"
        f" COUNT(DISTINCT accepted.message_id) FROM usage accepted WHERE {accepted}"
        " GROUP BY accepted.account_id"
        " UNION ALL SELECT suppressed.account_id, suppressed.kind, suppressed.event,"
        " SUM(suppressed.recipients) FROM usage suppressed"
        " WHERE suppressed.event = 'suppressed'" + where.format(t="suppressed") + " GROUP BY"
        " suppressed.account_id, suppressed.kind, suppressed.event",
        **values,
    )
    recipients: dict[tuple[int, str, str], int] = {}
    messages: dict[int, int] = {}
    for r in rows:
        # The first SELECT names the columns of the union; int(): drivers differ.
        account_id, kind, event, n = r["account_id"], r["kind"], r["event"], r["n"]
        if event == "messages":  # the message counts' tag, not an event
            messages[int(account_id)] = int(n)
        else:
            recipients[(int(account_id), str(kind), str(event))] = int(n)
    return build_report(
        accounts, LedgerSums(recipients, messages), price_per_1000, first_day, last_day
    )


def message(db: Reader, queue_id: str) -> dict[str, Any] | None:
    """``relay queue show ID`` (``relay.service.queue.show_message``): the message, its
    recipients, attempts and provider events; None for an id not in the queue."""
    found = db.rows(
        "SELECT m.id, m.state, m.reason, a.name AS account, m.mail_from, m.header_from,"
        " m.size, m.campaign, m.attempts, m.created_at, m.next_attempt_at, m.expires_at"
        " FROM messages m JOIN accounts a ON a.id = m.account_id WHERE m.id = :id",
        id=queue_id,
    )
    if not found:
        return None
    m = found[0]
    recipients = db.rows(
        "SELECT address, kind, state, reply FROM recipients WHERE message_id = :id ORDER BY id",
        id=queue_id,
    )
    attempts = db.rows(
        "SELECT at, provider, transport, result, code, text, duration FROM attempts"
        " WHERE message_id = :id ORDER BY id",
        id=queue_id,
    )
    events = db.rows(
        "SELECT e.at, e.type, e.address, e.bounce_class, e.detail, p.name AS provider"
        " FROM events e LEFT JOIN providers p ON p.id = e.provider_id"
        " WHERE e.message_id = :id ORDER BY e.at, e.id",
        id=queue_id,
    )
    for a in attempts:
        a["at"] = _iso(db, a["at"])
        a["duration"] = round(a["duration"], 4)
    for e in events:
        e["at"] = _iso(db, e["at"])
    return {
        "id": m["id"],
        "state": m["state"],
        "reason": m["reason"],
        "account": m["account"],
        "from": m["mail_from"],
        "header_from": m["header_from"],
        "size": m["size"],
        "campaign": m["campaign"],
        "attempts": m["attempts"],
        "created": _iso(db, m["created_at"]),
        "next_attempt": _iso(db, m["next_attempt_at"]),
        "expires": _iso(db, m["expires_at"]),
        "recipients": recipients,
        "history": attempts,
        "events": events,
    }


# -- shared ----------------------------------------------------------------------------


def _account_id(db: Reader, name: str) -> int | None:
    """The one account of this plain name; None for a qualified, ambiguous or unknown one."""
    if _QUALIFIER in name:
        return None
    found = db.rows("SELECT id FROM accounts WHERE name = :name", name=name)
    return int(found[0]["id"]) if len(found) == 1 else None


def _iso(db: Reader, value: Any) -> str | None:
    at = db.when(value)
    return at.isoformat() if at else None
