"""What every group of verbs shares: the database of one invocation, tables, the parser's helpers.

Kept light on purpose: ``relay --help`` builds the whole parser, so nothing
here (nor at the top of a verb module) imports SQLAlchemy or the service
layer; a verb imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from relay.core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

Handler = Callable[[argparse.Namespace, Settings], int]
# A parser's set of sub-commands (a string: argparse's class is not generic at run time).
Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


_ENGINES: list[Engine] = []


def open_db(settings: Settings) -> Engine:
    """The database for this invocation; main() closes its pool before exiting."""
    from relay.store.engine import make_engine, migrate

    engine = make_engine(settings.database.url, settings.database.pool_size)
    migrate(engine)
    _ENGINES.append(engine)
    return engine


def dispose_engines() -> None:
    while _ENGINES:
        _ENGINES.pop().dispose()


def print_rows(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """A table as the local and the remote verbs print it (``relay.cli.remote``)."""
    table = [list(map(str, header))] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def add_verb(parent: Verbs, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
    parser = parent.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler)
    return parser


def add_group(parent: Verbs, name: str, help_: str) -> Verbs:
    parser = parent.add_parser(name, help=help_, description=help_)
    return parser.add_subparsers(dest=f"{name}_verb", required=True, metavar="VERB")
