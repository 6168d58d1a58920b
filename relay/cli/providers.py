"""``relay provider ...``: the provider verbs of the command line.

Adding or editing runs the provider's live check first and refuses to save
what fails, printing the provider's own error; ``--no-check`` skips it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from relay.cli._common import (
    Progress,
    Verbs,
    add_format,
    add_secret,
    add_verb,
    open_db,
    print_block,
    print_json,
    print_rows,
    read_quickly,
)
from relay.core.settings import Settings

if TYPE_CHECKING:
    from relay.service import provider_checks as checks


def _env(settings: Settings) -> tuple[Any, Any]:
    from relay.core.crypto import secret_box

    return open_db(settings), secret_box(settings)


def _kind(value: str) -> str:
    """A provider kind the registry knows (read when the verb runs: the registry
    pulls in the HTTP and SMTP clients, which ``relay --help`` need not load)."""
    from relay.providers.registry import KINDS

    if value not in KINDS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(KINDS)}")
    return value


def _rate(value: str) -> float | str:
    """``--max-rate``: N/s, N/min or N/h, or off (read when the verb runs, as ``_kind``)."""
    from relay.core.errors import Invalid
    from relay.providers.registry import parse_rate

    try:
        return parse_rate(value)
    except Invalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _connections(value: str) -> int | str:
    """``--max-connections``: a whole number, or off."""
    from relay.core.errors import Invalid
    from relay.providers.registry import parse_connections

    try:
        return parse_connections(value)
    except Invalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "api_url": args.api_url,
        "smtp_host": args.smtp_host,
        "smtp_port": args.smtp_port,
        "smtp_user": args.smtp_user,
        "smtp_tls": args.smtp_tls,
        "allow_insecure_tls": True if args.allow_insecure_tls else None,
        "ip_pool": args.ip_pool,
        "test_address": args.test_address,
        "source_address": args.source_address,
        "directory": args.directory,
        "region": args.region,
        "sending_domain": args.sending_domain,
        "configuration_set": args.configuration_set,
        "access_key_id": args.access_key_id,
        "max_rate": args.max_rate,
        "max_connections": args.max_connections,
    }


def _secrets(args: argparse.Namespace) -> dict[str, str]:
    return {
        "api_key": args.api_key or "",
        "smtp_password": args.smtp_password or "",
        "webhook_key": args.webhook_key or "",
        "secret_access_key": args.secret_access_key or "",
    }


def _print_legs(result: checks.CheckResult | None) -> None:
    for leg in result.legs if result else []:
        print(f"  {leg.transport}: {'ok' if leg.ok else 'FAILED'}: {leg.detail}")


CHECKING = "checking provider {}: credentials, then a test message per transport"
TESTING = "testing provider {}: a test message per transport"


def progress(name: str, intro: str | None) -> Callable[[str, bool], None]:
    """Say on standard error that a live check has begun, then (through the function
    returned) each transport's result as it arrives: a slow provider takes up to its
    timeout per transport, and is not a silent one."""
    meter = Progress()
    if intro:
        meter.say(intro.format(name))

    def leg_done(transport: str, ok: bool) -> None:
        meter.say(f"  {transport}: {'ok' if ok else 'FAILED'}")

    return leg_done


def _on_leg(leg_done: Callable[[str, bool], None]) -> checks.OnLeg:
    return lambda leg: leg_done(leg.transport, leg.ok)


def _checked(call: Coroutine[Any, Any, tuple[Any, checks.CheckResult | None]]) -> Any:
    import asyncio

    from relay.service import provider_checks as checks

    try:
        found, result = asyncio.run(call)
    except checks.CheckFailed as exc:
        _print_legs(exc.result)
        raise
    _print_legs(result)
    return found


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import provider_checks as checks
    from relay.service.providers import ProviderConfig

    engine, box = _env(settings)
    config = ProviderConfig(args.name, args.kind, _options(args), _secrets(args), args.domain)
    call = checks.add_checked(
        engine,
        box,
        args.account,
        config,
        settings.server.hostname,
        check=not args.no_check,
        on_leg=_on_leg(progress(args.name, None if args.no_check else CHECKING)),
    )
    row = _checked(call)
    print(f"added provider {row.name} ({row.kind}) to account {args.account}")
    return 0


def cmd_edit(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import provider_checks as checks

    engine, box = _env(settings)
    call = checks.edit_checked(
        engine,
        box,
        args.name,
        _options(args),
        _secrets(args),
        args.domain,
        settings.server.hostname,
        check=not args.no_check,
        remove=args.remove_secret or (),
        on_leg=_on_leg(progress(args.name, None if args.no_check else CHECKING)),
    )
    _checked(call)
    print(f"updated provider {args.name}")
    return 0


def print_webhook(setup: dict[str, Any]) -> None:
    """What ``relay provider webhook`` prints, locally and remotely."""
    print(f"URL: {setup['url']}")
    print(setup["setup"])
    if not setup["key_set"]:
        print("No webhook key is set yet: events are refused until it is.")


def cmd_webhook(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    from relay.service import providers as service

    engine, box = _env(settings)
    found = service.webhook(engine, box, args.name, settings.webhooks.public_url)
    print_webhook(dataclasses.asdict(found))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from relay.core.crypto import secret_box
    from relay.service import quick

    box = secret_box(settings)
    view = read_quickly(settings, lambda db: quick.provider(db, box, args.name))
    if view is None:
        from relay.service import providers as service

        view = service.show_provider(open_db(settings), box, args.name)
    print_provider(view, args.format)
    return 0


def print_provider(view: dict[str, Any], fmt: str) -> None:
    """What ``provider show`` prints, locally and remotely (secrets arrive masked)."""
    if fmt == "json":
        print_json(view)
        return
    options = {k: v for k, v in (view.get("options") or {}).items() if v not in (None, "")}
    print_block(
        {
            "name": view["name"],
            "kind": view["kind"],
            "account": view["account"],
            "domain": view["domain"],
            **{k.replace("_", "-"): v for k, v in options.items()},
            **{k.replace("_", "-"): v for k, v in (view.get("secrets") or {}).items()},
            "used-by": view.get("used_by") or [],
        }
    )


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import provider_checks as checks
    from relay.service import providers as service

    engine, box = _env(settings)
    config = service.load_config(engine, box, args.name)
    import asyncio

    on_leg = _on_leg(progress(args.name, TESTING))
    result = asyncio.run(checks.test_send(config, args.to, settings.server.hostname, on_leg=on_leg))
    for leg in result.legs:
        print(f"{leg.transport}: {'ok' if leg.ok else 'FAILED'}: {leg.detail}")
    if not result.ok:  # the provider's owner is told (once a day)
        from relay.service import notifications

        notice = notifications.check_failed(engine, args.name, result.detail)
        if notice is not None:
            notifications.send_now(engine, box, settings.policy, settings.server.hostname, notice)
    return 0 if result.ok else 1


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import providers as service

    engine, _ = _env(settings)
    moved = service.remove_provider(engine, args.name, args.replacement)
    tail = f"; {', '.join(moved)} now use {args.replacement}" if moved else ""
    print(f"removed provider {args.name}{tail}")
    return 0


def cmd_default(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import providers as service

    engine, _ = _env(settings)
    service.set_default(engine, args.name, args.account, args.scope)
    scope = "its sub-accounts" if args.scope == "subaccounts" else "itself"
    print(f"{args.account} now sends through {args.name} by default for {scope}")
    return 0


def cmd_assign(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import providers as service

    engine, _ = _env(settings)
    service.assign(engine, args.name, args.account)
    print(f"{args.account} now sends through {args.name}")
    return 0


def cmd_unassign(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import providers as service

    engine, _ = _env(settings)
    service.unassign(engine, args.account)
    print(f"{args.account} is no longer assigned; its defaults apply")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.core.crypto import secret_box
    from relay.service import quick

    box = secret_box(settings)
    found = read_quickly(settings, lambda db: quick.providers(db, box))
    if found is not None:
        print_provider_list(found, args.format)
        return 0
    from relay.service import providers as service

    engine = open_db(settings)
    print_provider_list(
        [
            {
                "name": p.name,
                "kind": p.kind,
                "transports": service.transports_of(box, p),
                "account": a,
                "domain": p.domain,
                "ip_pool": (p.options or {}).get("ip_pool"),
            }
            for p, a in service.list_providers(engine)
        ],
        args.format,
    )
    return 0


def print_provider_list(items: list[dict[str, Any]], fmt: str) -> None:
    """``provider list``, locally and remotely: the API's fields."""
    if fmt == "json":
        print_json(items)
        return
    rows = [
        (
            p["name"],
            p["kind"],
            p.get("transports") or "-",
            p["account"],
            p["domain"] or "-",
            p["ip_pool"] or "-",
        )
        for p in items
    ]
    print_rows(rows, ("PROVIDER", "KIND", "TRANSPORTS", "ACCOUNT", "DOMAIN", "IP-POOL"))


def cmd_ips(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import provider_checks as checks
    from relay.service import providers as service

    engine, box = _env(settings)
    config = service.load_config(engine, box, args.name)
    for transport, address in checks.egress_addresses(config):
        print(f"{transport}\t{address}")
    return 0


def _needs_api_key(args: argparse.Namespace) -> bool:
    """``provider add`` of a kind whose API takes a key (SendGrid, SparkPost, Mailgun)
    needs it, unless an SMTP password is given in some form: SMTP alone is a provider."""
    import os

    from relay.providers.registry import KINDS

    kind = KINDS.get(getattr(args, "kind", None) or "")
    if kind is None or kind.api is None or kind.api_secret != "api_key":
        return False
    smtp_given = (
        getattr(args, "smtp_password", None)
        or getattr(args, "smtp_password_file", None)
        or os.environ.get("RELAY_SMTP_PASSWORD")
    )
    return not smtp_given


def _connection_options(s: argparse.ArgumentParser, adding: bool) -> None:
    add_secret(
        s,
        "--api-key",
        "the provider's API key",
        "the provider's API key (SendGrid, SparkPost; also their SMTP relay's password)",
        required=_needs_api_key if adding else lambda _args: False,
    )
    s.add_argument("--api-url", help="API base URL: a region, or the emulator")
    s.add_argument("--smtp-host", help="SMTP server (kind smtp), or another relay host")
    s.add_argument("--smtp-port", type=int, help="its port (default: the kind's, or 587)")
    s.add_argument("--smtp-user", help="SMTP AUTH username (kind smtp)")
    add_secret(
        s,
        "--smtp-password",
        "the SMTP password",
        "SMTP AUTH password (kind smtp)",
        required=(lambda args: args.kind == "smtp" and bool(args.smtp_user))
        if adding
        else (lambda _args: False),
    )
    s.add_argument(
        "--smtp-tls",
        choices=("implicit", "starttls", "none"),
        help="implicit TLS (465), STARTTLS (587), or none (loopback and tests only)",
    )
    s.add_argument(
        "--allow-insecure-tls",
        action="store_true",
        help="accept a certificate that cannot be verified",
    )
    s.add_argument("--ip-pool", help="the provider's dedicated IP pool for this traffic")
    s.add_argument("--source-address", help="local IP to connect from (static egress)")
    s.add_argument("--domain", help="bind the provider to this sending domain")
    s.add_argument("--test-address", help="an address the provider accepts as a sender")
    s.add_argument("--directory", help="outbox: where .eml files go")
    s.add_argument("--region", help="Mailgun: us or eu; Amazon SES: the AWS region")
    s.add_argument("--sending-domain", help="Mailgun: the domain messages are sent through")
    s.add_argument("--configuration-set", help="Amazon SES: the configuration set for events")
    s.add_argument("--access-key-id", help="Amazon SES: the IAM access key id")
    add_secret(
        s,
        "--secret-access-key",
        "the AWS secret access key",
        "Amazon SES: the IAM secret access key",
        required=(lambda args: bool(args.access_key_id)) if adding else (lambda _args: False),
    )
    add_secret(
        s,
        "--webhook-key",
        "the webhook key",
        "event webhook: SendGrid's verification key; SparkPost's USER:PASSWORD;"
        " Mailgun's HTTP webhook signing key; Amazon SES: the SNS topic's ARN",
    )
    s.add_argument(
        "--max-rate",
        type=_rate,
        metavar="N/s",
        help="most messages a second to this provider, all processes and nodes together: "
        "N/s, N/min or N/h; off clears it",
    )
    s.add_argument(
        "--max-connections",
        type=_connections,
        metavar="N",
        help="most deliveries at once to this provider, all processes and nodes together; "
        "off clears it",
    )
    s.add_argument("--no-check", action="store_true", help="skip the live check")


def register(sub: Verbs) -> None:
    """Add ``relay provider`` and its verbs to the parser."""
    parser = sub.add_parser("provider", help="outbound providers", description="outbound providers")
    prov = parser.add_subparsers(dest="provider_verb", required=True, metavar="VERB")
    s = add_verb(prov, "add", cmd_add, "add a provider to an account (after its live check)")
    s.add_argument("name")
    s.add_argument("--account", required=True, help="the account that owns it")
    s.add_argument(
        "--kind",
        required=True,
        type=_kind,
        help="sendgrid, sparkpost, mailgun, ses, smtp or outbox",
    )
    _connection_options(s, adding=True)
    s = add_verb(prov, "edit", cmd_edit, "change a provider (the live check runs first)")
    s.add_argument("name")
    _connection_options(s, adding=False)
    s.add_argument(
        "--remove-secret",
        action="append",
        choices=("api_key", "smtp_password", "webhook_key", "secret_access_key"),
        metavar="SECRET",
        help="drop a stored secret (repeatable), e.g. api_key to leave a provider SMTP only",
    )
    s = add_verb(prov, "show", cmd_show, "a provider, secrets masked")
    s.add_argument("name")
    add_format(s)
    s = add_verb(prov, "ips", cmd_ips, "the addresses the relay connects from")
    s.add_argument("name")
    s = add_verb(prov, "webhook", cmd_webhook, "the URL and steps for the provider's event webhook")
    s.add_argument("name")
    s = add_verb(prov, "test", cmd_test, "send a test message now through each transport")
    s.add_argument("name")
    s.add_argument("--to", required=True, help="the recipient of the test message")
    s = add_verb(prov, "remove", cmd_remove, "remove a provider")
    s.add_argument("name")
    s.add_argument("--replacement", help="where accounts that use it go instead")
    s = add_verb(prov, "default", cmd_default, "make a provider an account's default")
    s.add_argument("name")
    s.add_argument("--account", required=True, help="the account whose default it becomes")
    s.add_argument(
        "--for",
        dest="scope",
        choices=("own", "subaccounts"),
        default="own",
        help="the account's own mail (default), or its sub-accounts'",
    )
    s = add_verb(prov, "assign", cmd_assign, "put a sub-account on a provider")
    s.add_argument("name")
    s.add_argument("--account", required=True, help="the sub-account")
    s = add_verb(prov, "unassign", cmd_unassign, "take a sub-account off its assigned provider")
    s.add_argument("--account", required=True, help="the sub-account")
    add_format(add_verb(prov, "list", cmd_list, "list providers"))
