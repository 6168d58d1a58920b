"""``relay user ...``: the people who sign in to the web console.

Users are made on the relay's own machine, like API tokens: the database is
the trust root. A password is read from a file (``--password-file``, ``-``
for standard input), typed without echo (``--prompt``), or generated and
printed once; it is never an argument, so it stays out of shell history and
the process list.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from relay.cli._common import Verbs, add_group, add_verb, open_db, print_rows, read_quickly
from relay.core.errors import Invalid
from relay.core.settings import Settings


def _hasher(settings: Settings) -> Any:
    from relay.auth.passwords import make_hasher

    return make_hasher(settings)


def read_password(args: argparse.Namespace) -> str | None:
    """The password from --password-file or --prompt; None: generate one."""
    if args.password_file:
        if args.password_file == "-":
            text = sys.stdin.readline()
        else:
            try:
                with open(args.password_file, encoding="utf-8") as f:
                    text = f.readline()
            except OSError as exc:
                raise Invalid(f"cannot read --password-file: {exc.strerror}", "password") from None
        return text.rstrip("\r\n")
    if args.prompt:
        import getpass

        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise Invalid("the two passwords differ", "password")
        return first
    return None


def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.console_users import create_user

    given = read_password(args)
    new = create_user(
        open_db(settings),
        _hasher(settings),
        args.email,
        args.account,
        args.role,
        args.operator,
        given,
    )
    sees = "every account" if args.operator else f"account {args.account}"
    print(f"created console user {new.email} ({args.role}): it sees {sees}")
    if given is None:
        print(f"password: {new.password}")
        print("(shown once: it is stored only as a hash)")
    return 0


def cmd_user_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import quick

    def when(at: Any) -> str:
        return at.strftime("%Y-%m-%d %H:%M") if at else "-"

    found = read_quickly(settings, quick.users)
    if found is None:
        from relay.service.console_users import list_users

        keys = ("email", "account", "operator", "role", "created_at", "last_sign_in_at")
        found = [{k: getattr(u, k) for k in keys} for u in list_users(open_db(settings))]
    rows = [
        (
            u["email"],
            "operator" if u["operator"] else u["account"] or "-",
            u["role"],
            when(u["created_at"]),
            when(u["last_sign_in_at"]),
        )
        for u in found
    ]
    print_rows(rows, ("EMAIL", "ACCOUNT", "ROLE", "CREATED", "LAST-SIGN-IN"))
    return 0


def cmd_user_remove(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.console_users import remove_user

    remove_user(open_db(settings), args.email)
    print(f"removed console user {args.email}; its sessions have ended")
    return 0


def cmd_user_reset(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.console_users import reset_password

    given = read_password(args)
    new = reset_password(open_db(settings), _hasher(settings), args.email, given)
    print(f"reset the password of {new.email}; its sessions have ended")
    if given is None:
        print(f"password: {new.password}")
    return 0


def _password_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--password-file",
        metavar="PATH",
        help="read the password from the first line of PATH ('-': standard input)",
    )
    s.add_argument("--prompt", action="store_true", help="type the password (not echoed)")


def register(sub: Verbs) -> None:
    """Add ``relay user``."""
    grp = add_group(sub, "user", "web console users (this machine's database only)")
    s = add_verb(grp, "create", cmd_user_create, "create a console user")
    s.add_argument("email", help="the address the user signs in with")
    s.add_argument("--account", help="the account it acts as (an agency's: with its sub-accounts)")
    s.add_argument(
        "--role",
        choices=("admin", "viewer"),
        default="admin",
        help="admin may change things; viewer only reads (default admin)",
    )
    s.add_argument("--operator", action="store_true", help="it sees every account")
    _password_options(s)
    add_verb(grp, "list", cmd_user_list, "list console users (never passwords)")
    s = add_verb(grp, "remove", cmd_user_remove, "remove a console user and end its sessions")
    s.add_argument("email", help="the user's address")
    s = add_verb(grp, "reset-password", cmd_user_reset, "set a new password; sessions end")
    s.add_argument("email", help="the user's address")
    _password_options(s)
