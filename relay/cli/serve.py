"""``relay serve``, ``demo``, ``migrate``, ``config check`` and ``emulate``: running the relay."""

from __future__ import annotations

import argparse

from relay.cli._common import Verbs, add_group, add_verb, open_db
from relay.core.settings import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from relay.server import serve

    return serve(settings, processes=args.processes)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from relay.cli.demo import run_demo

    return run_demo(settings)


def cmd_config_check(args: argparse.Namespace, settings: Settings) -> int:
    """Every key's value was checked by load_settings; here the names it refers to."""
    from relay.service.providers import check_references

    check_references(open_db(settings), settings.policy)
    print(f"configuration is valid ({settings.source or 'defaults and environment'})")
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    open_db(settings).dispose()
    print("database is at the newest schema")
    return 0


def cmd_emulate(args: argparse.Namespace, settings: Settings) -> int:
    from relay.emulator import main as emulate  # type: ignore[attr-defined,import-not-found,unused-ignore]

    return int(emulate(args.emulator_args) or 0)


def register(sub: Verbs) -> None:
    s = add_verb(sub, "serve", cmd_serve, "run listeners, workers and /metrics")
    s.add_argument(
        "--processes", type=int, default=None, help="processes sharing the listeners (SO_REUSEPORT)"
    )
    add_verb(sub, "demo", cmd_demo, "seed a demo tenant and serve on unprivileged loopback ports")
    add_verb(sub, "migrate", cmd_migrate, "bring the database schema up to date")
    cfg = add_group(sub, "config", "the configuration file and environment")
    add_verb(cfg, "check", cmd_config_check, "check every key and the names it refers to")


def register_emulator(sub: Verbs) -> None:
    what = "fake SendGrid and SparkPost APIs and an SMTP sink"
    s = sub.add_parser("emulate", help=what, description=what, add_help=False)
    s.set_defaults(handler=cmd_emulate)
    s.add_argument(
        "emulator_args",
        nargs=argparse.REMAINDER,
        help="the emulator's options: relay emulate --help lists them",
    )
