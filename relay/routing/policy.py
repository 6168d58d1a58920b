"""Policy: what happens to a message once its header is read.

Two questions, answered from the database on a worker thread (or from the
process's ``DecisionCache``, which a change anywhere empties within
``[policy] cache_seconds``: ``relay.store.generation``):

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
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Engine, bindparam, select, text

from relay.core.addresses import sender_matches
from relay.core.outcomes import MessageState
from relay.core.replies import SENDER_NOT_VERIFIED, Reply, account_suspended
from relay.core.settings import PolicySettings
from relay.store.generation import DecisionCache
from relay.store.models import Provider

POLICIES = ("reject", "drop", "pause")


@dataclass(frozen=True)
class Decision:
    state: str  # a MessageState (queued, paused, dropped), or rejected: nothing stored
    reason: str | None = None
    provider_id: int | None = None
    reply: Reply | None = None
    # The account asks for one-click unsubscribe on its campaign mail (RFC 8058),
    # read with the rest so intake needs no query of its own.
    unsubscribe: bool = False


@dataclass(frozen=True)
class Submission:
    """What policy needs to know about one message."""

    account_id: int
    credential_policy: str | None
    campaign: bool
    senders: tuple[str, ...]  # envelope sender first, then header From and Sender


def unverified_action(
    credential_policy: str | None, account_policy: str | None, default: str, campaign: bool
) -> str:
    for policy in (credential_policy, account_policy, default):
        if policy in POLICIES:
            return policy
    return "pause" if campaign else "drop"


@dataclass(frozen=True)
class _Context:
    """Everything policy reads for one message, from one round trip of two queries."""

    name: str
    unverified_policy: str | None
    route: int | None
    patterns: list[str]
    unsubscribe: bool = False
    suspended: str | None = None  # the reason, while the account is suspended
    # The route's ``options.test_address`` (read with the rest when cached).
    test_address: str | None = None


# The hot path's queries as plain SQL, prepared once: building and caching
# SQLAlchemy statements per message cost more than running them (profiled).
# Standard SQL, the same on SQLite and PostgreSQL.
_CONTEXT = text("""
SELECT a.name, a.unverified_policy, a.unsubscribe, a.suspended_at, a.suspended_reason,
       (SELECT id FROM providers WHERE domain = :domain AND account_id = a.id LIMIT 1),
       (SELECT id FROM providers WHERE domain = :domain AND account_id = a.parent_id LIMIT 1),
       a.assigned_provider_id, a.default_provider_id, p.subaccount_provider_id
FROM accounts a LEFT OUTER JOIN accounts p ON p.id = a.parent_id
WHERE a.id = :account_id
""")
_PATTERNS = text("SELECT pattern FROM senders WHERE account_id = :account_id AND verified")
# The system provider by its name, or AGENCY:NAME (names are unique per agency
# tree). A plain name that a later provider in another tree repeats still means
# the first one, which `relay serve` checked at start.
_BY_NAME = text("""
SELECT p.id FROM providers p LEFT OUTER JOIN accounts t ON t.id = p.tree_id
WHERE p.name = :name OR (p.name = :short AND t.name = :agency AND t.parent_id IS NULL)
ORDER BY p.name = :name DESC, p.id LIMIT 1
""")
_OPTIONS = select(Provider.options).where(Provider.id == bindparam("provider_id"))


class Policy:
    def __init__(
        self,
        engine: Engine,
        settings: PolicySettings,
        suspend_action: str = "reject",
        cache: DecisionCache | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._cache = cache
        # [reputation] suspend_action: a suspended account's mail is refused
        # (MAIL FROM refuses it first; this catches a suspension since) or held.
        self._suspend_action = suspend_action

    async def decide(self, sub: Submission) -> Decision:
        return await asyncio.to_thread(self.decide_now, sub)

    async def fresh(self) -> None:
        """Forget what was cached if anything changed (read at most every
        ``[policy] cache_seconds``): call before ``decide_cached``."""
        if self._cache is not None:
            await self._cache.fresh()

    def decide_cached(self, sub: Submission) -> Decision | None:
        """The decision from what the cache holds for the account and the sender's
        domain, without I/O (on the loop); None: not cached, ``decide`` it."""
        if self._cache is None:
            return None
        ctx = self._cache.get(self._key(sub))
        return None if ctx is None else self._judge(sub, ctx)

    @staticmethod
    def _key(sub: Submission) -> tuple[str, int, str]:
        return ("policy", sub.account_id, _domain(sub))

    def decide_now(self, sub: Submission) -> Decision:
        """``decide`` on the calling thread (a worker thread: it reads the database),
        for a caller that has more to read in the same hop off the loop."""
        return self._decide(sub)

    def _context(self, conn: Connection, sub: Submission) -> _Context:
        params = {"account_id": sub.account_id, "domain": _domain(sub)}
        name, policy, unsubscribe, suspended_at, suspended_reason, *candidates = conn.execute(
            _CONTEXT, params
        ).one()
        # In order: bound to the domain (own, then the agency's), assigned,
        # own default, the agency's default for sub-accounts.
        route = next((int(c) for c in candidates if c is not None), None)
        if route is None and self._settings.system_provider:
            name = self._settings.system_provider
            agency, _, short = name.partition(":")
            route = conn.execute(
                _BY_NAME, {"name": name, "agency": agency, "short": short}
            ).scalar()
        patterns = list(conn.execute(_PATTERNS, params).scalars())
        suspended = (suspended_reason or "by the operator") if suspended_at is not None else None
        return _Context(name, policy, route, patterns, bool(unsubscribe), suspended)

    def _decide(self, sub: Submission) -> Decision:
        cache = self._cache if self._cache is not None and self._cache.enabled else None
        epoch = cache.epoch if cache is not None else None  # before the read
        with self._engine.connect() as conn:
            ctx = self._context(conn, sub)
            if ctx.route is not None and (
                cache is not None or self._unverified(sub.senders, ctx.patterns)
            ):
                options = conn.execute(_OPTIONS, {"provider_id": ctx.route}).scalar()
                test_address = (options or {}).get("test_address")
                ctx = replace(ctx, test_address=str(test_address) if test_address else None)
        if cache is not None:
            cache.put(self._key(sub), ctx, epoch)
        return self._judge(sub, ctx)

    def _judge(self, sub: Submission, ctx: _Context) -> Decision:
        """The decision for ``sub`` from what was read about its account (pure)."""
        bad = self._unverified(sub.senders, ctx.patterns)
        if bad and ctx.test_address:
            # The address the provider was checked with is one it accepts
            # as a sender: verified for mail routed through that provider.
            bad = self._unverified(bad, [ctx.test_address])
        if ctx.suspended is not None:
            return self._suspended_decision(ctx)
        if bad:
            decision = self._unverified_decision(sub, ctx, bad)
        elif ctx.route is None:
            decision = Decision(MessageState.PAUSED, "no provider", None)
        else:
            decision = Decision(MessageState.QUEUED, None, ctx.route)
        return replace(decision, unsubscribe=ctx.unsubscribe)

    def _suspended_decision(self, ctx: _Context) -> Decision:
        reason = f"account suspended: {ctx.suspended}"
        if self._suspend_action == "pause":
            # Held, not lost: `relay account resume` releases it.
            return Decision(MessageState.PAUSED, reason, ctx.route)
        return Decision("rejected", reason, reply=account_suspended(ctx.suspended))

    @staticmethod
    def _unverified(senders: Sequence[str], patterns: list[str]) -> list[str]:
        return [s for s in dict.fromkeys(senders) if not sender_matches(s, patterns)]

    def _unverified_decision(self, sub: Submission, ctx: _Context, bad: list[str]) -> Decision:
        action = unverified_action(
            sub.credential_policy,
            ctx.unverified_policy,
            self._settings.default_unverified,
            sub.campaign,
        )
        reason = f"sender {', '.join(bad)} not verified for account {ctx.name}"
        if action == "reject":
            text = f"Sender {bad[0]} is not verified for this account (policy: reject)"
            return Decision("rejected", reason, reply=SENDER_NOT_VERIFIED.with_text(text))
        state = MessageState.DROPPED if action == "drop" else MessageState.PAUSED
        return Decision(state, reason, ctx.route)


def _domain(sub: Submission) -> str:
    return sub.senders[0].rpartition("@")[2].lower() if sub.senders else ""


def route_of(engine: Engine, settings: PolicySettings, account_id: int, sender: str) -> int | None:
    """The provider that mail of ``account_id`` from ``sender`` would take (None:
    no route), by the very rule messages follow; a sender's confirmation code
    is mailed through it (``relay.service.confirmations``)."""
    sub = Submission(account_id, None, False, (sender,))
    with engine.connect() as conn:
        return Policy(engine, settings)._context(conn, sub).route
