"""``relay demo``: one tenant ready to send, on unprivileged loopback ports.

Seeds (once) an agency, a sub-account, the domain example.test with one SMTP
credential (its password printed that once), the sender *@example.test
verified, and an outbox provider that writes each delivered message as an
.eml file under var/outbox.

It binds every port first and only then seeds and prints: a port in use
fails the demo before a password is made that nobody would see work.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from relay.core.errors import RelayError
from relay.core.settings import ListenerSettings, Settings

if TYPE_CHECKING:
    from relay.app import Relay

AGENCY, ACCOUNT, DOMAIN, USER = "demo-agency", "demo", "example.test", "app@example.test"
PORTS = {"smtp": 10025, "submissions": 10465, "submission": 10587, "alt": 2525}


def demo_settings(settings: Settings) -> Settings:
    """The configured settings, with loopback listeners on unprivileged ports if none."""
    if settings.listeners:
        return settings
    listeners = tuple(
        ListenerSettings(name, "127.0.0.1", port, allow_plaintext_auth=False)
        for name, port in PORTS.items()
    )
    return replace(settings, listeners=listeners)


def seed(settings: Settings) -> list[str]:
    """Make the demo tenant once; what to tell the operator about it."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from relay.auth.passwords import make_hasher
    from relay.core.crypto import secret_box
    from relay.service import accounts, providers
    from relay.store.engine import make_engine, migrate
    from relay.store.models import Account

    engine = make_engine(settings.database.url)
    migrate(engine)
    with Session(engine) as session:
        seeded = session.scalar(select(Account.id).where(Account.name == ACCOUNT)) is not None
    if not seeded:
        accounts.create_account(engine, AGENCY)
        accounts.create_account(engine, ACCOUNT, agency=AGENCY)
        accounts.add_domain(engine, DOMAIN, ACCOUNT)
        new = accounts.create_credential(engine, make_hasher(settings), USER, None)
        accounts.verify_sender(engine, f"*@{DOMAIN}", ACCOUNT)
        outbox = {"directory": str(settings.var_path / "outbox")}
        config = providers.ProviderConfig("demo-outbox", "outbox", outbox, {})
        providers.add_provider(engine, secret_box(settings), AGENCY, config)
        providers.set_default(engine, "demo-outbox", AGENCY, "own")
        providers.set_default(engine, "demo-outbox", AGENCY, "subaccounts")
        lines = [
            f"demo tenant created: username {new.username}  password {new.password}",
            f"(the password is shown this once; reset it with `relay credential reset {USER}`)",
        ]
    else:
        lines = [
            f"demo tenant exists: username {USER} (reset the password with "
            f"`relay credential reset {USER}`)"
        ]
    engine.dispose()
    return lines


def started(settings: Settings, relay: Relay) -> None:
    """Every port is bound: seed, then say where everything is."""
    lines = seed(settings)
    ports = ", ".join(
        f"{item.settings.name} {item.settings.host}:{item.port}" for item in relay.listeners
    )
    submission = next((i.port for i in relay.listeners if i.settings.name == "submission"), None)
    lines.append(f"listening on {ports}; delivered mail lands in {settings.var_path / 'outbox'}/")
    if submission is not None:
        lines.append(
            f"try: swaks --server 127.0.0.1:{submission} --tls "
            f"--auth-user {USER} --auth-password PASSWORD --from app@example.test "
            "--to someone@example.org"
        )
    if relay.admin_port is not None:
        host = settings.admin.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        lines.append(f"admin API: http://{host}:{relay.admin_port}/api/v1 (docs at /api/v1/docs)")
        lines.append("make a token for it (shown once): relay token create --operator --label demo")
    print("\n".join(lines), flush=True)


def run_demo(settings: Settings) -> int:
    """Serve the demo in this process; bind, then seed and print."""
    import uvloop

    from relay.app import run
    from relay.server import setup_logging

    settings = demo_settings(settings)
    setup_logging(settings)
    try:
        uvloop.run(run(settings, on_started=lambda relay: started(settings, relay)))
    except RelayError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    return 0
