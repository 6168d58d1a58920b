"""``relay usage``: billable recipients by class, messages and cost."""

from __future__ import annotations

import argparse
import sys

from relay.cli._common import Verbs, add_verb, open_db
from relay.core.settings import Settings


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    from relay.accounting.report import price, render
    from relay.service.usage import usage_report

    report = usage_report(
        open_db(settings),
        price(settings.billing.price_per_1000),
        args.account,
        args.first,
        args.last,
    )
    sys.stdout.write(render(report, args.format))
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
