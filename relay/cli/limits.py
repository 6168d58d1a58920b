"""Sending limits on the command line: the options of ``account edit`` and
``credential edit``, and how limits and their use are printed (locally, by
``relay usage --limits``, and by ``relay.cli.remote`` from the API's answer)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from relay.cli._common import print_rows

LIMIT_COLUMNS = ("LIMIT", "VALUE", "USED", "REMAINING", "RESETS")


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-messages",
        action="append",
        metavar="N/UNIT",
        help="messages per minute or hour: 100/min, 5000/hour (repeat for both); "
        "off clears both, off/min one",
    )
    parser.add_argument(
        "--max-recipients",
        action="append",
        metavar="N/UNIT",
        help="recipient quota per hour or UTC day: 50000/day, 5000/hour (repeat for both); "
        "off clears both, off/day one",
    )
    parser.add_argument(
        "--max-sessions", metavar="N", help="concurrent SMTP sessions (checked at AUTH); off clears"
    )


def limit_options_given(args: argparse.Namespace) -> bool:
    return any(
        getattr(args, name, None) is not None
        for name in ("max_messages", "max_recipients", "max_sessions")
    )


def limit_body(args: argparse.Namespace) -> dict[str, Any]:
    """The options as the API's body (``PATCH .../limits``)."""
    body = {
        "max_messages": args.max_messages,
        "max_recipients": args.max_recipients,
        "max_sessions": args.max_sessions,
    }
    return {key: value for key, value in body.items() if value is not None}


def print_limits(view: dict[str, Any]) -> None:
    """One subject's limits with their use (``view``: the API's ``LimitsOut``)."""
    if view.get("changed"):
        print(f"set limits of {view['subject']}: {', '.join(view['changed'])}")
    else:
        print(f"limits of {view['subject']}")
    print_rows(_rows(view["limits"]), LIMIT_COLUMNS)


def print_limited(views: Sequence[dict[str, Any]]) -> None:
    """Every account with a limit (``relay usage --limits``)."""
    rows = [(v["subject"].removeprefix("account "), *r) for v in views for r in _rows(v["limits"])]
    print_rows(rows, ("ACCOUNT", *LIMIT_COLUMNS))


def _rows(uses: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (u["limit"], u["value"], u["used"], u["remaining"], u["resets_at"] or "-") for u in uses
    ]
