"""Lock-out and slow-down of clients that keep failing to log in.

Failures are counted over a sliding window, per client address and per
(username, client address). Past its threshold either key is refused for the
lock-out period, even with the right password (454 4.7.0), so that guessing
from one place costs the attacker time, while the same user logging in from
anywhere else is unaffected: a lock-out can never be aimed at someone else.

Across addresses a username is only slowed (``SlowDown``): past the threshold
every login for it waits a delay that doubles with each further failure, up
to a cap, before it is answered, right password or not (a delay on failures
alone would tell a guesser that a quick answer is a success). A username is
never locked, so a botnet cannot lock its owner out.

The counts are per process, never shared: with N processes an attacker gets
at most N times each threshold before every process locks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

# Keys counted at once before the tables are emptied: bounds memory under a
# spray of names or addresses (a spray that big is a flood, not a guesser).
_MAX_KEYS = 100_000


class FailureLimiter:
    def __init__(
        self, limit: int, window: float, lockout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window
        self._lockout = lockout
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}

    def locked(self, key: str) -> bool:
        until = self._locked.get(key)
        if until is None:
            return False
        if self._clock() >= until:
            del self._locked[key]
            return False
        return True

    def fail(self, key: str) -> bool:
        """Count a failure; True if this one locked the key."""
        now = self._clock()
        times = self._failures.setdefault(key, deque())
        times.append(now)
        while times and times[0] < now - self._window:
            times.popleft()
        engaged = False
        if len(times) >= self._limit:
            engaged = key not in self._locked
            self._locked[key] = now + self._lockout
            del self._failures[key]
        if len(self._failures) > _MAX_KEYS:
            self._failures.clear()
        if len(self._locked) > _MAX_KEYS:
            self._locked = {k: t for k, t in self._locked.items() if t > now}
        return engaged

    def succeed(self, key: str) -> None:
        self._failures.pop(key, None)


class SlowDown:
    """A growing delay for a key that keeps failing (a username tried from many addresses).

    Below ``limit`` failures in the window there is no delay; at the limit it
    is ``base`` seconds, and it doubles with each further failure up to
    ``cap``. Success does not reset it (a guesser would reset it by logging in
    to an account of its own); it fades as failures leave the window.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        cap: float,
        base: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._cap = cap
        self._base = base
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        horizon = self._clock() - self._window
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del self._failures[key]
        return len(times)

    def delay(self, key: str) -> float:
        """Seconds to wait before answering a login for ``key``."""
        excess = self._recent(key) - self._limit
        if excess < 0 or self._cap <= 0:
            return 0.0
        return float(min(self._cap, self._base * 2 ** min(excess, 32)))

    def fail(self, key: str) -> bool:
        """Count a failure; True if this one started the slow-down."""
        before = self._recent(key)
        self._failures.setdefault(key, deque()).append(self._clock())
        if len(self._failures) > _MAX_KEYS:
            self._failures.clear()
        return before + 1 == self._limit
