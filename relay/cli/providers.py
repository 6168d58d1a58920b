"""``relay provider ...``: the provider verbs of the command line.

Adding or editing runs the provider's live check first and refuses to save
what fails, printing the provider's own error; ``--no-check`` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from relay.cli._common import Verbs, add_verb, open_db, print_rows
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


def _checked(call: Coroutine[Any, Any, tuple[Any, checks.CheckResult | None]]) -> Any:
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
        engine, box, args.account, config, settings.server.hostname, check=not args.no_check
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
    from relay.service import providers as service

    engine, box = _env(settings)
    print(json.dumps(service.show_provider(engine, box, args.name), indent=2))
    return 0


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import provider_checks as checks
    from relay.service import providers as service

    engine, box = _env(settings)
    config = service.load_config(engine, box, args.name)
    result = asyncio.run(checks.test_send(config, args.to, settings.server.hostname))
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
    from relay.service import providers as service

    engine, box = _env(settings)
    rows = [
        (
            p.name,
            p.kind,
            service.transports_of(box, p),
            a,
            p.domain or "-",
            (p.options or {}).get("ip_pool") or "-",
        )
        for p, a in service.list_providers(engine)
    ]
    print_rows(rows, ("PROVIDER", "KIND", "TRANSPORTS", "ACCOUNT", "DOMAIN", "IP-POOL"))
    return 0


def cmd_ips(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import provider_checks as checks
    from relay.service import providers as service

    engine, box = _env(settings)
    config = service.load_config(engine, box, args.name)
    for transport, address in checks.egress_addresses(config):
        print(f"{transport}\t{address}")
    return 0


def _connection_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--api-key")
    s.add_argument("--api-url", help="API base URL: a region, or the emulator")
    s.add_argument("--smtp-host")
    s.add_argument("--smtp-port", type=int)
    s.add_argument("--smtp-user")
    s.add_argument("--smtp-password")
    s.add_argument("--smtp-tls", choices=("implicit", "starttls", "none"))
    s.add_argument(
        "--allow-insecure-tls",
        action="store_true",
        help="accept a certificate that cannot be verified",
    )
    s.add_argument("--ip-pool")
    s.add_argument("--source-address", help="local IP to connect from (static egress)")
    s.add_argument("--domain", help="bind the provider to this sending domain")
    s.add_argument("--test-address", help="an address the provider accepts as a sender")
    s.add_argument("--directory", help="outbox: where .eml files go")
    s.add_argument("--region", help="Mailgun: us or eu; Amazon SES: the AWS region")
    s.add_argument("--sending-domain", help="Mailgun: the domain messages are sent through")
    s.add_argument("--configuration-set", help="Amazon SES: the configuration set for events")
    s.add_argument("--access-key-id", help="Amazon SES: the IAM access key id")
    s.add_argument("--secret-access-key", help="Amazon SES: the IAM secret access key")
    s.add_argument(
        "--webhook-key",
        help=(
            "event webhook: SendGrid's verification key; SparkPost's USER:PASSWORD;"
            " Mailgun's HTTP webhook signing key; Amazon SES: the SNS topic's ARN"
        ),
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
    s.add_argument("--account", required=True)
    s.add_argument(
        "--kind",
        required=True,
        type=_kind,
        help="sendgrid, sparkpost, mailgun, ses, smtp or outbox",
    )
    _connection_options(s)
    s = add_verb(prov, "edit", cmd_edit, "change a provider (the live check runs first)")
    s.add_argument("name")
    _connection_options(s)
    s.add_argument(
        "--remove-secret",
        action="append",
        choices=("api_key", "smtp_password", "webhook_key", "secret_access_key"),
        metavar="SECRET",
        help="drop a stored secret (repeatable), e.g. api_key to leave a provider SMTP only",
    )
    for verb, handler, what in (
        ("show", cmd_show, "a provider, secrets masked"),
        ("ips", cmd_ips, "the addresses the relay connects from"),
    ):
        add_verb(prov, verb, handler, what).add_argument("name")
    s = add_verb(prov, "webhook", cmd_webhook, "the URL and steps for the provider's event webhook")
    s.add_argument("name")
    s = add_verb(prov, "test", cmd_test, "send a test message now through each transport")
    s.add_argument("name")
    s.add_argument("--to", required=True)
    s = add_verb(prov, "remove", cmd_remove, "remove a provider")
    s.add_argument("name")
    s.add_argument("--replacement", help="where accounts that use it go instead")
    s = add_verb(prov, "default", cmd_default, "make a provider an account's default")
    s.add_argument("name")
    s.add_argument("--account", required=True)
    s.add_argument("--for", dest="scope", choices=("own", "subaccounts"), default="own")
    s = add_verb(prov, "assign", cmd_assign, "put a sub-account on a provider")
    s.add_argument("name")
    s.add_argument("--account", required=True)
    s = add_verb(prov, "unassign", cmd_unassign, "take a sub-account off its assigned provider")
    s.add_argument("--account", required=True)
    add_verb(prov, "list", cmd_list, "list providers")
