"""Password hashing (argon2id) and the verified-login cache.

A full argon2 verification costs tens of milliseconds by design. A client
that logs in once per message would pay that on every message, so a login
that succeeded is remembered, keyed by (credential id, stored hash): a reset
changes the stored hash and a delete removes the row, so either one makes the
cached entry unreachable at once, on every node, without any invalidation
message. The cache stores a keyed digest of the password, never the password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections import OrderedDict

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from relay.core.settings import Settings

_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


class Hasher:
    def __init__(self, time_cost: int = 3, memory_kib: int = 65536) -> None:
        self._ph = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        # Verified against when the user does not exist, so that an unknown
        # user costs as much time as a wrong password (no user enumeration).
        self._dummy = self._ph.hash(secrets.token_hex(16))

    def hash(self, password: str) -> str:
        return self._ph.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._ph.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


def make_hasher(settings: Settings) -> Hasher:
    """The hasher at the costs ``[auth]`` sets (argon2_time_cost, argon2_memory_kib)."""
    return Hasher(settings.auth.argon2_time_cost, settings.auth.argon2_memory_kib)


class LoginCache:
    """Bounded LRU of logins that argon2 has already verified."""

    def __init__(self, size: int = 10000) -> None:
        self._size = size
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[tuple[int, str], bytes] = OrderedDict()

    def _digest(self, password: str) -> bytes:
        return hmac.new(
            self._key, password.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).digest()

    def hit(self, credential_id: int, stored_hash: str, password: str) -> bool:
        entry = self._entries.get((credential_id, stored_hash))
        if entry is None or not hmac.compare_digest(entry, self._digest(password)):
            return False
        self._entries.move_to_end((credential_id, stored_hash))
        return True

    def remember(self, credential_id: int, stored_hash: str, password: str) -> None:
        self._entries[(credential_id, stored_hash)] = self._digest(password)
        self._entries.move_to_end((credential_id, stored_hash))
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
