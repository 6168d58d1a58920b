"""Providers as account resources: add, edit, show, remove, defaults, assignments.

A provider belongs to an account; an agency's providers serve its
sub-accounts too. Secrets (API key, SMTP password) are sealed with
RELAY_SECRET_KEY and only ever shown masked. Adding or editing a provider
runs its live check first (``relay.service.provider_checks``); these
functions store only what passed, or what the operator explicitly did not
check (``--no-check``).
"""

from __future__ import annotations

import secrets as tokens
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from relay.core.addresses import check_domain
from relay.core.crypto import SecretBox, mask
from relay.core.errors import ConfigError, Conflict, Invalid, NotFound
from relay.core.outcomes import DUE_STATES, MessageState
from relay.core.settings import PolicySettings
from relay.providers.registry import KINDS, SECRETS, kind_of, transports, validate_options
from relay.service import scope
from relay.service.accounts import check_name, get_account
from relay.service.audit import arg, audited
from relay.store.models import Account, Message
from relay.store.models import Provider as ProviderRow

ROUTING_COLUMNS = ("default_provider_id", "subaccount_provider_id", "assigned_provider_id")


@dataclass(frozen=True)
class ProviderConfig:
    """What a provider is made of: enough to build and check it before saving."""

    name: str
    kind: str
    options: dict[str, Any]
    secrets: dict[str, str]
    domain: str | None = None


def clean(config: ProviderConfig) -> ProviderConfig:
    """Validate a configuration (``Invalid`` names the field) and drop empty values."""
    if config.kind not in KINDS:
        raise Invalid(f"kind must be one of {', '.join(KINDS)}", "kind")
    name = config.name.strip()
    if not name or len(name) > 200:
        raise Invalid("provider name must be 1 to 200 characters", "name")
    options = {k: v for k, v in config.options.items() if v is not None and v != ""}
    secrets = {k: v for k, v in config.secrets.items() if v}
    if config.kind == "smtp" and secrets.get("api_key"):
        raise Invalid("a custom smtp provider takes SMTP credentials only", "api_key")
    validate_options(config.kind, options, secrets)
    domain = check_domain(config.domain) if config.domain else None
    return ProviderConfig(name, config.kind, options, secrets, domain)


def get_provider(session: Session, name: str) -> ProviderRow:
    """The provider ``name`` (or ``AGENCY:NAME``) as the current actor sees it."""
    found = scope.find_provider(session, name)
    row = session.get(ProviderRow, found) if found is not None else None
    if row is None:
        raise NotFound(f"provider {name!r} does not exist")
    return row


def check_references(engine: Engine, policy: PolicySettings) -> None:
    """Providers the configuration names exist (``relay serve``, ``relay config check``).

    A ``system_provider`` that names nothing would leave every account without
    a route to fail its mail at delivery; refuse to start instead.
    """
    if not policy.system_provider:
        return
    with Session(engine) as session:
        try:
            get_provider(session, policy.system_provider)
        except (NotFound, Invalid) as exc:
            raise ConfigError(f"[policy] system_provider: {exc}") from exc


def _of_config(session: Session, args: Mapping[str, Any]) -> scope.Owner:
    """The owner of the provider an edit is for (the edit carries a config, not a name)."""
    return scope.of_provider("name")(session, {"name": args["config"].name})


@audited("provider.add", lambda a: str(a["config"].name), scope.of_account("account"))
def add_provider(
    engine: Engine, box: SecretBox, account: str, config: ProviderConfig
) -> ProviderRow:
    config = clean(config)
    check_name(config.name, "provider")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        owner = get_account(session, account)
        same = select(ProviderRow.id).where(
            ProviderRow.name == config.name, ProviderRow.tree_id == owner.tree_id
        )
        if session.scalar(same):  # unique within the owner's tree only
            raise Conflict(f"provider {config.name!r} already exists")
        row = ProviderRow(
            name=config.name,
            account_id=owner.id,
            tree_id=owner.tree_id,
            kind=config.kind,
            options=config.options,
            secrets=box.seal(config.secrets),
            domain=config.domain,
        )
        session.add(row)
    return row


def load_config(engine: Engine, box: SecretBox, name: str) -> ProviderConfig:
    """The stored configuration; its name is ``name`` as given (``AGENCY:NAME`` stays
    qualified, so an edit saved under it finds the same provider)."""
    with Session(engine) as session:
        row = get_provider(session, name)
        return ProviderConfig(
            name, row.kind, dict(row.options or {}), box.open(row.secrets), row.domain
        )


def edited(
    current: ProviderConfig,
    options: dict[str, Any],
    secrets: dict[str, str],
    domain: str | None,
    remove: Sequence[str] = (),
) -> ProviderConfig:
    """The configuration after an edit: given values replace, None leaves as is;
    the secrets named in ``remove`` go (a SendGrid provider's API key, say, to
    leave it SMTP only: its legs follow its secrets)."""
    for key in remove:
        if key not in SECRETS:
            raise Invalid(f"unknown secret {key!r}; one of {', '.join(SECRETS)}", key)
        if secrets.get(key):
            raise Invalid(f"{key} is both given and removed", key)
    merged = {**current.options, **{k: v for k, v in options.items() if v is not None}}
    kept = {k: v for k, v in current.secrets.items() if k not in remove}
    new_secrets = {**kept, **{k: v for k, v in secrets.items() if v}}
    return clean(
        ProviderConfig(
            current.name,
            current.kind,
            merged,
            new_secrets,
            domain if domain is not None else current.domain,
        )
    )


@audited("provider.edit", lambda a: str(a["config"].name), _of_config)
def save_edit(engine: Engine, box: SecretBox, config: ProviderConfig) -> None:
    """Store an edited configuration (after its check passed)."""
    with Session(engine) as session, session.begin():
        row = get_provider(session, config.name)
        row.options = config.options
        row.secrets = box.seal(config.secrets)
        row.domain = config.domain


def show_provider(engine: Engine, box: SecretBox, name: str) -> dict[str, Any]:
    """The provider with its secrets masked, and who routes through it."""
    config = load_config(engine, box, name)
    with Session(engine) as session:
        row = get_provider(session, name)
        owner = session.get_one(Account, row.account_id) if row.account_id else None
        users = _routed_accounts(session, row.id)
    return {
        "name": row.name,
        "kind": config.kind,
        "transports": "+".join(transports(config.kind, config.secrets)),
        "account": owner.name if owner else None,
        "domain": config.domain,
        "options": config.options,
        "secrets": {k: mask(config.secrets.get(k)) for k in SECRETS if config.secrets.get(k)},
        "used_by": users,
    }


@dataclass(frozen=True)
class WebhookSetup:
    """What the operator pastes into the provider's console, and what else to do there."""

    url: str
    kind: str
    key_set: bool  # a webhook_key is stored: events can be authenticated
    setup: str  # the provider's own steps (events to enable, where its key is)


@audited("provider.webhook", arg("name"), scope.of_provider("name"))
def webhook(engine: Engine, box: SecretBox, name: str, public_url: str) -> WebhookSetup:
    """The provider's event webhook URL, making its unguessable token the first time.

    The token is the only thing that tells one provider's posts from another's
    before they are authenticated; 32 random bytes (RFC 4086 strength) in the
    path, since some consoles take a URL and nothing else.
    """
    if not public_url:
        raise Invalid(
            "[webhooks] public_url is not set: set it (and [webhooks] listen) to the "
            "address providers reach the relay at",
            "public_url",
        )
    with Session(engine) as session, session.begin():
        row = get_provider(session, name)
        record = kind_of(row.kind)
        if record.webhook is None:
            raise Invalid(f"a {row.kind} provider has no event webhook", "kind")
        if not row.webhook_token:
            row.webhook_token = tokens.token_urlsafe(32)
        key_set = bool(box.open(row.secrets).get("webhook_key"))
        return WebhookSetup(
            f"{public_url.rstrip('/')}/hooks/{row.webhook_token}",
            row.kind,
            key_set,
            record.webhook.setup,
        )


def _routed_accounts(session: Session, provider_id: int) -> list[str]:
    """Accounts whose default, sub-account default or assignment is this provider."""
    clauses = [getattr(Account, c) == provider_id for c in ROUTING_COLUMNS]
    return list(session.scalars(select(Account.name).where(or_(*clauses)).order_by(Account.name)))


@audited(
    "provider.remove",
    arg("name"),
    scope.each(scope.of_provider("name"), scope.of_provider("replacement", optional=True)),
)
def remove_provider(engine: Engine, name: str, replacement: str | None = None) -> list[str]:
    """Remove a provider. If accounts route through it, a replacement must be named:
    their defaults, assignments and not yet delivered messages move to it."""
    with Session(engine) as session, session.begin():
        row = get_provider(session, name)
        users = _routed_accounts(session, row.id)
        if users and replacement is None:
            raise Conflict(
                f"provider {name!r} is in use by {', '.join(users)}; name a "
                "replacement (--replacement NAME) or change their routes first"
            )
        new_id = None
        if replacement is not None:
            if replacement == name:
                raise Invalid("the replacement is the provider being removed", "replacement")
            new_id = get_provider(session, replacement).id
        for column in ROUTING_COLUMNS:
            session.execute(
                update(Account).where(getattr(Account, column) == row.id).values({column: new_id})
            )
        session.execute(
            update(Message)
            .where(
                Message.provider_id == row.id, Message.state.in_((*DUE_STATES, MessageState.PAUSED))
            )
            .values(provider_id=new_id)
        )
        session.delete(row)
    return users


def _usable(session: Session, provider: ProviderRow, account: Account) -> None:
    """An account may use its own providers and its agency's."""
    if provider.account_id in (account.id, account.parent_id):
        return
    raise Invalid(f"provider {provider.name!r} belongs to another account", "provider")


@audited(
    "provider.default",
    lambda a: f"{a['account']} ({a['scope']}): {a['name']}",
    scope.each(scope.of_account("account"), scope.of_provider("name")),
)
def set_default(engine: Engine, name: str, account: str, scope: str = "own") -> None:
    """The account's own default, or (an agency's) default for its sub-accounts."""
    if scope not in ("own", "subaccounts"):
        raise Invalid("--for must be own or subaccounts", "for")
    with Session(engine) as session, session.begin():
        owner = get_account(session, account)
        provider = get_provider(session, name)
        _usable(session, provider, owner)
        if scope == "subaccounts":
            if owner.parent_id is not None:
                raise Invalid(
                    f"{account} is a sub-account; only an agency has a default for sub-accounts",
                    "account",
                )
            owner.subaccount_provider_id = provider.id
        else:
            owner.default_provider_id = provider.id


@audited(
    "provider.assign",
    lambda a: f"{a['account']}: {a['name']}",
    scope.each(scope.of_account("account"), scope.of_provider("name")),
)
def assign(engine: Engine, name: str, account: str) -> None:
    """An agency puts one of its sub-accounts on a provider (it wins over defaults)."""
    with Session(engine) as session, session.begin():
        sub = get_account(session, account)
        if sub.parent_id is None:
            raise Invalid(
                f"{account} is an agency; assign sub-accounts, or set the agency's own default",
                "account",
            )
        provider = get_provider(session, name)
        _usable(session, provider, sub)
        sub.assigned_provider_id = provider.id


@audited("provider.unassign", arg("account"), scope.of_account("account"))
def unassign(engine: Engine, account: str) -> None:
    with Session(engine) as session, session.begin():
        sub = get_account(session, account)
        if sub.assigned_provider_id is None:
            raise Conflict(f"{account} is not assigned to a provider")
        sub.assigned_provider_id = None


def transports_of(box: SecretBox, row: ProviderRow) -> str:
    """How a stored provider sends: "api+smtp", "api", "smtp" or "file" (its secrets say)."""
    if row.kind not in KINDS:
        return "-"
    return "+".join(transports(row.kind, box.open(row.secrets))) or "-"


def list_providers(engine: Engine) -> list[tuple[ProviderRow, str]]:
    with Session(engine) as session:
        rows = session.execute(
            select(ProviderRow, Account.name)
            .join(Account, Account.id == ProviderRow.account_id)
            .order_by(ProviderRow.name)
        ).all()
        return [(p, a) for p, a in rows]
