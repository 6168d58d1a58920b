"""How many deliveries one provider gets in flight: it follows the provider's
answer time.

Little's law: a provider answering in 200 ms (a real API's round trip) carries
500 messages a second only with 100 requests in flight, where 20 suffice for
one answering in 40 ms. A fixed ``provider_concurrency`` caps a slow provider
at ``provider_concurrency / answer time``. A higher fixed number would hurt
the other way: when the relay itself is the bottleneck (CPU), more in flight
only lengthens every answer and the pool scans.

So the limit moves as TCP Vegas moves a window, the way Netflix's
concurrency-limits library applies it to requests: from the shortest answer
seen lately (``min_rtt``, the provider's own time) and the latest answer
(``rtt``), ``limit x (1 - min_rtt / rtt)`` estimates how many requests are
waiting somewhere instead of being worked on. Few waiting: one more slot; many
waiting: one fewer. A slow but unloaded provider grows to what its round trip
needs; a relay short of CPU (every answer slower as more are in flight) stays
near the floor. The floor is ``[queue] provider_concurrency``, the ceiling
``[queue] provider_concurrency_max``; only answers that delivered count.

"Few" and "many" grow with the limit (:data:`ALPHA_SHARE`): a fixed 3 would
ask a limit of 100 for answers within 3% of the fastest, 6 ms at 200 ms, which
an event loop delivering 500 messages a second does not keep (bench/deliver.py
at 200 ms: answers of 205 to 330 ms, and the limit swung between 20 and 70,
215 msg/s). A relay short of CPU still stops within a fifth of the floor.
"""

from __future__ import annotations

import math

ALPHA = 3  # fewer requests than this waiting: the provider has room, grow
BETA = 6  # more than this waiting: they queue somewhere, shrink
ALPHA_SHARE = 0.15  # ... or than this share of the limit (BETA: twice that), when more
WINDOW = 250  # answers after which min_rtt is taken afresh (a provider can slow down for good)


class Pace:
    """The in-flight limit of one provider, from its answers (see the module)."""

    def __init__(self, floor: int, ceiling: int) -> None:
        self.floor = max(1, min(floor, ceiling))
        self.ceiling = max(ceiling, self.floor)
        self.limit = self.floor
        self.min_rtt = math.inf
        self._window_min = math.inf
        self._samples = 0

    def answered(self, rtt: float, in_flight: int) -> None:
        """A delivery took ``rtt`` seconds, with ``in_flight`` deliveries (itself
        included) running when it ended."""
        if rtt <= 0 or not math.isfinite(rtt):
            return
        self._samples += 1
        self.min_rtt = min(self.min_rtt, rtt)
        # The baseline is taken afresh only from answers at the floor's load or
        # less: above it, our own extra slots may be what lengthens them, and a
        # baseline raised by them would let the limit ratchet up.
        if in_flight <= self.floor:
            self._window_min = min(self._window_min, rtt)
        if self._samples % WINDOW == 0 and math.isfinite(self._window_min):
            self.min_rtt, self._window_min = self._window_min, math.inf
        waiting = self.limit * (1 - self.min_rtt / rtt)
        alpha = max(ALPHA, self.limit * ALPHA_SHARE)
        if waiting < alpha and in_flight * 2 >= self.limit:  # grow only a limit in use
            self.limit = min(self.limit + 1, self.ceiling)
        elif waiting > max(BETA, 2 * alpha):
            self.limit = max(self.limit - 1, self.floor)
