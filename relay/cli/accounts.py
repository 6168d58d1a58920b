"""``relay account``, ``domain`` and ``credential``: tenants, their domains and SMTP users."""

from __future__ import annotations

import argparse
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
from relay.cli.limits import add_limit_options, limit_options_given, print_limits
from relay.core.settings import Settings


def cmd_account_create(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import create_account

    account = create_account(open_db(settings), args.name, args.agency, args.policy)
    kind = f"sub-account of {args.agency}" if args.agency else "agency"
    print(f"created account {account.name} ({kind})")
    return 0


def cmd_account_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import quick

    items = read_quickly(settings, quick.accounts)
    if items is None:
        from relay.service.accounts import list_accounts

        items = [
            {
                "name": a.name,
                "agency": parent,
                "unverified_policy": a.unverified_policy,
                "suspended_at": a.suspended_at,
                "suspended_reason": a.suspended_reason,
            }
            for a, parent in list_accounts(open_db(settings))
        ]
    print_accounts(items, args)
    return 0


def print_accounts(items: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """``account list``, locally and remotely (the API's fields)."""
    items = [a for a in items if a["suspended_at"] is not None or not args.suspended]
    if args.format == "json":
        print_json(items)
        return
    rows = [
        (
            a["name"],
            a["agency"] or "-",
            a["unverified_policy"] or "default",
            suspension(a["suspended_reason"]),
        )
        for a in items
    ]
    print_rows(rows, ACCOUNT_COLUMNS)


def _switch(value: bool | None) -> str:
    return "default" if value is None else ("on" if value else "off")


def print_edited(name: str, changed: list[str], view: dict[str, Any], secret: str | None) -> None:
    """What ``account edit`` prints, locally and remotely (``view``: the API's fields)."""
    print(f"edited account {name}: {', '.join(changed)}")
    print(f"notify: {', '.join(view['notify']) or '-'}")
    print(f"notify-url: {view['notify_url'] or '-'}")
    if secret:
        print(f"notify-secret: {secret}")
        print("(shown once: it signs the POSTs, X-Relay-Signature; keep it with your receiver)")
    print(
        f"share-suppressions: {_switch(view['share_suppressions'])}  "
        f"unsubscribe: {_switch(view['unsubscribe'])}  "
        f"open-tracking: {_switch(view['open_tracking'])}  "
        f"click-tracking: {_switch(view['click_tracking'])}"
    )


def _limit_changes(args: argparse.Namespace) -> dict[str, int | None]:
    from relay.service.limits import parse_changes

    return parse_changes(args.max_messages, args.max_recipients, args.max_sessions)


def cmd_account_edit(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from relay.core.crypto import secret_box
    from relay.service.account_settings import AccountChanges, edit_account
    from relay.service.limits import set_account_limits

    notify = [] if args.no_notify else args.notify
    changes = AccountChanges(
        notify=notify,
        notify_url=args.notify_url,
        share_suppressions=args.share_suppressions,
        unsubscribe=args.unsubscribe,
        open_tracking=args.open_tracking,
        click_tracking=args.click_tracking,
    )
    limits = None
    if limit_options_given(args):  # the limits first: the agency's ceilings may refuse them
        limits = asdict(set_account_limits(open_db(settings), args.name, _limit_changes(args)))
        if changes.empty():
            print_limits(limits)
            return 0
    edited = edit_account(open_db(settings), secret_box(settings), args.name, changes)
    a = edited.account
    print_edited(
        a.name,
        edited.changed,
        {
            "notify": list(a.notify_addresses or []),
            "notify_url": a.notify_url,
            "share_suppressions": a.share_suppressions,
            "unsubscribe": a.unsubscribe,
            "open_tracking": a.open_tracking,
            "click_tracking": a.click_tracking,
        },
        edited.notify_secret,
    )
    if limits is not None:
        print_limits(limits)
    return 0


ACCOUNT_COLUMNS = ("ACCOUNT", "AGENCY", "UNVERIFIED-POLICY", "SUSPENDED")


def suspension(reason: str | None) -> str:
    """The SUSPENDED column: "-" or why (also for `relay --remote`)."""
    return "-" if reason is None else reason


def cmd_account_resume(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import resume_account

    done = resume_account(open_db(settings), args.name)
    print(print_resumed(done.account, done.was_suspended, len(done.released)))
    return 0


def print_resumed(name: str, was_suspended: bool, released: int) -> str:
    if not was_suspended:
        return f"account {name} was not suspended; its rates count afresh from now"
    held = f"; {released} held message(s) queued" if released else ""
    return f"resumed account {name}: new mail is accepted{held}"


def cmd_domain_add(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import add_domain

    domain = add_domain(open_db(settings), args.domain, args.account)
    print(f"added domain {domain.name} to account {args.account}")
    return 0


def _hasher(settings: Settings) -> Any:
    from relay.auth.passwords import make_hasher

    return make_hasher(settings)


def cmd_credential_create(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import create_credential

    new = create_credential(
        open_db(settings),
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

    new = reset_credential(open_db(settings), _hasher(settings), args.username, args.password)
    print(f"reset the password of {new.username}; the old one no longer works")
    if args.password is None:
        print(f"password: {new.password}")
        print("(shown once: it is stored only as a hash)")
    return 0


def cmd_credential_delete(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.accounts import delete_credential

    print(f"deleted credential {delete_credential(open_db(settings), args.username)}")
    return 0


def cmd_credential_edit(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from relay.service.limits import set_credential_limits

    view = set_credential_limits(open_db(settings), args.username, _limit_changes(args))
    print_limits(asdict(view))
    return 0


def cmd_credential_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import quick

    items = read_quickly(settings, lambda db: quick.credentials(db, args.domain))
    if items is None:
        from relay.service.accounts import list_credentials

        items = [
            {
                "username": c.username,
                "purpose": c.purpose,
                "unverified_policy": c.unverified_policy,
                "created_at": c.created_at.isoformat(),
                "password_set_at": c.updated_at.isoformat(),
            }
            for c in list_credentials(open_db(settings), args.domain)
        ]
    print_credentials(items, args.format)
    return 0


def print_credentials(items: list[dict[str, Any]], fmt: str) -> None:
    """``credential list``, locally and remotely (the API's fields, never a password)."""
    if fmt == "json":
        print_json(items)
        return
    rows = [
        (
            c["username"],
            c["purpose"],
            c["unverified_policy"] or "default",
            c["created_at"][:16].replace("T", " "),
            c["password_set_at"][:16].replace("T", " "),
        )
        for c in items
    ]
    print_rows(rows, ("USERNAME", "PURPOSE", "UNVERIFIED-POLICY", "CREATED", "PASSWORD-SET"))


def register(sub: Verbs) -> None:
    acc = add_group(sub, "account", "agencies and sub-accounts")
    s = add_verb(acc, "create", cmd_account_create, "create an agency, or a sub-account")
    s.add_argument("name")
    s.add_argument("--agency", help="make it a sub-account of this agency")
    s.add_argument(
        "--policy",
        choices=("reject", "drop", "pause"),
        help="what to do with mail from unverified senders",
    )
    s = add_verb(acc, "list", cmd_account_list, "list accounts (and why any is suspended)")
    s.add_argument("--suspended", action="store_true", help="only suspended accounts")
    add_format(s)
    s = add_verb(
        acc, "resume", cmd_account_resume, "lift a suspension for bounce or complaint rates"
    )
    s.add_argument("name")
    s = add_verb(
        acc, "edit", cmd_account_edit, "notifications, unsubscribe, tracking, sending limits..."
    )
    s.add_argument("name")
    add_limit_options(s)
    s.add_argument(
        "--notify",
        action="append",
        metavar="ADDRESS",
        help="mail notifications here (repeat for more; replaces the list; '' clears)",
    )
    s.add_argument("--no-notify", action="store_true", help="no notification mail")
    s.add_argument(
        "--notify-url",
        metavar="URL",
        help="POST signed JSON notifications here (https; a new secret is printed once; '' clears)",
    )
    on_off = ("on", "off")
    s.add_argument(
        "--share-suppressions", choices=on_off, help="an agency's list applies to its sub-accounts"
    )
    s.add_argument("--unsubscribe", choices=on_off, help="RFC 8058 one-click unsubscribe")
    s.add_argument(
        "--open-tracking",
        choices=(*on_off, "default"),
        help="the provider's open tracking (default: the provider account's own setting)",
    )
    s.add_argument(
        "--click-tracking",
        choices=(*on_off, "default"),
        help="the provider's click tracking (default: the provider account's own setting)",
    )

    dom = add_group(sub, "domain", "sending domains")
    s = add_verb(dom, "add", cmd_domain_add, "add a sending domain to a sub-account")
    s.add_argument("domain")
    s.add_argument("--account", required=True, help="the sub-account it sends for")

    cred = add_group(sub, "credential", "SMTP users (at most five a domain)")
    s = add_verb(cred, "create", cmd_credential_create, "create an SMTP user")
    s.add_argument("username", metavar="USER@DOMAIN")
    _password(s)
    s.add_argument(
        "--purpose",
        choices=("transactional", "campaign"),
        default="transactional",
        help="campaign mail is paused, not dropped, when its sender is unverified",
    )
    s.add_argument(
        "--policy",
        choices=("reject", "drop", "pause"),
        help="this credential's policy for unverified senders",
    )
    s = add_verb(cred, "reset", cmd_credential_reset, "set a new password (the old fails at once)")
    s.add_argument("username", metavar="USER@DOMAIN")
    _password(s)
    s = add_verb(cred, "delete", cmd_credential_delete, "delete an SMTP user")
    s.add_argument("username", metavar="USER@DOMAIN")
    s = add_verb(cred, "edit", cmd_credential_edit, "an SMTP user's own sending limits")
    s.add_argument("username", metavar="USER@DOMAIN")
    add_limit_options(s)
    s = add_verb(cred, "list", cmd_credential_list, "list a domain's SMTP users (never passwords)")
    s.add_argument("domain")
    add_format(s)


def _password(parser: argparse.ArgumentParser) -> None:
    """A credential's password: given in one of the safe forms, or generated (no prompt:
    a generated one is stronger than a typed one, and is printed once)."""
    add_secret(
        parser,
        "--password",
        "the password",
        "at least 12 characters; give none and Relay generates one and prints it once",
    )
