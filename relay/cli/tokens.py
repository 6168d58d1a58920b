"""``relay token ...`` and ``relay audit``: the admin API's tokens and the audit log.

Tokens are made on the relay's own machine (the database is the trust root:
the first token cannot come from the API); ``relay audit`` also works
remotely (``relay.cli.remote``), printed by the same ``print_audit``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from relay.cli._common import (
    Verbs,
    add_format,
    add_group,
    add_verb,
    open_db,
    print_json,
    print_rows,
    read_quickly,
)
from relay.core.settings import Settings


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.tokens import create_token

    new = create_token(open_db(settings), args.account, args.operator, args.label)
    sees = "every account" if new.operator else f"account {new.account}"
    print(f"created token {new.id}: it sees {sees}")
    print(f"token: {new.token}")
    print("(shown once: it is stored only as a hash)")
    return 0


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import quick

    def when(at: Any) -> str:
        return at.strftime("%Y-%m-%d %H:%M") if at else "-"

    keys = ("id", "prefix", "scope", "account", "label", "created_at", "last_used_at")
    found = read_quickly(settings, quick.tokens)
    if found is None:
        from relay.service.tokens import list_tokens

        found = [
            {**{k: getattr(t, k) for k in keys}, "revoked_at": t.revoked_at}
            for t in list_tokens(open_db(settings))
        ]
    if args.format == "json":
        print_json(found)
        return 0
    rows = [
        (
            t["id"],
            t["prefix"] + "...",
            t["scope"],
            t["account"] or "-",
            "revoked" if t["revoked_at"] else "active",
            when(t["created_at"]),
            when(t["last_used_at"]),
            t["label"] or "",
        )
        for t in found
    ]
    header = ("ID", "TOKEN", "SCOPE", "ACCOUNT", "STATE", "CREATED", "LAST-USED", "LABEL")
    print_rows(rows, header)
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.tokens import revoke_token

    revoke_token(open_db(settings), args.id)
    print(f"revoked token {args.id}; it is refused from now on")
    return 0


def print_audit(entries: Sequence[dict[str, Any]], fmt: str = "table") -> None:
    """Audit entries, as the service or the API gives them (``at`` a datetime or text)."""
    if fmt == "json":
        print_json(list(entries))
        return
    rows = [
        (
            str(e["at"]).replace("T", " ")[:19],
            e["actor"],
            e["via"],
            e["action"],
            e["target"],
            e["account"] or "-",
            e["result"],
            e["detail"] or "",
        )
        for e in entries
    ]
    print_rows(rows, ("TIME", "ACTOR", "VIA", "ACTION", "TARGET", "ACCOUNT", "RESULT", "DETAIL"))


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.audit import list_entries

    page = list_entries(open_db(settings), account=args.account, limit=args.limit)
    print_audit([vars(e) for e in page.items], args.format)
    return 0


def register(sub: Verbs) -> None:
    """Add ``relay token`` and ``relay audit``."""
    tok = add_group(sub, "token", "admin API tokens (this machine's database only)")
    s = add_verb(tok, "create", cmd_token_create, "create a token; it is printed once")
    s.add_argument("--account", help="the account it sees (an agency's: with its sub-accounts)")
    s.add_argument("--operator", action="store_true", help="it sees every account")
    s.add_argument("--label", help="a note to tell tokens apart")
    add_format(add_verb(tok, "list", cmd_token_list, "list tokens (never the tokens themselves)"))
    s = add_verb(tok, "revoke", cmd_token_revoke, "refuse a token from now on")
    s.add_argument("id", type=int)
    s = add_verb(sub, "audit", cmd_audit, "changes made through the API or the command line")
    s.add_argument("--account", help="only changes to this account")
    s.add_argument("--limit", type=int, default=100, help="newest N (at most 500)")
    add_format(s)
