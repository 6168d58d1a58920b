"""``relay suppression ...``: an account's suppression list, its CSV, and a provider's sync."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relay.cli._common import (
    Progress,
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

REASONS = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe", "manual")
ADD_REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")
SUPPRESSION_COLUMNS = ("ADDRESS", "REASON", "SOURCE", "SINCE", "EXPIRES", "DETAIL")


def suppression_row(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """One line of ``relay suppression list``."""
    return (
        entry["address"],
        entry["reason"],
        entry["source"],
        f"{entry['created_at']:%Y-%m-%d %H:%M}",
        f"{entry['expires_at']:%Y-%m-%d %H:%M}" if entry["expires_at"] else "-",
        (entry["detail"] or "-")[:60],
    )


SUPPRESSION_KEYS = ("address", "reason", "source", "created_at", "expires_at", "detail")


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import quick

    a = args
    found = read_quickly(
        settings,
        lambda db: quick.suppressions(db, a.account, a.reason, a.contains, a.limit, a.offset),
    )
    if found is None:
        from relay.service.suppressions import list_suppressions

        entries, total = list_suppressions(
            open_db(settings), args.account, args.reason, args.contains, args.limit, args.offset
        )
        found = [{k: getattr(e, k) for k in SUPPRESSION_KEYS} for e in entries], total
    rows, total = found
    if args.format == "json":
        print_json({"items": rows, "total": total})
        return 0
    print_rows([suppression_row(e) for e in rows], SUPPRESSION_COLUMNS)
    if len(rows) < total:
        print(f"({len(rows)} of {total}; --offset {args.offset + len(rows)} for more)")
    return 0


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.suppressions import add_suppression

    entry, changed = add_suppression(
        open_db(settings), args.account, args.address, args.reason, args.detail
    )
    if changed:
        print(f"suppressed {entry.address} for account {args.account}: {entry.reason}")
    else:
        print(f"{entry.address} already suppressed for account {args.account}: {entry.reason}")
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.suppressions import remove_suppression

    remove_suppression(open_db(settings), args.account, args.address)
    print(f"removed {args.address} from account {args.account}'s suppression list")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from relay.core.errors import Invalid
    from relay.service.suppressions import import_suppressions

    try:
        data = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid(f"cannot read {args.file}: {exc}", "file") from exc
    meter = Progress()
    lines = data.count("\n") + (not data.endswith("\n") and bool(data))
    meter.say(f"importing {lines} line(s) into account {args.account} (checked, then one write)")
    done = import_suppressions(open_db(settings), settings.suppression, args.account, data)
    meter.say(f"done: {done.added} added, {done.unchanged} unchanged")
    print(f"imported into account {args.account}: {done.added} added, {done.unchanged} unchanged")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.suppressions import export_suppressions

    sys.stdout.write(export_suppressions(open_db(settings), args.account))
    return 0


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from relay.core.crypto import secret_box
    from relay.service.suppressions import sync_suppressions

    account, done = sync_suppressions(
        open_db(settings), secret_box(settings), settings.suppression, args.provider
    )
    print(
        f"synced {args.provider}'s suppression lists into account {account}: "
        f"{done.added} added, {done.unchanged} unchanged"
    )
    return 0


def register(sub: Verbs) -> None:
    grp = add_group(sub, "suppression", "suppression lists: addresses an account does not send to")
    account = "the account whose list it is"
    s = add_verb(grp, "list", cmd_list, "list an account's suppressed addresses")
    s.add_argument("--account", required=True, help=account)
    s.add_argument("--reason", choices=REASONS, help="only entries suppressed for this reason")
    s.add_argument("--contains", help="only addresses containing this text")
    s.add_argument("--limit", type=int, default=100, help="at most N entries (default 100)")
    s.add_argument("--offset", type=int, default=0, help="skip the first N entries")
    add_format(s)
    s = add_verb(grp, "add", cmd_add, "suppress an address (a stronger reason replaces a weaker)")
    s.add_argument("address")
    s.add_argument("--account", required=True, help=account)
    s.add_argument("--reason", choices=ADD_REASONS, default="manual", help="why (default: manual)")
    s.add_argument("--detail", help="a note kept with the entry")
    s = add_verb(grp, "remove", cmd_remove, "send to an address again")
    s.add_argument("address")
    s.add_argument("--account", required=True, help=account)
    s = add_verb(
        grp, "import", cmd_import, "add the rows of a CSV (address[,reason,created_at,detail])"
    )
    s.add_argument("file", help="the CSV file, or - for standard input")
    s.add_argument("--account", required=True, help=account)
    s = add_verb(grp, "export", cmd_export, "print an account's list as CSV")
    s.add_argument("--account", required=True, help=account)
    s = add_verb(
        grp,
        "sync",
        cmd_sync,
        "read a SendGrid or SparkPost provider's own suppression lists into its owner's list",
    )
    s.add_argument("--provider", required=True, help="the SendGrid or SparkPost provider")
