"""``relay usage``: billable recipients by class, messages and cost."""

from __future__ import annotations

import argparse
import sys

from relay.cli._common import Verbs, add_verb, open_db, read_quickly
from relay.core.settings import Settings


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    if args.limits:
        return _limits(args, settings)
    from relay.accounting.report import price, render
    from relay.service import quick

    cost = price(settings.billing.price_per_1000)
    a = args
    report = read_quickly(settings, lambda db: quick.usage(db, cost, a.account, a.first, a.last))
    if report is None:
        from relay.service.usage import usage_report

        report = usage_report(open_db(settings), cost, args.account, args.first, args.last)
    sys.stdout.write(render(report, args.format))
    return 0


def _limits(args: argparse.Namespace, settings: Settings) -> int:
    """Used and remaining of each limit, now: one account, or every limited one."""
    from dataclasses import asdict

    from relay.cli.limits import print_limited, print_limits
    from relay.service.limits import account_limits, limited_accounts

    engine = open_db(settings)
    if args.account:
        print_limits(asdict(account_limits(engine, args.account)))
    else:
        print_limited([asdict(v) for v in limited_accounts(engine)])
    return 0


def register(sub: Verbs) -> None:
    s = add_verb(sub, "usage", cmd_usage, "billable recipients by class, messages and cost")
    s.add_argument("--account", help="an agency (with its sub-accounts) or a sub-account")
    s.add_argument("--from", dest="first", metavar="DATE", help="first UTC day, YYYY-MM-DD")
    s.add_argument("--to", dest="last", metavar="DATE", help="last UTC day (inclusive)")
    s.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table: readable (default); csv or json for spreadsheets and scripts",
    )
    s.add_argument(
        "--limits",
        action="store_true",
        help="instead: each sending limit's used and remaining now, and when it resets",
    )
