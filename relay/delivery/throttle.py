"""A provider's own ceilings, held across processes and nodes: ``max_rate``,
``max_connections``, and the pause its 429/Retry-After asks for.

Providers publish these ceilings and answer 429 past them (SendGrid's v3 rate
limits, SparkPost's "Rate Limiting" page, Amazon SES's maximum send rate); a
relay of several processes must keep to them together, so the budget lives in
the database, beside the queue every process already shares:

* ``provider_throttle``: one row per provider. A token bucket for
  ``max_rate`` (capacity one second of the rate, at least one token), and
  ``paused_until``, set by any process that was told 429 or Retry-After.
* ``provider_leases``: the ``max_connections`` slots each process holds, with
  an expiry renewed while it holds them: a killed process frees its slots
  when its lease runs out, without anyone's help.

Every change happens in one short transaction that first locks the
provider's throttle row (an UPSERT, then ``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite has one writer), so two processes never both take the
last slot or token. The database hop is amortised: a process takes tokens in
small batches (a quarter second of the rate) and keeps its slots while it
has deliveries for them, so at high rates most deliveries touch only memory.

A delivery that gets no token or slot waits (``Throttle.acquire``); past its
deadline it is postponed, not failed: the worker gives the message back with
a short ``next_attempt_at``, no attempt row, no backoff growth. Postfix does
the same for a destination's concurrency and rate delay: the mail waits in
the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from relay.store.models import ProviderLease, ProviderThrottle

log = logging.getLogger("relay.delivery")

LEASE = 10.0  # seconds a process's connection slots are held without renewal
RENEW = 3.0  # seconds between renewals (well inside LEASE)
REFRESH = 1.0  # seconds between looks at a provider's shared pause while sending
BATCH = 0.25  # seconds of the rate taken in one hop
TOKEN_LIFE = 0.5  # seconds a token taken ahead may wait for its delivery
DEFAULT_PAUSE = 1.0  # seconds a 429 without Retry-After pauses the provider
MIN_HOP = 0.05  # seconds between two hops of one provider's waiters
MAX_PAUSE = 3600.0  # a Retry-After longer than this is not believed further
MIN_FACTOR = 0.125  # a provider's rate is never cut below an eighth by its 429s
RECOVERY = 0.5 / 60  # share of max_rate regained a second after a pause


@dataclass(frozen=True)
class Limits:
    """A provider's ceilings from its options (None: none)."""

    max_rate: float | None = None  # messages a second, every process together
    max_connections: int | None = None  # deliveries at once, every process together

    @classmethod
    def of(cls, options: dict[str, Any]) -> Limits:
        rate = options.get("max_rate")
        conns = options.get("max_connections")
        return cls(float(rate) if rate else None, int(conns) if conns else None)

    @property
    def burst(self) -> float:
        """The bucket's capacity: one second of the rate, at least one message."""
        return max(1.0, self.max_rate or 0.0)


class Grant(NamedTuple):
    tokens: int
    slots: int  # the slots this holder may use now
    held: int  # the slots its lease row records (never below those in use)
    paused_until: float | None


# -- the database side (synchronous, run off the loop) ------------------------


def _lock_row(conn: Connection, provider_id: int, now: float, burst: float) -> Any:
    """The provider's throttle row, made if missing, locked for this transaction."""
    dialect = conn.engine.dialect.name
    maker = postgresql.insert if dialect == "postgresql" else sqlite.insert
    conn.execute(
        maker(ProviderThrottle)
        .values(provider_id=provider_id, tokens=burst, refilled_at=now, rate_factor=1.0)
        .on_conflict_do_nothing()
    )
    columns = (
        ProviderThrottle.tokens,
        ProviderThrottle.refilled_at,
        ProviderThrottle.paused_until,
        ProviderThrottle.rate_factor,
    )
    return conn.execute(
        select(*columns).where(ProviderThrottle.provider_id == provider_id).with_for_update()
    ).one()


def sync(
    engine: Engine,
    provider_id: int,
    holder: str,
    limits: Limits,
    *,
    want_tokens: int = 0,
    want_slots: int = 0,
    busy: int = 0,
    now: float | None = None,
) -> Grant:
    """Take up to ``want_tokens`` tokens and set this holder's slots to up to
    ``want_slots`` (its whole holding; ``busy`` of them are in use and are
    never given back here), in one transaction. Also reports the pause."""
    now = time.time() if now is None else now
    if not limits.max_rate and not limits.max_connections:
        return Grant(0, 0, 0, paused_until(engine, provider_id, now))
    with engine.begin() as conn:
        row = _lock_row(conn, provider_id, now, limits.burst)
        paused = row.paused_until if row.paused_until and row.paused_until > now else None
        tokens = 0
        if limits.max_rate:
            elapsed = max(0.0, now - row.refilled_at)
            # Additive increase after the pause's multiplicative decrease (AIMD).
            factor = row.rate_factor if paused else min(1.0, row.rate_factor + elapsed * RECOVERY)
            level = min(limits.burst, row.tokens + elapsed * limits.max_rate * factor)
            tokens = 0 if paused else max(0, min(want_tokens, math.floor(level)))
            conn.execute(
                update(ProviderThrottle)
                .where(ProviderThrottle.provider_id == provider_id)
                .values(tokens=level - tokens, refilled_at=now, rate_factor=factor)
            )
        slots = held = 0
        if limits.max_connections:
            slots, held = _lease(
                conn, provider_id, holder, limits.max_connections, want_slots, busy, now
            )
    return Grant(tokens, slots, held, paused)


def _lease(
    conn: Connection, provider_id: int, holder: str, ceiling: int, want: int, busy: int, now: float
) -> tuple[int, int]:
    conn.execute(
        delete(ProviderLease).where(
            ProviderLease.provider_id == provider_id, ProviderLease.expires_at < now
        )
    )
    others = conn.execute(
        select(ProviderLease.slots).where(
            ProviderLease.provider_id == provider_id, ProviderLease.holder != holder
        )
    ).scalars()
    taken = list(others)
    free = ceiling - sum(taken)
    slots = max(0, min(want, free))
    held = max(slots, busy)
    mine = (ProviderLease.provider_id == provider_id, ProviderLease.holder == holder)
    if held == 0:
        conn.execute(delete(ProviderLease).where(*mine))
        return 0, 0
    found = conn.execute(
        update(ProviderLease).where(*mine).values(slots=held, expires_at=now + LEASE)
    ).rowcount
    if not found:
        conn.execute(
            insert(ProviderLease).values(
                provider_id=provider_id, holder=holder, slots=held, expires_at=now + LEASE
            )
        )
    return slots, held


def paused_until(engine: Engine, provider_id: int, now: float) -> float | None:
    """The provider's shared pause, read only (a provider without ceilings)."""
    with engine.connect() as conn:
        until = conn.execute(
            select(ProviderThrottle.paused_until).where(ProviderThrottle.provider_id == provider_id)
        ).scalar()
    return until if until and until > now else None


def pause(engine: Engine, provider_id: int, until: float, now: float | None = None) -> None:
    """Pause the provider for every process until ``until`` (never shortens a
    pause), and halve the share of its ``max_rate`` in force once the pause ends
    (AIMD: it grows back by half the rate a minute; two 429s in a row quarter it)."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        row = _lock_row(conn, provider_id, now, 1.0)
        if (row.paused_until or 0.0) >= until:
            return
        values: dict[str, float] = {"paused_until": until}
        if (row.paused_until or 0.0) <= now:  # a new pause, not news of the same one
            values["rate_factor"] = max(MIN_FACTOR, row.rate_factor / 2)
        conn.execute(
            update(ProviderThrottle)
            .where(ProviderThrottle.provider_id == provider_id)
            .values(**values)
        )


def release_all(engine: Engine, holder: str) -> None:
    """Give back every slot this holder leases (a graceful stop)."""
    with engine.begin() as conn:
        conn.execute(delete(ProviderLease).where(ProviderLease.holder == holder))


# -- the process side ---------------------------------------------------------


@dataclass
class _Gate:
    """One provider as this process sees its shared budget."""

    name: str
    limits: Limits = field(default_factory=Limits)
    tokens: deque[float] = field(default_factory=deque)  # expiry of each token taken
    slots: int = 0  # slots we may use
    held: int = 0  # slots our lease row records
    busy: int = 0  # deliveries holding a slot now
    waiting: int = 0
    paused_until: float = 0.0
    synced_at: float = 0.0
    used: int = 0  # tokens used since the last hop: the next batch follows demand
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def fresh_token(self, now: float) -> bool:
        while self.tokens and self.tokens[0] < now:
            self.tokens.popleft()
        return bool(self.tokens)


class Postponed(NamedTuple):
    """No slot, token or end of pause before the deadline: send later, at ``at``."""

    at: float  # epoch seconds
    reason: str  # rate | connections | retry_after


class Ticket:
    """The right to send one message now; ``release()`` when the send is over."""

    def __init__(self, throttle: Throttle, provider_id: int, slot: bool) -> None:
        self._throttle = throttle
        self._provider_id = provider_id
        self._slot = slot

    def release(self) -> None:
        if self._slot:
            self._slot = False
            self._throttle._release(self._provider_id)


Observe = Callable[[str, str], None]  # (provider name, reason)


class Throttle:
    """The delivery workers' gate to each provider, one per process.

    ``holder`` names this process in ``provider_leases`` (the worker's token).
    ``on_throttled(provider, reason)`` is told once per delivery that had to
    wait (reason: rate | connections | retry_after), and ``on_pause(provider,
    seconds)`` the pause left of each paused provider (0 when it ends).
    """

    def __init__(
        self,
        engine: Engine,
        holder: str,
        *,
        on_throttled: Observe | None = None,
        on_pause: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self.holder = holder
        self._on_throttled = on_throttled
        self._on_pause = on_pause
        self._clock = clock
        self._gates: dict[int, _Gate] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None

    def _gate(self, provider_id: int, name: str, limits: Limits) -> _Gate:
        gate = self._gates.get(provider_id)
        if gate is None:
            gate = self._gates[provider_id] = _Gate(name)
        gate.name, gate.limits = name, limits
        return gate

    def paused(self, provider_id: int) -> bool:
        """Is the provider paused (a 429 or Retry-After) as far as this process knows?"""
        gate = self._gates.get(provider_id)
        return gate is not None and gate.paused_until > self._clock()

    async def acquire(
        self, provider_id: int, name: str, limits: Limits, wait: float
    ) -> Ticket | Postponed:
        """Wait up to ``wait`` seconds for the provider's pause to end, a rate
        token and a connection slot; a ``Ticket`` to send, or ``Postponed``."""
        gate = self._gate(provider_id, name, limits)
        deadline = self._clock() + wait
        told: set[str] = set()
        gate.waiting += 1
        try:
            while True:
                now = self._clock()
                short = self._lacking(gate, now)
                if short is None and now - gate.synced_at >= REFRESH:
                    await self._sync(provider_id, gate)  # another process's pause
                    continue
                if short is None:
                    return self._take(provider_id, gate, now)
                if short == "retry_after" and gate.paused_until > deadline:
                    self._tell(gate, short, told)
                    return Postponed(gate.paused_until, short)
                if short != "retry_after" and self._may_hop(gate, now):
                    await self._sync(provider_id, gate)
                    if self._lacking(gate, self._clock()) is None:
                        continue
                self._tell(gate, short, told)
                now = self._clock()
                if now >= deadline:
                    return Postponed(now + self._retry_in(gate), short)
                await self._nap(gate, min(deadline, self._wake_at(gate, short, now)) - now)
        finally:
            gate.waiting -= 1

    def _lacking(self, gate: _Gate, now: float) -> str | None:
        if gate.paused_until > now:
            return "retry_after"
        if gate.limits.max_connections and gate.busy >= min(
            gate.slots, gate.limits.max_connections
        ):
            return "connections"
        if gate.limits.max_rate and not gate.fresh_token(now):
            return "rate"
        return None

    @staticmethod
    def _may_hop(gate: _Gate, now: float) -> bool:
        """Ask the database again? Not while another waiter asks, nor twice in MIN_HOP."""
        return not gate.lock.locked() and now - gate.synced_at >= MIN_HOP

    def _take(self, provider_id: int, gate: _Gate, now: float) -> Ticket:
        if gate.limits.max_rate:
            gate.tokens.popleft()
            gate.used += 1
        slot = bool(gate.limits.max_connections)
        if slot:
            gate.busy += 1
        return Ticket(self, provider_id, slot)

    def _wake_at(self, gate: _Gate, short: str, now: float) -> float:
        if short == "retry_after":
            return gate.paused_until
        if short == "rate" and gate.limits.max_rate:
            return now + min(1.0, max(0.01, 1.0 / gate.limits.max_rate))
        return now + 0.25  # a slot: freed here (woken at once) or by another process

    def _retry_in(self, gate: _Gate) -> float:
        return 1.0 if not gate.limits.max_rate else min(5.0, max(1.0, 1.0 / gate.limits.max_rate))

    async def _nap(self, gate: _Gate, seconds: float) -> None:
        gate.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.changed.wait(), max(0.0, seconds))

    def _tell(self, gate: _Gate, reason: str, told: set[str]) -> None:
        if reason in told or self._on_throttled is None:
            return
        told.add(reason)
        try:
            self._on_throttled(gate.name, reason)
        except Exception:  # a metric must never stop a delivery
            log.exception("throttle observer failed")

    async def _sync(self, provider_id: int, gate: _Gate) -> None:
        """One hop: tokens for those waiting, the slots wanted, the shared pause."""
        async with gate.lock:
            now = self._clock()
            if now - gate.synced_at < MIN_HOP and self._lacking(gate, now) is None:
                return  # another waiter's hop just brought what this one needs
            limits = gate.limits
            want_tokens = 0
            if limits.max_rate and not gate.fresh_token(now):
                # As many as wait now, or twice what the last hop's tokens
                # served: a busy process hops a few times a second at most,
                # an idle one takes no tokens it would let expire.
                batch = max(1, math.ceil(limits.max_rate * BATCH))
                want_tokens = max(1, min(batch, max(gate.waiting, 2 * gate.used)))
                gate.used = 0
            want_slots = min(limits.max_connections or 0, gate.busy + gate.waiting)
            try:
                grant = await asyncio.to_thread(
                    sync,
                    self._engine,
                    provider_id,
                    self.holder,
                    limits,
                    want_tokens=want_tokens,
                    want_slots=want_slots,
                    busy=gate.busy,
                    now=now,
                )
            except Exception as exc:  # database down: wait and try again
                log.error("provider %s: throttle sync failed: %s", gate.name, exc)
                gate.synced_at = self._clock() + 1.0
                return
            gate.synced_at = self._clock()
            expiry = gate.synced_at + TOKEN_LIFE
            gate.tokens.extend(expiry for _ in range(grant.tokens))
            if limits.max_connections:
                gate.slots, gate.held = grant.slots, grant.held
            self._paused(gate, grant.paused_until or 0.0)
            gate.changed.set()

    def _paused(self, gate: _Gate, until: float) -> None:
        if until > gate.paused_until:
            gate.paused_until = until
            if self._on_pause is not None:
                self._on_pause(gate.name, max(0.0, until - self._clock()))

    def _release(self, provider_id: int) -> None:
        gate = self._gates[provider_id]
        gate.busy -= 1
        gate.changed.set()

    def pause(self, provider_id: int, name: str, seconds: float) -> None:
        """The provider said 429/Retry-After: pause it here now, and everywhere
        through the database (in the background: the delivery does not wait)."""
        seconds = min(MAX_PAUSE, max(seconds, 0.0) or DEFAULT_PAUSE)
        until = self._clock() + seconds
        gate = self._gates.get(provider_id) or self._gate(provider_id, name, Limits())
        log.warning("provider %s asked to slow down: paused for %.1f s", name, seconds)
        self._paused(gate, until)
        task = asyncio.create_task(self._store_pause(provider_id, until))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store_pause(self, provider_id: int, until: float) -> None:
        try:
            await asyncio.to_thread(pause, self._engine, provider_id, until)
        except Exception as exc:  # the other processes learn it from their own 429
            log.error("storing a provider pause failed: %s", exc)

    # -- housekeeping: renew leases, give back idle slots, end pauses ---------

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep(), name="provider-throttle")

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = self._clock()
            for provider_id, gate in list(self._gates.items()):
                if gate.paused_until and gate.paused_until <= now:
                    gate.paused_until = 0.0
                    if self._on_pause is not None:
                        self._on_pause(gate.name, 0.0)
                elif gate.paused_until and self._on_pause is not None:
                    self._on_pause(gate.name, gate.paused_until - now)
                idle = gate.held > gate.busy + gate.waiting
                if gate.held and (idle or now - gate.synced_at >= RENEW) and not gate.lock.locked():
                    await self._sync(provider_id, gate)

    async def aclose(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if any(g.held for g in self._gates.values()):
            try:
                await asyncio.to_thread(release_all, self._engine, self.holder)
            except Exception as exc:  # the leases expire instead
                log.error("giving back provider slots failed: %s", exc)
