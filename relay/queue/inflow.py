"""In-flow control: acceptance slows to the delivery rate while the queue is behind.

A client that sends as fast as Relay accepts (a campaign engine) outruns
delivery: accepting costs well under a millisecond of CPU, delivering (MIME to
the provider's payload, HTTP, the outcome) about twice that, on the same cores.
Without a brake the queue grows for as long as the load lasts and drains long
after it ends.

Postfix solves it with ``in_flow_delay``: its queue manager puts a token in a
pipe for each message it has moved on, and smtpd takes one before it accepts a
message, waiting up to ``in_flow_delay`` (1 s by default) when none is there.
Relay does the same per process, between its worker and its SMTP sessions:

* the worker says it is *behind* while its claims come back full (more is due
  than it can start) or the spool writes queued messages it had no slot for;
  an empty-handed claim says it has caught up;
* each delivery the worker finishes is a token;
* while behind, MAIL FROM takes a token, waiting for one at most
  ``[queue] in_flow_delay`` seconds; then it goes on anyway (a slow provider
  slows a sender down, it never stops one).

The wait is before anything is accepted (MAIL FROM), so nothing in the queue
waits for it, and the time from the final dot to the 250 is unchanged. A
process without a worker, or one that is not behind, never waits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

TOKENS_KEPT = 1000  # tokens kept while behind with no session waiting


class InFlow:
    """Tokens from finished deliveries; sessions wait for one while the queue is behind."""

    def __init__(
        self,
        delay: float,
        on_wait: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.delay = delay
        self.behind = False
        self._tokens = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.on_wait = on_wait
        self._clock = clock

    def set_behind(self, behind: bool) -> None:
        """The worker's view of the queue: more due than it can start, or caught up."""
        self.behind = behind
        if not behind:
            self._tokens = 0
            while self._waiters:  # caught up: everyone waiting goes on
                self._wake_one()

    def delivered(self) -> None:
        """A delivery finished: one waiting session goes on, or a token is kept."""
        if self._waiters:
            self._wake_one()
        elif self.behind:
            # Kept for the next session, up to TOKENS_KEPT: a long stretch of
            # finished deliveries is not a licence for a burst of acceptances later.
            self._tokens = min(self._tokens + 1, TOKENS_KEPT)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def admit(self) -> None:
        """Before accepting a message: at once, or after a token or the delay."""
        if not self.behind or self.delay <= 0:
            return
        if self._tokens > 0:
            self._tokens -= 1
            return
        began = self._clock()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.delay)
        except TimeoutError:
            pass  # waited long enough: go on without a token
        finally:
            if waiter in self._waiters:  # timed out or cancelled: not woken
                self._waiters.remove(waiter)
            if self.on_wait is not None:
                self.on_wait(self._clock() - began)
