"""What every group of verbs shares: the database of one invocation, tables, the parser's helpers.

Kept light on purpose: ``relay --help`` builds the whole parser, so nothing
here (nor at the top of a verb module) imports SQLAlchemy or the service
layer; a verb imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias, TypeVar

from relay.core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from relay.store.lite import Reader

Handler = Callable[[argparse.Namespace, Settings], int]
# A parser's set of sub-commands (a string: argparse's class is not generic at run time).
Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


_ENGINES: list[Engine] = []


def open_db(settings: Settings) -> Engine:
    """The database for this invocation; main() closes its pool before exiting."""
    from relay.store.engine import make_engine, migrate, schema_current

    engine = make_engine(settings.database.url, settings.database.pool_size)
    if not schema_current(engine):  # alembic only when there is work for it
        migrate(engine)
    _ENGINES.append(engine)
    return engine


T = TypeVar("T")


def read_quickly(settings: Settings, read: Callable[[Reader], T | None]) -> T | None:
    """``read`` by the database driver alone (``relay.service.quick``), or None: then
    the verb takes its full path (``open_db`` and the service layer). A listing
    so answered loads neither SQLAlchemy nor the models: a quarter to half a
    second less at start (``bench/startup.py``)."""
    from relay.store.lite import read_with

    found: T | None = read_with(settings.database.url, read)
    return found


def dispose_engines() -> None:
    while _ENGINES:
        _ENGINES.pop().dispose()


def print_rows(rows: Sequence[Sequence[Any]], header: Sequence[str], indent: str = "") -> None:
    """A table as the local and the remote verbs print it (``relay.cli.remote``)."""
    table = [list(map(str, header))] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def add_format(parser: argparse.ArgumentParser) -> None:
    """``--format table|json``: a table (or ``key: value`` lines) for people, JSON for scripts."""
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table: readable (default); json: the same data for scripts",
    )


def print_json(data: Any) -> None:
    """JSON as every ``--format json`` prints it: indented, times in ISO 8601."""
    print(json.dumps(data, indent=2, default=_iso))


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items() if v is not None) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(_cell, value)) or "-"
    return _iso(value).replace("T", " ") if hasattr(value, "isoformat") else str(value)


def print_block(data: Mapping[str, Any]) -> None:
    """One record as ``key: value`` lines; a list of records under it as a table."""
    scalars = {k: v for k, v in data.items() if not _is_records(v)}
    width = max((len(k) for k in scalars), default=0)
    for key, value in scalars.items():
        print(f"{key + ':':<{width + 1}} {_cell(value)}")
    for key, value in data.items():
        if _is_records(value):
            print(f"\n{key}:")
            header = list(value[0])
            rows = [[_cell(item.get(h)) for h in header] for item in value]
            print_rows(rows, [h.upper().replace("_", "-") for h in header], indent="  ")


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) for i in value)


class Progress:
    """Progress of a slow verb on standard error (standard output stays the answer):
    each step as it ends, with the time since the verb began."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._start = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self._start
        print(f"{text} ({elapsed:.1f} s)", file=self._stream or sys.stderr, flush=True)


def add_verb(parent: Verbs, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
    parser = parent.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler)
    return parser


def add_group(parent: Verbs, name: str, help_: str) -> Verbs:
    parser = parent.add_parser(name, help=help_, description=help_)
    return parser.add_subparsers(dest=f"{name}_verb", required=True, metavar="VERB")


# -- secrets off the command line ---------------------------------------------------
#
# A value typed as an argument is kept in the shell's history and shown by ``ps``
# to every user of the machine; so every secret option comes as a family (the
# same rule as git's credential helpers, docker's ``--password-stdin``, and the
# ``*_FILE`` convention of container images): ``--x-file PATH`` (``-`` for
# standard input), the environment variable ``RELAY_X``, a prompt without echo
# on a terminal, and last the plain ``--x VALUE``.


class SecretUsage(Exception):
    """A secret option used wrongly, or required and not given: exit status 2, like
    argparse's own usage errors."""


@dataclass(frozen=True)
class SecretOption:
    flag: str  # "--api-key"
    dest: str  # "api_key"
    env: str  # "RELAY_API_KEY"
    what: str  # "the API key", for messages and the prompt
    # Whether this invocation needs the secret (prompt, or refuse with exit 2).
    required: Callable[[argparse.Namespace], bool]


def _never(_args: argparse.Namespace) -> bool:
    return False


def add_secret(
    parser: argparse.ArgumentParser,
    flag: str,
    what: str,
    help_: str,
    *,
    env: str | None = None,
    required: Callable[[argparse.Namespace], bool] = _never,
    dest: str | None = None,
) -> SecretOption:
    """Add ``flag`` (a secret) as ``flag VALUE``, ``flag-file PATH|-`` and ``$env``.

    ``resolve_secrets`` (run by ``relay.cli.main`` after parsing) reads the file,
    standard input or the environment into ``args.<dest>``, and prompts without
    echo when ``required(args)`` and nothing was given on a terminal.
    """
    dest = dest or flag.removeprefix("--").replace("-", "_")
    option = SecretOption(flag, dest, env or f"RELAY_{dest.upper()}", what, required)
    parser.add_argument(
        f"{flag}-file",
        dest=f"{dest}_file",
        metavar="PATH",
        help=f"read {what} from this file, or - for standard input (one trailing newline "
        f"is dropped); or set ${option.env}",
    )
    parser.add_argument(
        flag,
        dest=dest,
        metavar="VALUE",
        help=f"{help_}. Least safe form: ps and shell history see it; prefer {flag}-file, "
        f"${option.env}" + (", or the prompt" if required is not _never else ""),
    )
    parser.set_defaults(**{f"_secret_{dest}": option})
    return option


def _strip_newline(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _read_secret(option: SecretOption, path: str, stdin: TextIO) -> str:
    try:
        raw = stdin.read() if path == "-" else Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretUsage(f"{option.flag}-file: cannot read {path}: {exc}") from None
    value = _strip_newline(raw)
    if not value:
        source = "standard input" if path == "-" else path
        raise SecretUsage(f"{option.flag}-file: {source} is empty")
    return value


def resolve_secrets(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    prompt: Callable[[str], str] | None = None,
) -> None:
    """Fill each secret option of the parsed verb: the value, else its file, else its
    environment variable, else (required, on a terminal) a prompt without echo."""
    import getpass

    env = os.environ if env is None else env
    stdin = sys.stdin if stdin is None else stdin
    options = [v for k, v in vars(args).items() if k.startswith("_secret_")]
    from_stdin = [o.flag for o in options if getattr(args, f"{o.dest}_file", None) == "-"]
    if len(from_stdin) > 1:
        raise SecretUsage(
            f"only one secret can come from standard input: {' and '.join(from_stdin)}"
        )
    for option in options:
        value, path = getattr(args, option.dest), getattr(args, f"{option.dest}_file")
        if value is not None and path is not None:
            raise SecretUsage(f"give {option.flag} or {option.flag}-file, not both")
        if path is not None:
            value = _read_secret(option, path, stdin)
        elif value is None and env.get(option.env):
            value = env[option.env]
        if value is None and option.required(args):
            if not stdin.isatty():
                raise SecretUsage(
                    f"{option.what} is required: {option.flag}-file PATH (- for standard "
                    f"input), ${option.env}, or run on a terminal to be prompted"
                )
            value = (prompt or getpass.getpass)(f"{option.what[0].upper()}{option.what[1:]}: ")
            if not value:
                raise SecretUsage(f"{option.what} is required; nothing was typed")
        setattr(args, option.dest, value)
