"""``relay serve``, ``demo``, ``migrate``, ``config check`` and ``emulate``: running the relay."""

from __future__ import annotations

import argparse

from relay.cli._common import Verbs, add_group, add_verb, open_db, print_rows, read_quickly
from relay.core.settings import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from relay.server import serve

    return serve(settings, processes=args.processes)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from relay.cli.demo import run_demo

    return run_demo(settings)


def cmd_config_check(args: argparse.Namespace, settings: Settings) -> int:
    """Every key's value was checked by load_settings; here what it refers to, then the table.

    What a key refers to must be there: the TLS pair must load, the database
    must answer, ``[policy] system_provider`` must exist. A RELAY_* variable
    one slip from a key's name is most likely a mistake (it sets nothing): warned.
    """
    import json
    import os
    import sys

    from relay.core.settings import effective, env_typos, load_settings

    for typo in env_typos(os.environ):
        print(f"relay: warning: {typo}", file=sys.stderr)
    sources: dict[str, str] = {}
    load_settings(settings.source or None, sources=sources)
    _check_references(settings)
    rows = effective(settings, sources)
    where = settings.source or "defaults and environment"
    if args.format == "json":
        keys = [{"key": k, "value": v, "source": src} for k, v, src in rows]
        print(json.dumps({"valid": True, "file": settings.source or None, "keys": keys}, indent=2))
        return 0
    shown = [(k, v if isinstance(v, str) else json.dumps(v), src) for k, v, src in rows]
    print_rows(shown, ("KEY", "VALUE", "SOURCE"))
    print(f"\nconfiguration is valid ({where})")
    return 0


def _check_references(settings: Settings) -> None:
    """The files, database and names the configuration refers to, each named by its key."""
    from relay.core.errors import ConfigError

    if settings.tls.cert:
        from relay.smtp.tls import server_context

        server_context(settings)  # a ConfigError naming [tls] if the pair does not load
    from relay.service import quick

    name = settings.policy.system_provider
    if read_quickly(settings, lambda db: quick.provider_exists(db, name) if name else True):
        return  # the database answers (at the newest schema) and names what it must
    try:
        engine = open_db(settings)
    except ConfigError:
        raise
    except Exception as exc:  # the driver's own error, whatever the engine
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"[database] url: cannot open the database: {reason}") from exc
    from relay.service.providers import check_references

    check_references(engine, settings.policy)


def cmd_config_example(args: argparse.Namespace, settings: Settings) -> int:
    from relay.core.settings import example_toml

    print(example_toml(), end="")
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    open_db(settings).dispose()
    print("database is at the newest schema")
    return 0


def cmd_emulate(args: argparse.Namespace, settings: Settings) -> int:
    from relay.emulator import main as emulate  # type: ignore[attr-defined,import-not-found,unused-ignore]

    return int(emulate(args.emulator_args) or 0)


def _processes(text: str) -> int | str:
    """--processes: a number of at least 1, or "auto" (one per core)."""
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a number of at least 1")
    return count


def register(sub: Verbs) -> None:
    s = add_verb(sub, "serve", cmd_serve, "run listeners, workers and /metrics")
    s.add_argument(
        "--processes",
        type=_processes,
        default=None,
        metavar="N|auto",
        help="processes sharing the listeners (SO_REUSEPORT); auto: one per core "
        "(default: [server] processes, auto)",
    )
    add_verb(sub, "demo", cmd_demo, "seed a demo tenant and serve on unprivileged loopback ports")
    add_verb(sub, "migrate", cmd_migrate, "bring the database schema up to date")
    cfg = add_group(sub, "config", "the configuration file and environment")
    check = add_verb(
        cfg,
        "check",
        cmd_config_check,
        "check every key and what it refers to; print each value and where it came from",
    )
    check.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table for people (the default), json for scripts",
    )
    add_verb(
        cfg,
        "example",
        cmd_config_example,
        "print a commented configuration file with every key at its default",
    )


def register_emulator(sub: Verbs) -> None:
    what = "fake SendGrid and SparkPost APIs and an SMTP sink"
    s = sub.add_parser("emulate", help=what, description=what, add_help=False)
    s.set_defaults(handler=cmd_emulate)
    s.add_argument(
        "emulator_args",
        nargs=argparse.REMAINDER,
        help="the emulator's options: relay emulate --help lists them",
    )
