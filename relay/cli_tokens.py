"""``relay token ...`` and ``relay audit``: the admin API's tokens and the audit log.

Tokens are made on the relay's own machine (the database is the trust root:
the first token cannot come from the API); ``relay audit`` also works
remotely (``relay.remote``), printed by the same ``print_audit``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from relay.cli import _engine, _print_rows
from relay.core.settings import Settings

Group = Callable[..., "argparse._SubParsersAction[argparse.ArgumentParser]"]


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.tokens import create_token

    new = create_token(_engine(settings), args.account, args.operator, args.label)
    sees = "every account" if new.operator else f"account {new.account}"
    print(f"created token {new.id}: it sees {sees}")
    print(f"token: {new.token}")
    print("(shown once: it is stored only as a hash)")
    return 0


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.tokens import list_tokens

    def when(at: Any) -> str:
        return at.strftime("%Y-%m-%d %H:%M") if at else "-"

    rows = [
        (
            t.id,
            t.prefix + "...",
            t.scope,
            t.account or "-",
            "revoked" if t.revoked_at else "active",
            when(t.created_at),
            when(t.last_used_at),
            t.label or "",
        )
        for t in list_tokens(_engine(settings))
    ]
    header = ("ID", "TOKEN", "SCOPE", "ACCOUNT", "STATE", "CREATED", "LAST-USED", "LABEL")
    _print_rows(rows, header)
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.tokens import revoke_token

    revoke_token(_engine(settings), args.id)
    print(f"revoked token {args.id}; it is refused from now on")
    return 0


def print_audit(entries: Sequence[dict[str, Any]]) -> None:
    """Audit entries, as the service or the API gives them (``at`` a datetime or text)."""
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
    _print_rows(rows, ("TIME", "ACTOR", "VIA", "ACTION", "TARGET", "ACCOUNT", "RESULT", "DETAIL"))


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.audit import list_entries

    page = list_entries(_engine(settings), account=args.account, limit=args.limit)
    print_audit([vars(e) for e in page.items])
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    group: Group,
    make: Callable[..., argparse.ArgumentParser],
) -> None:
    """Add ``relay token`` and ``relay audit`` (``group``, ``make``: cli._group, cli._sub)."""
    tok = group(sub, "token", "admin API tokens (this machine's database only)")
    s = make(tok, "create", cmd_token_create, "create a token; it is printed once")
    s.add_argument("--account", help="the account it sees (an agency's: with its sub-accounts)")
    s.add_argument("--operator", action="store_true", help="it sees every account")
    s.add_argument("--label", help="a note to tell tokens apart")
    make(tok, "list", cmd_token_list, "list tokens (never the tokens themselves)")
    s = make(tok, "revoke", cmd_token_revoke, "refuse a token from now on")
    s.add_argument("id", type=int)
    s = make(sub, "audit", cmd_audit, "changes made through the API or the command line")
    s.add_argument("--account", help="only changes to this account")
    s.add_argument("--limit", type=int, default=100, help="newest N (at most 500)")
