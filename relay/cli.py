"""The ``relay`` command line: serve, and the operator's verbs.

Each verb calls the service layer (``relay.service``); a RelayError becomes
``relay: error: ...`` on stderr and exit status 1; bad usage exits 2.

With ``--url`` and ``--token`` (or RELAY_URL and RELAY_TOKEN) the same verbs
go to a remote relay's admin API instead (``relay.remote``), and print the
same. Locally the command line acts as the operator: its changes are
recorded in the audit log as ``operator`` by way of ``cli``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine

from relay.core.errors import Invalid, RelayError
from relay.core.settings import Settings, load_settings
from relay.store.engine import make_engine, migrate

Handler = Callable[[argparse.Namespace, Settings], int]


_ENGINES: list[Engine] = []


def _engine(settings: Settings) -> Engine:
    """The database for this invocation; main() closes its pool before exiting."""
    engine = make_engine(settings.database.url, settings.database.pool_size)
    migrate(engine)
    _ENGINES.append(engine)
    return engine


def _print_rows(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    table = [list(map(str, header))] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


print_rows = _print_rows  # relay.remote prints its answers with the same tables


# -- serve and demo -------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from relay.server import serve

    return serve(settings, processes=args.processes)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from relay.demo import demo_settings, seed
    from relay.server import serve

    settings = demo_settings(settings)
    seed(settings)
    return serve(settings, processes=1)


def cmd_config_check(args: argparse.Namespace, settings: Settings) -> int:
    """Every key's value was checked by load_settings; here the names it refers to."""
    from relay.service.providers import check_references

    check_references(_engine(settings), settings.policy)
    print(f"configuration is valid ({settings.source or 'defaults and environment'})")
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    _engine(settings).dispose()
    print("database is at the newest schema")
    return 0


# -- accounts, domains, credentials, senders --------------------------------------


def cmd_account_create(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import create_account

    account = create_account(_engine(settings), args.name, args.agency, args.policy)
    kind = f"sub-account of {args.agency}" if args.agency else "agency"
    print(f"created account {account.name} ({kind})")
    return 0


def cmd_account_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import list_accounts

    rows = [
        (a.name, parent or "-", a.unverified_policy or "default")
        for a, parent in list_accounts(_engine(settings))
    ]
    _print_rows(rows, ("ACCOUNT", "AGENCY", "UNVERIFIED-POLICY"))
    return 0


def cmd_domain_add(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import add_domain

    domain = add_domain(_engine(settings), args.domain, args.account)
    print(f"added domain {domain.name} to account {args.account}")
    return 0


def _hasher(settings: Settings) -> Any:
    from relay.app import make_hasher

    return make_hasher(settings)


def cmd_credential_create(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import create_credential

    new = create_credential(
        _engine(settings),
        _hasher(settings),
        args.username,
        args.password,
        args.purpose,
        settings.auth.max_credentials_per_domain,
        args.policy,
    )
    print(f"created credential {new.username}")
    if args.password is None:
        print(f"password: {new.password}")
        print("(shown once: it is stored only as a hash)")
    return 0


def cmd_credential_reset(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import reset_credential

    new = reset_credential(_engine(settings), _hasher(settings), args.username, args.password)
    print(f"reset the password of {new.username}; the old one no longer works")
    if args.password is None:
        print(f"password: {new.password}")
        print("(shown once: it is stored only as a hash)")
    return 0


def cmd_credential_delete(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import delete_credential

    print(f"deleted credential {delete_credential(_engine(settings), args.username)}")
    return 0


def cmd_credential_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import list_credentials

    rows = [
        (
            c.username,
            c.purpose,
            c.unverified_policy or "default",
            c.created_at.strftime("%Y-%m-%d %H:%M"),
            c.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
        for c in list_credentials(_engine(settings), args.domain)
    ]
    _print_rows(rows, ("USERNAME", "PURPOSE", "UNVERIFIED-POLICY", "CREATED", "PASSWORD-SET"))
    return 0


def cmd_sender_verify(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import verify_sender

    row = verify_sender(_engine(settings), args.sender, args.account)
    what = "address" if "@" in row.pattern else "domain (every address in it)"
    print(f"verified {row.pattern} for account {args.account}: {what}")
    return 0


def cmd_sender_verify_dns(args: argparse.Namespace, settings: Settings) -> int:
    from relay.routing.dnsverify import make_resolver
    from relay.service.accounts import verify_sender_dns

    dns = settings.dns
    resolver = make_resolver(dns.nameservers, dns.port, dns.timeout)
    found = verify_sender_dns(_engine(settings), args.domain, args.account, resolver)
    if found.verified:
        print(f"verified {found.domain} for account {args.account} by DNS")
        return 0
    print(
        f'publish this record, then run the command again:\n  {found.record}. TXT "{found.value}"'
    )
    return 3  # not verified yet: scripts can tell "pending" from an error


def cmd_sender_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import list_senders
    from relay.service.scope import account_name

    engine = _engine(settings)

    def row(s: Any) -> tuple[str, ...]:
        proof = account_name(engine, s.proof_account_id) if s.proof_account_id else None
        return sender_row(s.pattern, s.verified, s.method, s.verified_at, proof)

    if args.account is None:
        from relay.service.accounts import senders_to_review
        from relay.service.scope import EVERYTHING

        check_review(args)
        rows = [(name, *row(s)) for s, name in senders_to_review(engine, EVERYTHING)]
        _print_rows(rows, ("ACCOUNT", *SENDER_COLUMNS))
        return 0
    _print_rows(
        [row(s) for s in list_senders(engine, args.account, review=args.review)], SENDER_COLUMNS
    )
    return 0


def check_review(args: argparse.Namespace) -> None:
    """Without --account, ``sender list`` lists every account's senders to review."""
    if not args.review:
        raise Invalid(
            "name an account (--account NAME), or list every account's senders "
            "to review (--review)",
            "account",
        )


SENDER_COLUMNS = ("SENDER", "KIND", "STATE", "METHOD", "VERIFIED-AT", "PROVED-BY")


def sender_row(
    pattern: str, verified: bool, method: str | None, at: Any, proved_by: str | None
) -> tuple[str, ...]:
    """One line of ``relay sender list`` (relay.remote prints the same)."""
    return (
        pattern,
        "address" if "@" in pattern else "domain",
        "verified" if verified else "pending",
        method or "-",
        at.strftime("%Y-%m-%d %H:%M") if at else "-",
        proved_by or "-",
    )


def cmd_sender_send_code(args: argparse.Namespace, settings: Settings) -> int:
    from relay.app import secret_box
    from relay.service.confirmations import send_code

    sent = send_code(
        _engine(settings),
        secret_box(settings),
        settings.policy,
        settings.server.hostname,
        args.sender,
        args.account,
    )
    print(code_sent(sent.address, sent.sent_from, sent.expires_at, args.account))
    return 0


def code_sent(address: str, sent_from: str, expires: Any, account: str) -> str:
    return (
        f"mailed a confirmation code to {address} from {sent_from}; it works once, until "
        f"{expires:%Y-%m-%d %H:%M} UTC:\n  relay sender confirm {address} --account {account} "
        "--code CODE"
    )


def cmd_sender_confirm(args: argparse.Namespace, settings: Settings) -> int:
    from relay.app import secret_box
    from relay.service.confirmations import confirm

    row = confirm(_engine(settings), secret_box(settings), args.sender, args.account, args.code)
    print(f"verified {row.pattern} for account {args.account} by confirmation")
    return 0


def cmd_sender_remove(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import remove_sender

    remove_sender(_engine(settings), args.sender, args.account)
    print(f"removed {args.sender} from account {args.account}")
    return 0


# -- queue ----------------------------------------------------------------------


def cmd_queue_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.queue import list_messages

    rows = [
        (
            m.id,
            m.state,
            a,
            m.mail_from,
            m.size,
            m.attempts,
            m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            m.reason or "",
        )
        for m, a in list_messages(_engine(settings), args.state, args.limit)
    ]
    _print_rows(rows, ("ID", "STATE", "ACCOUNT", "FROM", "SIZE", "TRIES", "CREATED", "REASON"))
    return 0


def cmd_queue_show(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.queue import show_message

    view = show_message(_engine(settings), args.id)
    m = view.message
    out = {
        "id": m.id,
        "state": m.state,
        "reason": m.reason,
        "account": view.account,
        "from": m.mail_from,
        "header_from": m.header_from,
        "size": m.size,
        "campaign": m.campaign,
        "attempts": m.attempts,
        "created": m.created_at.isoformat(),
        "next_attempt": m.next_attempt_at.isoformat(),
        "expires": m.expires_at.isoformat(),
        "recipients": [
            {"address": r.address, "kind": r.kind, "state": r.state, "reply": r.reply}
            for r in view.recipients
        ],
        "history": [
            {
                "at": a.at.isoformat(),
                "provider": a.provider,
                "transport": a.transport,
                "result": a.result,
                "code": a.code,
                "text": a.text,
                "duration": round(a.duration, 4),
            }
            for a in view.attempts
        ],
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_queue_retry(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.queue import retry_message

    retry_message(_engine(settings), args.id)
    print(f"{args.id} is due now; a running relay delivers it within its poll interval")
    return 0


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    from relay.accounting.report import price, render
    from relay.service.usage import usage_report

    report = usage_report(
        _engine(settings),
        price(settings.billing.price_per_1000),
        args.account,
        args.first,
        args.last,
    )
    sys.stdout.write(render(report, args.format))
    return 0


def cmd_queue_release(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.queue import release_messages

    moved = release_messages(_engine(settings), args.id, sender=args.sender, account=args.account)
    print(f"released {len(moved)} paused message(s)" + "".join(f"\n  {m}" for m in moved))
    return 0


def cmd_queue_discard(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.queue import discard_messages

    rows = discard_messages(_engine(settings), args.id, sender=args.sender, account=args.account)
    ids = sorted({r[0] for r in rows})
    print(
        f"discarded {len(ids)} paused message(s), recorded as dropped"
        + "".join(f"\n  {m}" for m in ids)
    )
    return 0


def cmd_emulate(args: argparse.Namespace, settings: Settings) -> int:
    from relay.emulator import main as emulate  # type: ignore[attr-defined,import-not-found,unused-ignore]

    return int(emulate(args.emulator_args) or 0)


# -- the parser -----------------------------------------------------------------


def _sub(
    parent: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    help_: str,
) -> argparse.ArgumentParser:
    parser = parent.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler)
    return parser


def _group(
    parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = parent.add_parser(name, help=help_, description=help_)
    return parser.add_subparsers(dest=f"{name}_verb", required=True, metavar="VERB")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay", description="Relay: a multi-tenant SMTP relay")
    p.add_argument("--config", help="TOML configuration file (default: $RELAY_CONFIG)")
    p.add_argument(
        "--url",
        default=os.environ.get("RELAY_URL"),
        help="act on the relay whose admin listener is here (default: $RELAY_URL)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("RELAY_TOKEN"),
        help="API token for --url (default: $RELAY_TOKEN)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _sub(sub, "serve", cmd_serve, "run listeners, workers and /metrics")
    s.add_argument(
        "--processes", type=int, default=None, help="processes sharing the listeners (SO_REUSEPORT)"
    )
    _sub(sub, "demo", cmd_demo, "seed a demo tenant and serve on unprivileged loopback ports")
    _sub(sub, "migrate", cmd_migrate, "bring the database schema up to date")
    cfg = _group(sub, "config", "the configuration file and environment")
    _sub(cfg, "check", cmd_config_check, "check every key and the names it refers to")

    acc = _group(sub, "account", "agencies and sub-accounts")
    s = _sub(acc, "create", cmd_account_create, "create an agency, or a sub-account")
    s.add_argument("name")
    s.add_argument("--agency", help="make it a sub-account of this agency")
    s.add_argument(
        "--policy",
        choices=("reject", "drop", "pause"),
        help="what to do with mail from unverified senders",
    )
    _sub(acc, "list", cmd_account_list, "list accounts")

    dom = _group(sub, "domain", "sending domains")
    s = _sub(dom, "add", cmd_domain_add, "add a sending domain to a sub-account")
    s.add_argument("domain")
    s.add_argument("--account", required=True)

    cred = _group(sub, "credential", "SMTP users (at most five a domain)")
    s = _sub(cred, "create", cmd_credential_create, "create an SMTP user")
    s.add_argument("username", metavar="USER@DOMAIN")
    s.add_argument("--password", help="at least 12 characters; omit to generate one")
    s.add_argument("--purpose", choices=("transactional", "campaign"), default="transactional")
    s.add_argument(
        "--policy",
        choices=("reject", "drop", "pause"),
        help="this credential's policy for unverified senders",
    )
    s = _sub(cred, "reset", cmd_credential_reset, "set a new password (the old fails at once)")
    s.add_argument("username", metavar="USER@DOMAIN")
    s.add_argument("--password")
    s = _sub(cred, "delete", cmd_credential_delete, "delete an SMTP user")
    s.add_argument("username", metavar="USER@DOMAIN")
    s = _sub(cred, "list", cmd_credential_list, "list a domain's SMTP users (never passwords)")
    s.add_argument("domain")

    snd = _group(sub, "sender", "verified senders")
    s = _sub(
        snd,
        "verify",
        cmd_sender_verify,
        "verify an address or a whole domain by say-so (operator; an agency with its own proof)",
    )
    s.add_argument("sender", metavar="ADDRESS_OR_DOMAIN")
    s.add_argument("--account", required=True)
    s = _sub(
        snd,
        "verify-dns",
        cmd_sender_verify_dns,
        "verify a domain by a DNS TXT record (prints it; checks it)",
    )
    s.add_argument("domain")
    s.add_argument("--account", required=True)
    s = _sub(
        snd,
        "send-code",
        cmd_sender_send_code,
        "mail a confirmation code to an address (through the account's route)",
    )
    s.add_argument("sender", metavar="ADDRESS")
    s.add_argument("--account", required=True)
    s = _sub(snd, "confirm", cmd_sender_confirm, "verify an address with the code mailed to it")
    s.add_argument("sender", metavar="ADDRESS")
    s.add_argument("--account", required=True)
    s.add_argument("--code", required=True)
    s = _sub(snd, "list", cmd_sender_list, "list an account's senders: how and when verified")
    s.add_argument("--account", help="the account; without it, --review lists every account's")
    s.add_argument(
        "--review",
        action="store_true",
        help="only senders verified without proof before it was required (tenant, unreviewed)",
    )
    s = _sub(snd, "remove", cmd_sender_remove, "remove a verified sender")
    s.add_argument("sender", metavar="ADDRESS_OR_DOMAIN")
    s.add_argument("--account", required=True)

    q = _group(sub, "queue", "the message queue")
    s = _sub(q, "list", cmd_queue_list, "list messages, newest first")
    s.add_argument("--state", help="queued, deferred, paused, delivered, failed or dropped")
    s.add_argument("--limit", type=int, default=100)
    s = _sub(q, "show", cmd_queue_show, "one message with its recipients and attempts")
    s.add_argument("id")
    s = _sub(q, "retry", cmd_queue_retry, "deliver a queued or deferred message now")
    s.add_argument("id")
    for verb, handler, what in (
        ("release", cmd_queue_release, "deliver paused mail now"),
        ("discard", cmd_queue_discard, "drop paused mail (recorded as dropped)"),
    ):
        s = _sub(q, verb, handler, f"{what}: one message, or in bulk by sender or account")
        s.add_argument("id", nargs="?")
        s.add_argument("--sender", help="every paused message from this address or domain")
        s.add_argument("--account", help="every paused message of this account")

    s = _sub(sub, "usage", cmd_usage, "billable recipients by class, messages and cost")
    s.add_argument("--account", help="an agency (with its sub-accounts) or a sub-account")
    s.add_argument("--from", dest="first", metavar="DATE", help="first UTC day, YYYY-MM-DD")
    s.add_argument("--to", dest="last", metavar="DATE", help="last UTC day (inclusive)")
    s.add_argument("--format", choices=("table", "csv", "json"), default="table")

    from relay import cli_providers

    cli_providers.register(sub, _sub)

    from relay import cli_tokens

    cli_tokens.register(sub, _group, _sub)

    s = _sub(sub, "emulate", cmd_emulate, "fake SendGrid and SparkPost APIs and an SMTP sink")
    s.add_argument("emulator_args", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from relay.service.scope import Actor, acting

    args = build_parser().parse_args(argv)
    try:
        if args.url:
            from relay.remote import run as run_remote

            return run_remote(args, args.url, args.token)
        settings = load_settings(args.config)
        if args.command not in ("serve", "demo", "emulate"):
            logging.basicConfig(level=logging.WARNING)
        if args.command in ("serve", "emulate"):  # a server, not an operator's change
            return int(args.handler(args, settings))
        with acting(Actor("operator", "cli")):
            return int(args.handler(args, settings))
    except RelayError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        while _ENGINES:
            _ENGINES.pop().dispose()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
