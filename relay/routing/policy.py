"""Policy: what happens to a message once its header is read.

Two questions, answered from the database on a worker thread:

1. Is every sender (envelope sender, each header From, Sender) verified for
   the credential's account? If not, the credential's policy, else the
   account's, else the configured default decides: ``reject`` (550 5.7.1,
   nothing queued), ``drop`` (250, recorded as dropped) or ``pause`` (250,
   held). The default ``auto`` pauses campaign mail and drops the rest.
2. Which provider carries it? In order: the account's provider bound to the
   sender's domain; the provider assigned to the account, or its own
   default; for a sub-account, its agency's default for sub-accounts; the
   system default from config. No route: held as paused, "no provider".
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from relay.core.replies import SENDER_NOT_VERIFIED, Reply
from relay.core.settings import PolicySettings
from relay.store.models import Account, Provider, Sender

POLICIES = ("reject", "drop", "pause")


@dataclass(frozen=True)
class Decision:
    state: str  # queued | paused | dropped | rejected
    reason: str | None = None
    provider_id: int | None = None
    reply: Reply | None = None


@dataclass(frozen=True)
class Submission:
    """What policy needs to know about one message."""

    account_id: int
    credential_policy: str | None
    campaign: bool
    senders: tuple[str, ...]  # envelope sender first, then header From and Sender


def sender_matches(address: str, patterns: Iterable[str]) -> bool:
    """True if ``address`` is a verified address or in a verified domain."""
    address = address.strip().lower()
    domain = address.rpartition("@")[2]
    for pattern in patterns:
        p = pattern.lower()
        if p in (address, domain) or (p.startswith("*@") and p[2:] == domain):
            return True
    return False


def unverified_action(
    credential_policy: str | None, account_policy: str | None, default: str, campaign: bool
) -> str:
    for policy in (credential_policy, account_policy, default):
        if policy in POLICIES:
            return policy
    return "pause" if campaign else "drop"


class Policy:
    def __init__(self, engine: Engine, settings: PolicySettings) -> None:
        self._engine = engine
        self._settings = settings

    async def decide(self, sub: Submission) -> Decision:
        return await asyncio.to_thread(self._decide, sub)

    def _decide(self, sub: Submission) -> Decision:
        with Session(self._engine) as session:
            account = session.get_one(Account, sub.account_id)
            parent = session.get(Account, account.parent_id) if account.parent_id else None
            patterns = list(
                session.scalars(
                    select(Sender.pattern).where(
                        Sender.account_id == sub.account_id, Sender.verified.is_(True)
                    )
                )
            )
            route = self._route(session, account, parent, sub.senders[0] if sub.senders else "")
            provider = session.get(Provider, route) if route is not None else None
        # The address the provider was checked with is one it accepts as a
        # sender: it counts as verified for mail routed through that provider.
        test_address = (provider.options or {}).get("test_address") if provider else None
        if test_address:
            patterns.append(str(test_address))
        bad = [s for s in dict.fromkeys(sub.senders) if not sender_matches(s, patterns)]
        if bad:
            action = unverified_action(
                sub.credential_policy,
                account.unverified_policy,
                self._settings.default_unverified,
                sub.campaign,
            )
            reason = f"sender {', '.join(bad)} not verified for account {account.name}"
            if action == "reject":
                text = f"Sender {bad[0]} is not verified for this account (policy: reject)"
                return Decision("rejected", reason, reply=SENDER_NOT_VERIFIED.with_text(text))
            return Decision("dropped" if action == "drop" else "paused", reason, route)
        if route is None:
            return Decision("paused", "no provider", None)
        return Decision("queued", None, route)

    def _route(
        self, session: Session, account: Account, parent: Account | None, sender: str
    ) -> int | None:
        domain = sender.rpartition("@")[2].lower()
        if domain:
            bound = session.execute(
                select(Provider.id)
                .where(
                    Provider.account_id.in_([account.id, account.parent_id or account.id]),
                    Provider.domain == domain,
                )
                .order_by((Provider.account_id == account.id).desc())  # its own first
            ).scalar()
            if bound is not None:
                return int(bound)
        for candidate in (
            account.assigned_provider_id,
            account.default_provider_id,
            parent.subaccount_provider_id if parent else None,
        ):
            if candidate is not None:
                return candidate
        if self._settings.system_provider:
            found = session.execute(
                select(Provider.id).where(Provider.name == self._settings.system_provider)
            ).scalar()
            return int(found) if found is not None else None
        return None
