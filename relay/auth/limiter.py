"""Lock-out of clients that keep failing to log in.

Failures are counted per client address and per username over a sliding
window; past the threshold, the address or username is refused for the
lock-out period, even with the right password (454 4.7.0), so that guessing
costs the attacker time. The counts are per process: with N processes an
attacker gets at most N times the threshold before every process locks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


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

    def fail(self, key: str) -> None:
        now = self._clock()
        times = self._failures.setdefault(key, deque())
        times.append(now)
        while times and times[0] < now - self._window:
            times.popleft()
        if len(times) >= self._limit:
            self._locked[key] = now + self._lockout
            del self._failures[key]
        if len(self._failures) > 100_000:  # bound memory under a spray of names
            self._failures.clear()

    def succeed(self, key: str) -> None:
        self._failures.pop(key, None)
