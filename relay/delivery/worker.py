"""Delivery workers: claim due messages, hand them to their provider, record.

The path of one message reads like a table of contents (``Deliverer.run``):
check the lifetime, find the route, send, then turn the provider's answer
into an outcome: delivered, deferred with backoff and jitter, failed, or
paused. Recipients already delivered are never sent again: each pass sends
only the recipients still pending.

A worker claims no more than it can start now (free slots, in total and per
provider), so a SIGKILL strands only the deliveries in flight; a worker of the
same identity takes those back when it starts again. The hand-off
(``Worker.reserve``, called by this process's spool): a message accepted
while the worker has room is written already claimed by it and delivered
from memory, with no claim round trip. On shutdown the
deliveries in flight get what is left of the grace; then they are cancelled,
recorded as ``unknown`` and deferred (their provider may have them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from relay.core.errors import ConfigError, PermanentError, ProviderError, TransientError
from relay.core.message import OutboundMessage
from relay.core.outcomes import Attempt, Claimed, MessageState, Outcome, Recorded, Result
from relay.core.settings import QueueSettings, ServerSettings
from relay.delivery.pace import Pace
from relay.delivery.pool import ProviderPool
from relay.delivery.throttle import Postponed, Throttle
from relay.providers.base import Receipt
from relay.providers.chain import UNNAMED_RECIPIENTS, ProviderChain, result_of
from relay.queue import store
from relay.queue.batch import GroupCommit
from relay.queue.inflow import InFlow
from relay.queue.spool import Acceptance

log = logging.getLogger("relay.delivery")


def node_identity(server: ServerSettings, var_path: Path, index: int = 0) -> str:
    """The claim identity of process ``index`` of this node, the same after a restart.

    ``[server] node_id``, or the host name and a digest of the var directory's
    absolute path: stable on one host, different for two relays with their
    own var directories. ``locked_by`` holds it plus ``#`` and a run id.
    """
    node = server.node_id  # checked at load: at most 64 characters, no "#"
    if not node:
        digest = hashlib.sha256(str(var_path.resolve()).encode()).hexdigest()[:8]
        node = f"{socket.gethostname()[:40]}-{digest}"
    return f"{node}/{index}"


def backoff(
    schedule: tuple[float, ...],
    attempts: int,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds until the next try: the schedule's step, +-20% jitter, at least retry_after."""
    step = schedule[min(max(attempts - 1, 0), len(schedule) - 1)]
    # Jitter spreads retries of a burst that failed together (thundering herd).
    delay = step * (0.8 + 0.4 * rng())
    return max(delay, retry_after or 0.0)


class Deliverer:
    """Decides the outcome of one delivery pass for one claimed message."""

    def __init__(
        self,
        pool: ProviderPool,
        settings: QueueSettings,
        clock: Callable[[], dt.datetime] = store.now_utc,
        throttle: Throttle | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._clock = clock
        # The providers' own ceilings and pauses, shared by every process.
        self.throttle = throttle
        # A delivery waits for its provider's slot, token or pause this long at
        # most, then gives its claim back: well inside the lease.
        self._wait = min(settings.lease / 3, 60.0)

    async def run(self, msg: Claimed) -> Outcome:
        now = self._clock()
        if now >= msg.expires_at:
            return self._expired(msg)
        if msg.provider_id is None:
            return Outcome(MessageState.PAUSED, [], reason="no provider")
        try:
            provider = await self._pool.get(msg.provider_id)
        except ConfigError as exc:
            return self._defer(msg, [], f"provider unavailable: {exc}", None)
        if self.throttle is None:
            return await self._send(msg, provider)
        ticket = await self.throttle.acquire(
            msg.provider_id, provider.name, self._pool.limits(msg.provider_id), self._wait
        )
        if isinstance(ticket, Postponed):
            return self._postponed(msg, provider.name, ticket)
        try:
            outcome = await self._send(msg, provider)
        finally:
            ticket.release()
        # The provider's 429 or Retry-After slows the whole provider (every
        # message, every process), not only this message.
        asked = [a for a in outcome.attempts if a.retry_after or a.code == "429"]
        if asked:
            seconds = max(a.retry_after or 0.0 for a in asked)
            self.throttle.pause(msg.provider_id, provider.name, seconds)
        return outcome

    def ready(self, provider_id: int) -> bool:
        """Could a delivery for the provider start now without waiting on its
        ceilings? No ``max_rate`` (tokens are shared), no pause known here."""
        if self.throttle is None:
            return True
        if self._pool.limits(provider_id).max_rate:
            return False
        return not self.throttle.paused(provider_id)

    def cap(self, provider_id: int | None, limit: int) -> int:
        """Deliveries this process may run at once for the provider: ``limit``,
        or its ``max_connections`` when lower (so no claim waits for a slot here)."""
        if provider_id is None or self.throttle is None:
            return limit
        ceiling = self._pool.limits(provider_id).max_connections
        return min(limit, ceiling) if ceiling else limit

    def _postponed(self, msg: Claimed, name: str, later: Postponed) -> Outcome:
        at = dt.datetime.fromtimestamp(later.at, dt.UTC)
        reason = {"rate": "max_rate", "connections": "max_connections"}.get(later.reason)
        why = f"waiting for provider {name}: " + (
            f"{reason} reached" if reason else "paused at its request (429/Retry-After)"
        )
        return Outcome(MessageState.DEFERRED, [], reason=why, next_attempt_at=at, throttled=True)

    async def _send(self, msg: Claimed, provider: ProviderChain) -> Outcome:
        attempts: list[Attempt] = []
        recipients = [(a, k) for _, a, k in msg.recipients]
        outbound = OutboundMessage(
            msg.id,
            msg.mail_from,
            recipients,
            msg.data,
            campaign=msg.campaign,
            recipient_ids={a: rid for rid, a, _ in msg.recipients},
            open_tracking=msg.open_tracking,
            click_tracking=msg.click_tracking,
        )
        started = time.perf_counter()
        try:
            receipt = await self._pool.send(provider, outbound, attempts, only=msg.pinned)
        except asyncio.CancelledError:
            if not attempts or attempts[-1].result != Result.UNKNOWN:
                raise  # nothing was sent: the claim is simply given back
            # Cancelled mid-send (shutdown past the grace): record it and retry
            # later by the same leg, like any outcome we do not know.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            outcome = self._defer(msg, attempts, "interrupted by shutdown while sending", None)
        except ProviderError as exc:
            if not attempts:  # the chain records its legs; this is for anything else
                attempts.append(
                    Attempt(
                        provider.name,
                        exc.transport or "api",
                        result_of(exc),
                        time.perf_counter() - started,
                        _code(exc.code),
                        exc.text,
                        queue_id=msg.id,
                    )
                )
            outcome = self._failure(msg, attempts, exc)
        else:
            outcome = self._success(msg, attempts, receipt)
        # Sent by SMTP although the provider has an API: the API failed or its
        # circuit is open (relay_provider_fallbacks_total).
        outcome.fell_back = provider.fallback is not None and any(
            a.transport == provider.fallback.transport for a in attempts
        )
        return outcome

    def _success(self, msg: Claimed, attempts: list[Attempt], receipt: Receipt) -> Outcome:
        rejected = {k.lower(): v for k, v in receipt.rejected.items()}
        unnamed = rejected.pop(UNNAMED_RECIPIENTS, None)
        delivered = [rid for rid, a, _ in msg.recipients if a.lower() not in rejected]
        if not rejected:
            # A provider that counts refusals without naming them (SparkPost):
            # nothing to retry per recipient; the count is kept as the reason.
            note = f"provider refused recipients it did not name: {unnamed}" if unnamed else None
            return Outcome(MessageState.DELIVERED, attempts, delivered=delivered, reason=note)
        refused = {
            rid: rejected[a.lower()] for rid, a, _ in msg.recipients if a.lower() in rejected
        }
        # Per recipient, its own reply decides (RFC 5321 4.2.1: 4xx is for
        # later, 5xx is final); a reply without a code follows the receipt.
        failed = {r: t for r, t in refused.items() if _permanent(t, receipt.permanent)}
        later = [r for r in refused if r not in failed]
        if not later:
            state = MessageState.DELIVERED if delivered else MessageState.FAILED
            return Outcome(
                state, attempts, delivered, failed, reason=f"{len(failed)} recipient(s) refused"
            )
        outcome = self._defer(msg, attempts, f"{len(later)} recipient(s) deferred", None)
        outcome.delivered = delivered
        outcome.failed = failed
        return outcome

    def _failure(self, msg: Claimed, attempts: list[Attempt], exc: ProviderError) -> Outcome:
        reason = f"{exc.transport or 'provider'}: {exc}"
        if isinstance(exc, PermanentError):
            if exc.recipients:  # only some recipients were refused
                by_addr = {a.lower(): rid for rid, a, _ in msg.recipients}
                failed = {
                    by_addr[a.lower()]: r for a, r in exc.recipients.items() if a.lower() in by_addr
                }
                rest = [rid for rid, _, _ in msg.recipients if rid not in failed]
                if rest and len(failed) < len(msg.recipients):
                    outcome = self._defer(msg, attempts, reason, None)
                    outcome.failed = failed
                    return outcome
            return Outcome(
                MessageState.FAILED,
                attempts,
                failed={rid: reason for rid, _, _ in msg.recipients},
                reason=reason,
            )
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        return self._defer(msg, attempts, reason, retry_after)

    def _defer(
        self, msg: Claimed, attempts: list[Attempt], reason: str, retry_after: float | None
    ) -> Outcome:
        delay = backoff(
            self._settings.retry_schedule, msg.attempts + max(len(attempts), 1), retry_after
        )
        at = self._clock() + dt.timedelta(seconds=delay)
        if at >= msg.expires_at:
            outcome = self._expired(msg, reason)
            outcome.attempts = attempts
            return outcome
        return Outcome(MessageState.DEFERRED, attempts, reason=reason, next_attempt_at=at)

    def _expired(self, msg: Claimed, last: str | None = None) -> Outcome:
        days = self._settings.lifetime / 86400
        reason = f"expired: undelivered after {days:g} day(s)" + (f"; last: {last}" if last else "")
        return Outcome(
            MessageState.FAILED,
            [],
            failed={rid: reason for rid, _, _ in msg.recipients},
            reason=reason,
        )


def _permanent(reply: str, default: bool) -> bool:
    code = reply.strip()[:1]
    return code == "5" if code in ("4", "5") else default


def _code(code: int | str | None) -> str | None:
    return None if code is None else str(code)


class Worker:
    """Claims batches and runs deliveries concurrently; one per process."""

    def __init__(
        self,
        engine: Engine,
        settings: QueueSettings,
        deliverer: Deliverer,
        on_outcome: Callable[[Claimed, Outcome, Recorded], None] | None = None,
        identity: str | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._deliverer = deliverer
        self._on_outcome = on_outcome
        # Stable across restarts (node id and process index): a restarted
        # worker takes back what its killed predecessor held. The run part
        # keeps two runs apart should an old one still be finishing.
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self.token = f"{self.identity}#{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        # Outcomes share transactions too: one fsync per batch, not per message.
        self._outcomes: GroupCommit[tuple[Claimed, Outcome], Recorded | None] = GroupCommit(
            lambda items: store.record_many(engine, items), "outcomes"
        )
        # Deliveries in flight per provider: its own limit, so one slow
        # provider cannot take every slot.
        self._busy: Counter[int | None] = Counter()
        # ... and that limit follows the provider's answer time (relay.delivery.pace).
        self._pace: dict[int, Pace] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        # Slots given to messages being written by the spool (the hand-off).
        self._reserved = 0
        self.handed = 0  # messages delivered by hand-off, not claimed
        # Due messages this worker may have left in the queue (its last claim
        # was cut short, the spool wrote some unclaimed): only then does a
        # finished delivery look again at once; otherwise the poll does.
        self._maybe_more = True
        self.claims = 0  # claim round trips, for tests and benchmarks
        # Sessions slow to the delivery rate while the queue is behind (relay.queue.inflow).
        self.in_flow = InFlow(settings.in_flow_delay)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def spooled(self, batch: list[Acceptance]) -> None:
        """After a spool commit: a claim, unless every message due now was handed off."""
        if any(a.state == MessageState.QUEUED and a.handed is None for a in batch):
            self._maybe_more = True
            self._wake.set()

    # -- the hand-off (relay.queue.spool.HandOff) --------------------------------

    def reserve(self, acc: Acceptance) -> str | None:
        """A slot now for a message being spooled, or None (it waits for a claim).

        Only what a claim would take at once: a queued, routed message, a free
        slot in all and for its provider (its pace, its ``max_connections``),
        a provider without ``max_rate`` (a token may be missing) and not
        paused by its 429s.
        """
        pid = acc.provider_id
        if self._stopping or self._task is None or pid is None:
            return None
        if acc.state != MessageState.QUEUED:
            return None
        if self._free() <= 0 or self._busy[pid] >= self._limit(pid):
            # Written unclaimed for want of a slot: more is due than we start.
            self.in_flow.set_behind(True)
            return None
        if not self._deliverer.ready(pid):
            return None
        self._busy[pid] += 1
        self._reserved += 1
        acc.lease = self._settings.lease
        return self.token

    def cancel(self, acc: Acceptance) -> None:
        """The spool write failed: nothing was written, the slot is free again."""
        self._reserved -= 1
        self._done(acc.provider_id)

    def deliver(self, claimed: Claimed) -> None:
        """Committed under our token: deliver it in the slot ``reserve`` gave."""
        self._reserved -= 1
        if self._stopping:  # too late to start: give the claim back
            self._done(claimed.provider_id)
            self._track(asyncio.create_task(self._give_back([claimed.id])))
            return
        self.handed += 1
        self._track(asyncio.create_task(self._deliver(claimed)))

    def _free(self) -> int:
        return self._total() - len(self._inflight) - self._reserved

    def _track(self, task: asyncio.Task[None]) -> None:
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _done(self, provider_id: int | None) -> None:
        self._busy[provider_id] -= 1
        if self._busy[provider_id] <= 0:
            del self._busy[provider_id]

    def start(self) -> None:
        if self._deliverer.throttle is not None:
            self._deliverer.throttle.start()
        self._task = asyncio.create_task(self._loop(), name="delivery-worker")

    def _limit(self, provider_id: int | None) -> int:
        """Deliveries ``provider_id`` may have in flight now: as its latency allows
        (:class:`Pace`), never more than its ``max_connections``."""
        pace = self._pace.get(provider_id) if provider_id is not None else None
        limit = pace.limit if pace is not None else self._settings.provider_concurrency
        return self._deliverer.cap(provider_id, limit)

    def _total(self) -> int:
        """Deliveries in flight in all: ``concurrency``, plus the slots slow providers
        were given beyond the usual (their deliveries wait on the network, not on us)."""
        floor = self._settings.provider_concurrency
        extra = sum(max(p.limit - floor, 0) for p in self._pace.values())
        return self._settings.concurrency + extra

    async def _loop(self) -> None:
        await self._take_back()
        limit = self._settings.provider_concurrency  # for a provider not busy here yet
        while not self._stopping:
            want = min(self._free(), self._settings.batch_size)
            # Only what can start now is claimed: a claim waiting for a slot
            # would be stranded for the whole lease if this process were killed.
            room = {p: self._limit(p) - n for p, n in self._busy.items() if p is not None}
            batch: list[Claimed] = []
            if want > 0:
                self.claims += 1
                failed = False
                try:
                    batch = await asyncio.to_thread(
                        store.claim,
                        self._engine,
                        self.token,
                        want,
                        self._settings.lease,
                        room=room,
                        per_provider=limit,
                    )
                except Exception as exc:  # database down: keep trying, say so
                    log.error("claim failed: %s", exc)
                    failed = True
            excess = [m.id for m in batch if self._stopping or not self._start(m)]
            if want > 0:
                # Only an empty claim that left out no provider (a full one's
                # mail is not asked for) says nothing else is due now.
                full = any(n <= 0 for n in room.values())
                self._maybe_more = failed or bool(batch) or full
                if not failed:
                    # A full claim: more is due than this worker starts. So is one cut
                    # short by a provider's room (at its limit before, or filled by
                    # this claim). Only a short claim no provider's room cut caught up.
                    taken = Counter(m.provider_id for m in batch)
                    capped = full or any(
                        n >= room.get(p, limit) for p, n in taken.items() if p is not None
                    )
                    self.in_flow.set_behind(len(batch) >= want or capped)
            if excess:
                await self._give_back(excess)
            # Fewer than asked may mean a provider filled up while others'
            # mail waits: look once more; an empty claim means nothing is due.
            if not batch or excess:
                await self._idle()

    def _start(self, msg: Claimed) -> bool:
        if msg.provider_id is not None and self._busy[msg.provider_id] >= self._limit(
            msg.provider_id
        ):
            return False
        self._busy[msg.provider_id] += 1
        self._track(asyncio.create_task(self._deliver(msg)))
        return True

    async def _give_back(self, ids: list[str]) -> None:
        try:
            await asyncio.to_thread(store.release_lease, self._engine, self.token, ids)
        except Exception as exc:  # the lease will expire instead
            log.error("giving back %d claim(s) failed: %s", len(ids), exc)

    async def _take_back(self) -> None:
        """Claims left by an earlier run of this identity (a kill) are due again now."""
        try:
            n = await asyncio.to_thread(store.take_back, self._engine, self.identity, self.token)
        except Exception as exc:  # they wait for their lease instead
            log.error("taking back earlier claims failed: %s", exc)
            return
        if n:
            log.warning("took back %d message(s) claimed by an earlier run of %s", n, self.identity)

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval)

    def _answered(self, provider_id: int | None, seconds: float) -> None:
        if provider_id is None:
            return
        pace = self._pace.get(provider_id)
        if pace is None:
            s = self._settings
            pace = self._pace[provider_id] = Pace(
                s.provider_concurrency, s.provider_concurrency_max
            )
        pace.answered(seconds, self._busy[provider_id])

    async def _deliver(self, msg: Claimed) -> None:
        try:
            began = time.monotonic()
            outcome = await self._deliverer.run(msg)
            if outcome.throttled and outcome.next_attempt_at is not None:
                await self._postpone(msg, outcome.next_attempt_at, outcome.reason)
                return
            if outcome.state == MessageState.DELIVERED:  # only real answers pace a provider
                self._answered(msg.provider_id, time.monotonic() - began)
            recorded = await self._outcomes.submit((msg, outcome))
            if recorded is not None:
                log.info(
                    "%s: state=%s%s",
                    msg.id,
                    outcome.state,
                    f" reason={outcome.reason!r}" if outcome.reason else "",
                )
                if self._on_outcome:
                    self._on_outcome(msg, outcome, recorded)
            else:
                log.warning("%s: lease lost before the outcome was written", msg.id)
        except Exception:
            log.exception("%s: delivery pass crashed; the lease will expire", msg.id)
        finally:
            self._done(msg.provider_id)
            self.in_flow.delivered()
            if self._maybe_more:
                self._wake.set()

    async def _postpone(self, msg: Claimed, at: dt.datetime, reason: str | None) -> None:
        """Not sent (its provider's ceiling): the claim goes back, due at ``at``."""
        try:
            await asyncio.to_thread(store.postpone, self._engine, self.token, msg.id, at)
        except Exception as exc:  # the lease expires instead; nothing is lost
            log.error("%s: postponing failed: %s", msg.id, exc)
            return
        log.info("%s: postponed: %s", msg.id, reason)

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let the deliveries in flight finish within ``grace`` seconds,
        cancel the rest (recorded, deferred); give back every lease still held."""
        self._stopping = True
        self.in_flow.set_behind(False)  # no session waits for deliveries that stop
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._inflight:
            _, late = await asyncio.wait(set(self._inflight), timeout=grace)
            if late:
                log.warning("cancelling %d delivery(ies) still in flight at the grace", len(late))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await self._outcomes.aclose()
        if self._deliverer.throttle is not None:
            await self._deliverer.throttle.aclose()
        await asyncio.to_thread(store.release_lease, self._engine, self.token)
