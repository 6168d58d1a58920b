"""SMTP login: look the user up, verify the password, count failures.

Database reads and argon2 run on worker threads; the event loop only waits
(a slowed username waits with ``asyncio.sleep``, never blocking the loop).
Failures lock the client address and the (username, address) pair; across
addresses a username is only slowed (see ``relay.auth.limiter``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import Engine, text

from relay.auth.limiter import FailureLimiter, SlowDown
from relay.auth.passwords import Hasher, LoginCache
from relay.core.addresses import normalise_username
from relay.core.replies import AUTH_INVALID, AUTH_LOCKED, AUTH_OK, AUTH_TEMPFAIL, Reply
from relay.core.settings import AuthSettings

# Every login reads the row (a reset or a delete must count at once, on every
# node); plain SQL prepared once keeps that read cheap.
_LOOKUP = text("""
SELECT c.id, c.username, c.password_hash, c.purpose, c.unverified_policy, a.id, a.name
FROM credentials c
JOIN domains d ON d.id = c.domain_id
JOIN accounts a ON a.id = d.account_id
WHERE c.username = :username
""")


@dataclass(frozen=True)
class Identity:
    """Who is sending: the credential and the account it belongs to."""

    credential_id: int
    username: str
    account_id: int
    account_name: str
    purpose: str
    policy: str | None  # the credential's own policy for unverified senders

    @property
    def login(self) -> str:  # aiosmtpd reads .login from auth_data
        return self.username


@dataclass(frozen=True)
class LoginResult:
    reply: Reply
    identity: Identity | None = None
    # Lock-outs this attempt engaged: "ip", "user_ip", or "user" (slowed).
    lockouts: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Row:
    identity: Identity
    password_hash: str


class Authenticator:
    def __init__(self, engine: Engine, settings: AuthSettings, hasher: Hasher) -> None:
        self._engine = engine
        self._hasher = hasher
        self._cache = LoginCache(settings.cache_size)
        self._by_ip = FailureLimiter(
            settings.max_failures_per_ip, settings.failure_window, settings.lockout
        )
        self._by_user_ip = FailureLimiter(
            settings.max_failures_per_user, settings.failure_window, settings.lockout
        )
        self._slow = SlowDown(
            settings.max_failures_per_user, settings.failure_window, settings.max_login_delay
        )
        self.failures = 0

    def _lookup(self, username: str) -> _Row | None:
        with self._engine.connect() as conn:
            row = conn.execute(_LOOKUP, {"username": username}).first()
        if row is None:
            return None
        cid, user, pw, purpose, policy, aid, aname = row
        return _Row(Identity(cid, user, aid, aname, purpose, policy), pw)

    async def login(self, username: str, password: str, peer_ip: str) -> LoginResult:
        username = normalise_username(username)
        pair = f"{username}\0{peer_ip}"
        if self._by_ip.locked(peer_ip) or self._by_user_ip.locked(pair):
            self.failures += 1
            return LoginResult(AUTH_LOCKED)
        delay = self._slow.delay(username)
        if delay:
            await asyncio.sleep(delay)
        try:
            row = await asyncio.to_thread(self._lookup, username)
        except Exception:
            return LoginResult(AUTH_TEMPFAIL)
        if row is not None and self._cache.hit(
            row.identity.credential_id, row.password_hash, password
        ):
            return self._success(row, password, peer_ip, username)
        stored = row.password_hash if row else None
        if await asyncio.to_thread(self._hasher.verify, stored, password) and row:
            return self._success(row, password, peer_ip, username)
        engaged = (
            ("ip",) * self._by_ip.fail(peer_ip)
            + ("user_ip",) * self._by_user_ip.fail(pair)
            + ("user",) * self._slow.fail(username)
        )
        self.failures += 1
        return LoginResult(AUTH_INVALID, lockouts=engaged)

    def _success(self, row: _Row, password: str, peer_ip: str, username: str) -> LoginResult:
        self._cache.remember(row.identity.credential_id, row.password_hash, password)
        self._by_ip.succeed(peer_ip)
        self._by_user_ip.succeed(f"{username}\0{peer_ip}")
        return LoginResult(AUTH_OK, row.identity)
