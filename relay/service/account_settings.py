"""``relay account edit``: an account's feedback-loop settings, in one verb.

Where its notifications go (addresses, a URL and the secret that signs the
POSTs), whether an agency shares its suppression list with its sub-accounts,
RFC 8058 one-click unsubscribe on campaign mail, and the provider's open and
click tracking. Other parts read these columns; only this module writes them.

An operator edits any account, an agency's token itself and its sub-accounts;
a sub-account's token none (its agency answers for it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from relay.core.addresses import check_sender
from relay.core.crypto import SecretBox
from relay.core.errors import Invalid, OperatorOnly
from relay.service import scope
from relay.service.accounts import get_account
from relay.service.audit import arg, audited
from relay.service.notifications import new_secret, seal_secret
from relay.store.models import Account

MAX_ADDRESSES = 10
TRACKING: dict[str, bool | None] = {"on": True, "off": False, "default": None}
SWITCH: dict[str, bool | None] = {"on": True, "off": False}


@dataclass(frozen=True)
class AccountChanges:
    """What to change; None leaves a setting as it is. ``notify=[]`` and
    ``notify_url=""`` clear; tracking takes ``on``, ``off`` or ``default``."""

    notify: list[str] | None = None
    notify_url: str | None = None
    share_suppressions: str | None = None
    unsubscribe: str | None = None
    open_tracking: str | None = None
    click_tracking: str | None = None

    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)


@dataclass(frozen=True)
class Edited:
    account: Account
    notify_secret: str | None = None  # a new secret, shown once
    changed: list[str] = field(default_factory=list)


def check_notify_address(address: str) -> str:
    try:
        pattern = check_sender(address)
    except Invalid as exc:
        raise Invalid(f"notification address {address!r}: {exc}", "notify") from exc
    if "@" not in pattern or "*" in pattern or pattern.startswith("@"):
        raise Invalid(f"{address!r} is not an email address", "notify")
    return pattern


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_notify_url(url: str) -> str:
    """https, or http to a loopback address (a receiver on the same host)."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError as exc:
        raise Invalid(f"notify URL is not a URL: {exc}", "notify_url") from exc
    if len(url) > 2000 or not host or parts.username or parts.password:
        raise Invalid(
            "notify URL must be an http(s) URL with a host, no user or password, "
            "at most 2000 characters",
            "notify_url",
        )
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(host)):
        return url
    raise Invalid("notify URL must use https (http only to a loopback address)", "notify_url")


def _switch(value: str, choices: dict[str, bool | None], field_name: str) -> bool | None:
    if value not in choices:
        raise Invalid(f"{field_name} must be one of {', '.join(choices)}", field_name)
    return choices[value]


def _guard_actor(account: Account) -> None:
    """Operator, or an agency's token (over itself and its sub-accounts)."""
    actor = scope.current()
    if actor.scope.everything or actor.account_id is None:
        return
    agency = account.id if account.parent_id is None else account.parent_id
    if actor.account_id != agency:
        raise OperatorOnly("only an operator or the account's agency may edit its settings")


@audited("account.edit", arg("name"), scope.of_account("name"))
def edit_account(engine: Engine, box: SecretBox, name: str, changes: AccountChanges) -> Edited:
    """Apply ``changes``; a new notify URL gets a new signing secret (returned once)."""
    if changes.empty():
        raise Invalid("nothing to change: give at least one setting", "name")
    addresses = None
    if changes.notify is not None:
        addresses = sorted({check_notify_address(a) for a in changes.notify if a.strip()})
        if len(addresses) > MAX_ADDRESSES:
            raise Invalid(f"at most {MAX_ADDRESSES} notification addresses", "notify")
    url = changes.notify_url
    if url:
        url = check_notify_url(url)
    secret = None
    changed = []
    with Session(engine, expire_on_commit=False) as session, session.begin():
        account = get_account(session, name)
        _guard_actor(account)
        if addresses is not None:
            account.notify_addresses = addresses
            changed.append("notify")
        if url is not None:
            if url:
                secret = new_secret()
                account.notify_url, account.notify_secret = url, seal_secret(box, secret)
            else:
                account.notify_url, account.notify_secret = None, None
            changed.append("notify_url")
        if changes.share_suppressions is not None:
            share = _switch(changes.share_suppressions, SWITCH, "share_suppressions")
            if share and account.parent_id is not None:
                raise Invalid(
                    f"{account.name} is a sub-account: only an agency shares its "
                    "suppression list (with its sub-accounts)",
                    "share_suppressions",
                )
            account.share_suppressions = bool(share)
            changed.append("share_suppressions")
        if changes.unsubscribe is not None:
            account.unsubscribe = bool(_switch(changes.unsubscribe, SWITCH, "unsubscribe"))
            changed.append("unsubscribe")
        if changes.open_tracking is not None:
            account.open_tracking = _switch(changes.open_tracking, TRACKING, "open_tracking")
            changed.append("open_tracking")
        if changes.click_tracking is not None:
            account.click_tracking = _switch(changes.click_tracking, TRACKING, "click_tracking")
            changed.append("click_tracking")
    return Edited(account, secret, changed)
