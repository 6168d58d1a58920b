"""Suppression lists as the operator's verbs: list, add, remove, import, export, sync.

Scope as every account verb: a tenant sees and changes the lists of the
accounts its token sees; each change is audited. The lists themselves are
``relay.suppression.lists``; ``sync`` reads a provider's own lists
(``relay.suppression.sync``) into the list of the account that owns the
provider.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from relay.core.crypto import SecretBox
from relay.core.errors import Invalid
from relay.core.settings import SuppressionSettings
from relay.providers import mailgun as mailgun_provider
from relay.providers import sendgrid as sendgrid_provider
from relay.providers import sparkpost as sparkpost_provider
from relay.service import scope
from relay.service.audit import arg, audited
from relay.service.providers import get_provider
from relay.suppression import lists, sync
from relay.suppression.lists import Entry

MAX_PAGE = 1000


@dataclass(frozen=True)
class Changed:
    """What an import or a sync did: rows added or made stronger, and left as they were."""

    added: int
    unchanged: int


def _account_id(engine: Engine, account: str) -> int:
    return scope.require(engine, scope.of_account("account"), account=account)


def list_suppressions(
    engine: Engine,
    account: str,
    reason: str | None = None,
    contains: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> tuple[list[Entry], int]:
    """The account's own list by address (filtered, paged), and how many match."""
    if limit is not None and not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be 1 to {MAX_PAGE}", "limit")
    if offset < 0:
        raise Invalid("offset must be 0 or more", "offset")
    return lists.entries(engine, _account_id(engine, account), reason, contains, limit, offset)


@audited("suppression.add", arg("address"), scope.of_account("account"))
def add_suppression(
    engine: Engine,
    account: str,
    address: str,
    reason: str = lists.MANUAL,
    detail: str | None = None,
) -> tuple[Entry, bool]:
    """Add ``address`` (idempotent; a stronger reason replaces a weaker one)."""
    if reason == lists.SOFT_BOUNCE:
        raise Invalid("soft_bounce entries come from provider events only", "reason")
    return lists.add(engine, _account_id(engine, account), address, reason, "manual", detail)


@audited("suppression.remove", arg("address"), scope.of_account("account"))
def remove_suppression(engine: Engine, account: str, address: str) -> None:
    lists.remove(engine, _account_id(engine, account), address)


def export_suppressions(engine: Engine, account: str) -> str:
    """The account's list as CSV: ``address,reason,created_at,detail``."""
    rows, _ = lists.entries(engine, _account_id(engine, account))
    return lists.export_csv(rows)


@audited("suppression.import", arg("account"), scope.of_account("account"))
def import_suppressions(
    engine: Engine, settings: SuppressionSettings, account: str, data: str
) -> Changed:
    """Rows of a CSV (see ``lists.parse_csv``), each added as ``add`` does;
    the whole file is checked before anything is written."""
    rows = lists.parse_csv(data)
    account_id = _account_id(engine, account)
    return _add_all(engine, settings, account_id, "import", rows)


def _add_all(
    engine: Engine,
    settings: SuppressionSettings,
    account_id: int,
    source: str,
    rows: Sequence[lists.ImportRow | sync.Synced],
) -> Changed:
    added = unchanged = 0
    ttl = dt.timedelta(seconds=settings.soft_bounce_ttl)
    for row in rows:
        expires = dt.datetime.now(dt.UTC) + ttl if row.reason == lists.SOFT_BOUNCE else None
        _, changed = lists.add(
            engine,
            account_id,
            row.address,
            row.reason,
            source,
            row.detail,
            expires_at=expires,
            created_at=row.created_at,
        )
        added, unchanged = (added + 1, unchanged) if changed else (added, unchanged + 1)
    return Changed(added, unchanged)


@audited("suppression.sync", arg("provider"), scope.of_provider("provider"))
def sync_suppressions(
    engine: Engine, box: SecretBox, settings: SuppressionSettings, provider: str
) -> tuple[str, Changed]:
    """Read the provider's own lists into its owner account's; (account name, counts).

    Synchronous (HTTP to the provider): the CLI runs it in its own process, the
    API on its thread pool; never on the relay's event loop.
    """
    with Session(engine) as session:
        row = get_provider(session, provider)
        kind, options, owner = row.kind, dict(row.options or {}), row.account_id
        sealed = row.secrets
    if owner is None:
        raise Invalid(f"provider {provider} belongs to no account", "provider")
    api_key = box.open(sealed).get("api_key", "")
    if not api_key and kind in ("sendgrid", "sparkpost", "mailgun"):
        raise Invalid(f"provider {provider} has no API key: its lists are read through its API")
    if kind == "sendgrid":
        url = options.get("api_url") or sendgrid_provider.API_URL
        entries = sync.sendgrid(str(url), api_key)
    elif kind == "sparkpost":
        url = options.get("api_url") or sparkpost_provider.API_URL
        entries = sync.sparkpost(str(url), api_key)
    elif kind == "mailgun":
        url = options.get("api_url") or mailgun_provider.defaults(options)["api_url"]
        entries = sync.mailgun(str(url), str(options.get("sending_domain")), api_key)
    else:
        raise Invalid(
            f"provider {provider} is {kind}: only sendgrid, sparkpost and mailgun have lists"
        )
    valid = []
    for entry in entries:
        try:
            lists.normalise(entry.address)
        except Invalid:
            continue  # an address we could not send to anyway
        valid.append(entry)
    changed = _add_all(engine, settings, owner, "sync", valid)
    return scope.account_name(engine, owner) or "", changed
