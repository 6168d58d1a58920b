"""``relay sender ...``: verified senders, and how the remote verbs print them the same."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from relay.cli._common import (
    Verbs,
    add_format,
    add_group,
    add_secret,
    add_verb,
    open_db,
    print_json,
    print_rows,
    read_quickly,
)
from relay.core.errors import Invalid
from relay.core.settings import Settings


def cmd_sender_verify(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import verify_sender

    row = verify_sender(open_db(settings), args.sender, args.account)
    what = "address" if "@" in row.pattern else "domain (every address in it)"
    print(f"verified {row.pattern} for account {args.account}: {what}")
    return 0


def cmd_sender_verify_dns(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import verify_sender_dns
    from relay.service.dnsverify import make_resolver

    dns = settings.dns
    resolver = make_resolver(dns.nameservers, dns.port, dns.timeout)
    found = verify_sender_dns(open_db(settings), args.domain, args.account, resolver)
    if found.verified:
        print(f"verified {found.domain} for account {args.account} by DNS")
        return 0
    print(
        f'publish this record, then run the command again:\n  {found.record}. TXT "{found.value}"'
    )
    return 3  # not verified yet: scripts can tell "pending" from an error


def cmd_sender_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import quick

    found = read_quickly(settings, lambda db: quick.senders(db, args.account, args.review))
    if found is not None:
        print_senders(found, args.format)
        return 0
    from relay.service.accounts import list_senders
    from relay.service.scope import account_name

    engine = open_db(settings)

    def item(s: Any) -> dict[str, Any]:
        proof = account_name(engine, s.proof_account_id) if s.proof_account_id else None
        return {
            "sender": s.pattern,
            "verified": s.verified,
            "method": s.method,
            "verified_at": s.verified_at.isoformat() if s.verified_at else None,
            "proved_by": proof,
        }

    if args.account is None:
        from relay.service.accounts import senders_to_review
        from relay.service.scope import EVERYTHING

        check_review(args)
        items = [{"account": name, **item(s)} for s, name in senders_to_review(engine, EVERYTHING)]
    else:
        items = [item(s) for s in list_senders(engine, args.account, review=args.review)]
    print_senders(items, args.format)
    return 0


def print_senders(items: list[dict[str, Any]], fmt: str) -> None:
    """``sender list``, locally and remotely (the API's fields; ``account`` when listing
    every account's senders to review)."""
    if fmt == "json":
        print_json(items)
        return
    every = bool(items) and "account" in items[0]
    rows = [
        (
            *((s["account"],) if every else ()),
            *sender_row(
                s["sender"],
                s["verified"],
                s["method"],
                dt.datetime.fromisoformat(s["verified_at"]) if s["verified_at"] else None,
                s["proved_by"],
            ),
        )
        for s in items
    ]
    print_rows(rows, (*(("ACCOUNT",) if every else ()), *SENDER_COLUMNS))


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
    """One line of ``relay sender list`` (relay.cli.remote prints the same)."""
    return (
        pattern,
        "address" if "@" in pattern else "domain",
        "verified" if verified else "pending",
        method or "-",
        at.strftime("%Y-%m-%d %H:%M") if at else "-",
        proved_by or "-",
    )


def cmd_sender_send_code(args: argparse.Namespace, settings: Settings) -> int:
    from relay.core.crypto import secret_box
    from relay.service.confirmations import send_code

    sent = send_code(
        open_db(settings),
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
    from relay.core.crypto import secret_box
    from relay.service.confirmations import confirm

    row = confirm(open_db(settings), secret_box(settings), args.sender, args.account, args.code)
    print(f"verified {row.pattern} for account {args.account} by confirmation")
    return 0


def cmd_sender_remove(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import remove_sender

    remove_sender(open_db(settings), args.sender, args.account)
    print(f"removed {args.sender} from account {args.account}")
    return 0


ACCOUNT_HELP = "the account the sender is (to be) verified for"


def register(sub: Verbs) -> None:
    snd = add_group(sub, "sender", "verified senders")
    s = add_verb(
        snd,
        "verify",
        cmd_sender_verify,
        "verify an address or a whole domain by say-so (operator; an agency with its own proof)",
    )
    s.add_argument("sender", metavar="ADDRESS_OR_DOMAIN")
    s.add_argument("--account", required=True, help=ACCOUNT_HELP)
    s = add_verb(
        snd,
        "verify-dns",
        cmd_sender_verify_dns,
        "verify a domain by a DNS TXT record (prints it; checks it)",
    )
    s.add_argument("domain")
    s.add_argument("--account", required=True, help=ACCOUNT_HELP)
    s = add_verb(
        snd,
        "send-code",
        cmd_sender_send_code,
        "mail a confirmation code to an address (through the account's route)",
    )
    s.add_argument("sender", metavar="ADDRESS")
    s.add_argument("--account", required=True, help=ACCOUNT_HELP)
    s = add_verb(snd, "confirm", cmd_sender_confirm, "verify an address with the code mailed to it")
    s.add_argument("sender", metavar="ADDRESS")
    s.add_argument("--account", required=True, help=ACCOUNT_HELP)
    add_secret(
        s,
        "--code",
        "the confirmation code",
        "the code mailed to the address",
        env="RELAY_CONFIRMATION_CODE",
        required=lambda _args: True,
    )
    s = add_verb(snd, "list", cmd_sender_list, "list an account's senders: how and when verified")
    s.add_argument("--account", help="the account; without it, --review lists every account's")
    s.add_argument(
        "--review",
        action="store_true",
        help="only senders verified without proof before it was required (tenant, unreviewed)",
    )
    add_format(s)
    s = add_verb(snd, "remove", cmd_sender_remove, "remove a verified sender")
    s.add_argument("sender", metavar="ADDRESS_OR_DOMAIN")
    s.add_argument("--account", required=True, help=ACCOUNT_HELP)
