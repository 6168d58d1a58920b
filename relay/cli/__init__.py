"""The ``relay`` command line: serve, and the operator's verbs.

Each verb calls the service layer (``relay.service``); a RelayError becomes
``relay: error: ...`` on stderr and exit status 1; bad usage exits 2.

With ``--url`` and ``--token`` (or RELAY_URL and RELAY_TOKEN) the same verbs
go to a remote relay's admin API instead (``relay.cli.remote``), and print
the same. Locally the command line acts as the operator: its changes are
recorded in the audit log as ``operator`` by way of ``cli``.

One module per group of verbs, each adding its own to the parser; what they
share is in ``relay.cli._common``. Building the parser imports none of the
service layer (``relay --help`` stays quick): a verb imports it when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from relay.cli import (
    accounts,
    providers,
    queue,
    senders,
    serve,
    suppression,
    tokens,
    usage,
    users,
)
from relay.cli._common import SecretUsage, add_secret, dispose_engines, resolve_secrets
from relay.core.errors import RelayError
from relay.core.settings import load_settings


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations at the top: "--to" of a verb must not read as "--token".
    p = argparse.ArgumentParser(
        prog="relay", description="Relay: a multi-tenant SMTP relay", allow_abbrev=False
    )
    p.add_argument("--config", help="TOML configuration file (default: $RELAY_CONFIG)")
    p.add_argument(
        "--url",
        default=os.environ.get("RELAY_URL"),
        help="act on the relay whose admin listener is here (default: $RELAY_URL)",
    )
    add_secret(
        p,
        "--token",
        "the API token",
        "API token for --url",
        required=lambda args: bool(args.url),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve.register(sub)
    accounts.register(sub)
    senders.register(sub)
    queue.register(sub)
    usage.register(sub)
    providers.register(sub)
    suppression.register(sub)
    tokens.register(sub)
    users.register(sub)
    serve.register_emulator(sub)
    _config_after_the_verb(p)
    return p


def _config_after_the_verb(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` after the verb too (``relay serve --config FILE``, as people write it).

    SUPPRESS as the default keeps a value given before the verb: a verb's own
    parser only sets ``config`` when the option is given to it.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb in action.choices.values():
                verb.add_argument(
                    "--config",
                    default=argparse.SUPPRESS,
                    help="TOML configuration file (default: $RELAY_CONFIG)",
                )
                _config_after_the_verb(verb)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``relay emulate`` passes what follows it to the
    emulator's own parser (argparse cannot hand options on to a sub-parser)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "emulate":  # everything after the verb, in its order
        args.emulator_args = argv[argv.index("emulate") + 1 :]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        resolve_secrets(args)
    except SecretUsage as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.url:
            from relay.cli.remote import run as run_remote

            return run_remote(args, args.url, args.token)
        settings = load_settings(args.config)
        if args.command not in ("serve", "demo", "emulate"):
            logging.basicConfig(level=logging.WARNING)
        if args.command in ("serve", "emulate"):  # a server, not an operator's change
            return int(args.handler(args, settings))
        from relay.service.actor import Actor, acting

        with acting(Actor("operator", "cli")):
            return int(args.handler(args, settings))
    except RelayError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        dispose_engines()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
