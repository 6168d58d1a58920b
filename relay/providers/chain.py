"""API first, SMTP second: the provider chain, its circuit breaker, and attempts.

A provider row becomes one :class:`ProviderChain`. The chain has a primary leg
(SendGrid's or SparkPost's HTTP API, a custom SMTP server, the outbox) and, for
the API providers, a fallback leg (the same provider's SMTP relay). It is the
only thing the delivery worker talks to, and it implements the
``relay.providers.base.Provider`` seam.

When the chain goes to SMTP
---------------------------

The API's failure must not be the message's fault, so only these go on to the
fallback leg::

    ProviderError
    ├── TransientError      connect/TLS failure, 5xx, 429         -> fallback
    │   └── OutcomeUnknown  no answer once the request was sent   -> raised, no fallback
    ├── CredentialsError    key refused (401/403)                 -> fallback
    └── PermanentError      sender or recipient refused           -> raised, no fallback
        └── PayloadRejected the API cannot take this *form*       -> fallback
                            (400/415/422 about our JSON, or a message
                            SendGrid's JSON cannot carry faithfully)

The rule is: fall back only when the provider provably did not take the
message. A recipient or sender rejected by the API would be rejected by the
relay too, and sending it again would only risk a duplicate. After a read
timeout or a reset once the request was written (``OutcomeUnknown``, attempt
result ``unknown``) the API may have the message: it is deferred, and its next
pass goes by the same leg only (``send(..., only="api")``), never at once by
SMTP. A leg cancelled mid-send (shutdown) is ``unknown`` too. When both legs
fail, the fallback's error is raised (it is the last word about the
message), chained to the API's, keeping the longer of their ``retry_after``
(a 429's Retry-After holds even when SMTP failed too).

Recording attempts
------------------

Every leg tried produces one ``relay.core.outcomes.Attempt`` (transport,
result, the provider's code and text, duration, provider message id): the
same record the worker keeps and the queue writes as an attempt row.
Callbacks receive them synchronously, in order, as each leg finishes:

* ``ProviderChain(..., on_attempt=hook)`` for every message (metrics);
* ``await chain.send(message, on_attempt=attempts.append)`` for one message
  (the worker's attempt rows: collect, then write them after ``send`` returns
  or raises).

An API leg skipped because the breaker is open is no attempt (nothing was
tried); ``chain.breaker.state`` says why. A callback that raises is logged and
ignored: a bookkeeping bug must not turn
a delivered message into a failed one (and so into a duplicate on retry).

Circuit breaker
---------------

After ``threshold`` consecutive API failures that say the API is unusable
(transient or credentials; a payload or recipient rejection means the API is
up), the breaker opens and messages go straight to SMTP for ``cooldown``
seconds. Then it is half-open: one message probes the API while the others
keep going by SMTP; the probe's outcome closes or re-opens it. This is the
classic pattern (Nygard, *Release It!*, "Circuit Breaker").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from relay.core.errors import (
    CredentialsError,
    PayloadRejected,
    ProviderError,
    TransientError,
)
from relay.core.message import OutboundMessage
from relay.core.outcomes import Attempt, Result
from relay.providers.base import Health, Provider, Receipt

log = logging.getLogger(__name__)

# Receipt.rejected key for recipients the provider refused without naming them
# (SparkPost counts rejections but does not say which); the value says how many.
UNNAMED_RECIPIENTS = "*"


class OutcomeUnknown(TransientError):
    """The request was sent and no answer came: the provider may have the message.

    Retried later, by the same leg; never handed to another transport at once,
    which could deliver it twice (a read timeout at 30 s, the API accepting at
    35 s, SMTP delivering as well).
    """


AttemptHook = Callable[[Attempt], None]


class Leg(NamedTuple):
    transport: str  # the name recorded in attempts: api | smtp | file
    provider: Provider


def result_of(exc: ProviderError) -> Result:
    """The attempt result an error stands for (the worker's and the metrics' label)."""
    if isinstance(exc, PayloadRejected):
        return Result.PAYLOAD
    if isinstance(exc, CredentialsError):
        return Result.CREDENTIALS
    if isinstance(exc, OutcomeUnknown):
        return Result.UNKNOWN
    if isinstance(exc, TransientError):
        return Result.TRANSIENT
    return Result.PERMANENT


def falls_back(exc: ProviderError) -> bool:
    """Whether the message may go on to the SMTP leg after the API said ``exc``:
    only when the API provably did not take it."""
    if isinstance(exc, OutcomeUnknown):
        return False
    return isinstance(exc, TransientError | CredentialsError | PayloadRejected)


class CircuitBreaker:
    """Consecutive failures open it; after ``cooldown`` one probe may close it."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.threshold = threshold
        # Called when the circuit opens from closed (not when a failed probe
        # reopens it): the app tells the provider's owner (a notice).
        self._on_open = on_open
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return self.CLOSED
        if self._probing or self._clock() >= self._opened_at + self.cooldown:
            return self.HALF_OPEN
        return self.OPEN

    def allow(self) -> bool:
        """May this message try the API? In half-open state only one probe at a time."""
        state = self.state
        if state == self.CLOSED:
            return True
        if state == self.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        if self._opened_at is not None:
            log.info("circuit closed: the API answered again")
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            opening = self._opened_at is None
            if opening or self._probing:
                log.warning(
                    "circuit open for %.0f s after %d API failures", self.cooldown, self._failures
                )
            self._opened_at = self._clock()
            if opening and self._on_open is not None:
                try:
                    self._on_open()
                except Exception:  # a notice must never fail a delivery
                    log.exception("circuit open callback failed")
        self._probing = False

    def release(self) -> None:
        """The probe ended without an answer (cancelled): let another message probe."""
        self._probing = False


class ProviderChain:
    """One provider as the worker sees it: a primary leg and an optional fallback."""

    def __init__(
        self,
        name: str,
        primary: Leg,
        fallback: Leg | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        on_attempt: AttemptHook | None = None,
    ) -> None:
        self.name = name
        self.primary = primary
        self.fallback = fallback
        self.breaker = breaker or CircuitBreaker()
        self._on_attempt = on_attempt

    def __repr__(self) -> str:
        legs = [self.primary.transport] + ([self.fallback.transport] if self.fallback else [])
        return f"ProviderChain({self.name!r}, legs={legs}, breaker={self.breaker.state!r})"

    async def send(
        self,
        message: OutboundMessage,
        *,
        on_attempt: AttemptHook | None = None,
        only: str | None = None,
    ) -> Receipt:
        """Send by the primary leg, then the fallback when that is allowed.

        ``only`` names the one leg (transport) this pass may use: the leg whose
        last attempt had an unknown outcome. No fallback then, and the breaker
        does not send it elsewhere.
        """
        hooks = [h for h in (self._on_attempt, on_attempt) if h is not None]
        if only is not None and self.fallback is not None and only == self.fallback.transport:
            return await self._try(self.fallback, message, hooks)
        if self.fallback is None:
            return await self._try(self.primary, message, hooks)
        first = await self._try_api(message, hooks, pinned=only == self.primary.transport)
        if isinstance(first, Receipt):
            return first
        try:
            return await self._try(self.fallback, message, hooks)
        except ProviderError as exc:
            if first is not None:
                if isinstance(exc, TransientError) and first.retry_after:
                    exc.retry_after = max(exc.retry_after or 0.0, first.retry_after)
                raise exc from first
            raise

    async def _try_api(
        self, message: OutboundMessage, hooks: Sequence[AttemptHook], *, pinned: bool = False
    ) -> Receipt | ProviderError | None:
        """The API leg's receipt, or the error that lets the fallback go (None: skipped).

        ``pinned``: this message must try the API whatever the breaker says, and
        any error is raised (no fallback this pass).
        """
        if not pinned and not self.breaker.allow():
            return None
        try:
            receipt = await self._try(self.primary, message, hooks)
        except ProviderError as exc:
            if isinstance(exc, TransientError | CredentialsError):
                self.breaker.failure()
            else:
                self.breaker.success()  # the API answered: it is up
            if pinned or not falls_back(exc):
                raise
            return exc
        except BaseException:
            if not pinned:  # a pinned message took no probe
                self.breaker.release()
            raise
        self.breaker.success()
        return receipt

    async def _try(
        self, leg: Leg, message: OutboundMessage, hooks: Sequence[AttemptHook]
    ) -> Receipt:
        started = time.monotonic()
        try:
            receipt = await leg.provider.send(message)
        except ProviderError as exc:
            elapsed = time.monotonic() - started
            self._report(hooks, self._failed(leg, message, exc, elapsed))
            raise
        except asyncio.CancelledError:
            # Stopped mid-send (shutdown): whether the provider took it is unknown.
            elapsed = time.monotonic() - started
            cut = OutcomeUnknown("cancelled while sending (shutdown)", transport=leg.transport)
            self._report(hooks, self._failed(leg, message, cut, elapsed))
            raise
        elapsed = time.monotonic() - started
        self._report(hooks, self._succeeded(leg, message, receipt, elapsed))
        return receipt

    def _failed(
        self, leg: Leg, message: OutboundMessage, exc: ProviderError, elapsed: float
    ) -> Attempt:
        code = None if exc.code is None else str(exc.code)
        return Attempt(
            self.name,
            exc.transport or leg.transport,
            result_of(exc),
            elapsed,
            code,
            exc.text,
            retry_after=exc.retry_after,
            queue_id=message.queue_id,
        )

    def _succeeded(
        self, leg: Leg, message: OutboundMessage, receipt: Receipt, elapsed: float
    ) -> Attempt:
        result = Result.PARTIAL if receipt.rejected else Result.DELIVERED
        return Attempt(
            self.name,
            receipt.transport or leg.transport,
            result,
            elapsed,
            None,
            receipt.text,
            receipt.provider_message_id,
            queue_id=message.queue_id,
        )

    @staticmethod
    def _report(hooks: Sequence[AttemptHook], attempt: Attempt) -> None:
        for hook in hooks:
            try:
                hook(attempt)
            except Exception:
                log.exception("on_attempt callback failed for %s", attempt.queue_id)

    async def check(self) -> Health:
        """Every leg must work: adding a provider refuses one whose fallback is broken."""
        legs = [self.primary] + ([self.fallback] if self.fallback else [])
        results = [(leg.transport, await leg.provider.check()) for leg in legs]
        detail = "; ".join(f"{transport}: {h.detail}" for transport, h in results)
        return Health(all(h.ok for _, h in results), detail)

    async def aclose(self) -> None:
        for leg in (self.primary, self.fallback):
            if leg is not None:
                await leg.provider.aclose()
