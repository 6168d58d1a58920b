"""``relay demo``: one tenant ready to send, on unprivileged loopback ports.

Seeds (once) an agency, a sub-account, the domain example.test with one SMTP
credential (its password printed that once), the sender *@example.test
verified, and an outbox provider that writes each delivered message as an
.eml file under var/outbox.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.core.settings import ListenerSettings, Settings
from relay.store.engine import make_engine, migrate
from relay.store.models import Account

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


def seed(settings: Settings) -> None:
    from relay.auth.passwords import make_hasher
    from relay.core.crypto import secret_box
    from relay.service import accounts, providers

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
        print(f"demo tenant created: username {new.username}  password {new.password}")
        print(f"(the password is shown this once; reset it with `relay credential reset {USER}`)")
    else:
        print(
            f"demo tenant exists: username {USER} (reset the password with "
            f"`relay credential reset {USER}`)"
        )
    engine.dispose()
    ports = ", ".join(f"{item.name} {item.host}:{item.port}" for item in settings.listeners)
    print(f"listening on {ports}; delivered mail lands in {settings.var_path / 'outbox'}/")
    print(
        f"try: swaks --server 127.0.0.1:{PORTS['submission']} --tls "
        f"--auth-user {USER} --auth-password PASSWORD --from app@example.test "
        "--to someone@example.org"
    )
