"""Rates, quotas and concurrent sessions of accounts and credentials, for every process.

Counters live in the database (``limit_counters``), one row per (subject,
limit, UTC-aligned window), so they hold with ``--processes N`` and with
several nodes on one PostgreSQL. A process does not go to the database for
each message: it takes a *lease* of units (at most ``[limits] lease_units``,
fewer near the limit: ``lease_size``) with one conditional UPDATE,
``used + n <= limit``, and spends them from memory. The sum over processes
never passes the limit; a process holding unspent units leaves the others
at most that many short, and units a process took but never spent (a crash,
a quiet process) lapse with their window. The check on the message path is a
dictionary look-up; a database hop (on a worker thread, never on the loop)
comes once per lease, and once per ``[limits] lease_refresh`` seconds to read
the limits of a credential again.

Concurrent sessions are counted at AUTH: each process keeps its own count per
subject and writes it to ``limit_sessions`` with an expiry that its heartbeat
renews, so the sessions of a crashed process free themselves when its row
expires (``[limits] session_lease``). An admission locks the subject's row of
``limit_counters`` (period 0) for its transaction, so two processes never
both take the last session. While the limit is far a process reserves spare
slots (``lease_size`` of what is free) and opens sessions within them without
a trip to the database; its heartbeat gives the spare ones back.

Counted: a message at MAIL FROM, a recipient at RCPT TO (an attempt counts,
as Postfix's anvil counts them, even when DATA refuses the message later).
The subjects of a login are its credential, its account and, for a
sub-account, its agency: an agency's limits cap its whole tree.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from relay.core.limits import KINDS, RATES, SESSIONS, LimitKind, iso, spell, window_start
from relay.core.replies import Reply, quota_reached, rate_limited, too_many_sessions
from relay.core.settings import LimitSettings

log = logging.getLogger("relay.limits")

_COLUMNS = ", ".join(f"{{t}}.max_{k.name}" for k in KINDS)
_SUBJECTS = text(
    f"""
SELECT c.id, c.username, {_COLUMNS.format(t="c")},
       a.id, a.name, {_COLUMNS.format(t="a")},
       p.id, p.name, {_COLUMNS.format(t="p")}
FROM credentials c
JOIN domains d ON d.id = c.domain_id
JOIN accounts a ON a.id = d.account_id
LEFT JOIN accounts p ON p.id = a.parent_id
WHERE c.id = :credential_id
"""
)
_TOUCH = text(
    "INSERT INTO limit_counters (subject, name, period, used) "
    "VALUES (:subject, :name, :period, 0) ON CONFLICT DO NOTHING"
)
_USED = text(
    "SELECT used FROM limit_counters WHERE subject = :subject AND name = :name AND period = :period"
)
_TAKE = text(
    "UPDATE limit_counters SET used = used + :n WHERE subject = :subject AND name = :name "
    "AND period = :period AND used + :n <= :limit"
)
_TAKE_FAR = text(
    "UPDATE limit_counters SET used = used + :n WHERE subject = :subject AND name = :name "
    "AND period = :period AND used + 8 * :n <= :limit"
)
_LOCK = text(
    "UPDATE limit_counters SET used = used + 1 WHERE subject = :subject AND name = :name "
    "AND period = 0"
)
_OTHERS = text(
    "SELECT COALESCE(SUM(count), 0) FROM limit_sessions WHERE subject = :subject "
    "AND holder <> :holder AND expires_at > :now"
)
_HOLD = text(
    "INSERT INTO limit_sessions (subject, holder, count, expires_at) "
    "VALUES (:subject, :holder, :count, :expires_at) "
    "ON CONFLICT (subject, holder) DO UPDATE SET count = excluded.count, "
    "expires_at = excluded.expires_at"
)
_LET_GO = text("DELETE FROM limit_sessions WHERE holder = :holder AND subject = :subject")
_FORGET = text("DELETE FROM limit_sessions WHERE holder = :holder")
_SWEEP_COUNTERS = text("DELETE FROM limit_counters WHERE period > 0 AND period < :before")
_SWEEP_SESSIONS = text("DELETE FROM limit_sessions WHERE expires_at < :before")
# Counters and expired session rows kept this long (the usage view reads the
# current windows only; a day's row is kept a day after it ends).
KEEP = 2 * 86400


@dataclass(frozen=True)
class Subject:
    """Whose limits apply: a credential, its account, or the account's agency."""

    key: str  # "c:<id>" | "a:<id>"
    label: str  # "credential app@acme.test", "account acme", "agency agency"
    account: str  # the account the metric names (the credential's own, for a credential)
    limits: dict[str, int]  # limit name -> value, only those set

    @property
    def metric_prefix(self) -> str:
        return "credential_" if self.key.startswith("c:") else ""


@dataclass(frozen=True)
class Refusal:
    subject: Subject
    kind: LimitKind
    period: int


def subjects_of(row: Any) -> tuple[Subject, ...]:
    """The credential, the account and the agency of one ``_SUBJECTS`` row."""
    n = len(KINDS)
    cred, account, agency = row[0 : n + 2], row[n + 2 : 2 * n + 4], row[2 * n + 4 :]

    def limits(values: Any) -> dict[str, int]:
        return {k.name: int(v) for k, v in zip(KINDS, values, strict=True) if v is not None}

    found = [
        Subject(f"c:{cred[0]}", f"credential {cred[1]}", account[1], limits(cred[2:])),
        Subject(f"a:{account[0]}", f"account {account[1]}", account[1], limits(account[2:])),
    ]
    if agency[0] is not None:
        found.append(
            Subject(f"a:{agency[0]}", f"agency {agency[1]}", agency[1], limits(agency[2:]))
        )
    return tuple(s for s in found if s.limits)


def lease_size(limit: int, used: int, most: int) -> int:
    """Units to take: ``most`` while plenty remain, fewer near the limit (an eighth of
    what remains, at least one), so that processes holding unspent units leave
    little unused when the limit is close."""
    remaining = limit - used
    if remaining <= 0:
        return 0
    return max(1, min(most, remaining // 8))


def take_lease(
    conn: Connection, subject: str, kind: LimitKind, period: int, limit: int, most: int
) -> int:
    """Take units of ``kind`` for ``subject`` in the window ``period``: how many (0: none left)."""
    params = {"subject": subject, "name": kind.name, "period": period}
    # Far from the limit (an eighth of it or more left after the lease), one
    # statement takes a full lease; otherwise read what is left and take less.
    if conn.execute(_TAKE_FAR, {**params, "n": most, "limit": limit}).rowcount == 1:
        return most
    conn.execute(_TOUCH, params)
    for _ in range(5):  # a lost race (another process took units in between) tries again
        used = conn.execute(_USED, params).scalar_one()
        n = lease_size(limit, int(used), most)
        if n == 0:
            return 0
        if conn.execute(_TAKE, {**params, "n": n, "limit": limit}).rowcount == 1:
            return n
    return 0


def reply_for(refusal: Refusal, now: float) -> Reply:
    """The 451 4.7.1 that names the limit, whose it is, and when to try again."""
    kind, subject = refusal.kind, refusal.subject
    value = subject.limits.get(kind.name, 0)
    if kind is SESSIONS:
        return too_many_sessions(value, subject.label)
    ends = refusal.period + kind.seconds
    if kind.counts == "recipients":
        window = "Daily" if kind.unit == "day" else "Hourly"
        return quota_reached(window, value, subject.label, iso(ends))
    return rate_limited(spell(kind, value), subject.label, int(ends - now + 0.999))


def holder_name() -> str:
    """This process, in ``limit_sessions``: host, pid and a random part (two relays
    in one process, as the tests run them, are two holders)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Taken:
    subjects: tuple[Subject, ...]
    grants: dict[tuple[str, str, int], int] = field(default_factory=dict)


class Limits:
    """One process's view of the limits: leases and sessions, and the checks on them."""

    def __init__(
        self,
        engine: Engine,
        settings: LimitSettings,
        on_limited: Callable[[str, str], None] | None = None,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._on_limited = on_limited
        self.holder = holder or holder_name()
        self._clock = clock
        # credential id -> (when read, monotonic; its subjects with limits)
        self._subjects: dict[int, tuple[float, tuple[Subject, ...]]] = {}
        # (subject key, limit name, period) -> units taken and not yet spent here
        self._leases: dict[tuple[str, str, int], int] = {}
        # subject key -> sessions open in this process (subjects with a session limit)
        self._sessions: dict[str, int] = {}
        # subject key -> slots this process holds in limit_sessions (open + spare),
        # and whether the limit was near at the last admission (write releases at once)
        self._reserved: dict[str, int] = {}
        self._tight: dict[str, bool] = {}
        self._admitting = asyncio.Lock()
        self._hops: dict[tuple[int, str], asyncio.Lock] = {}
        self._writes: set[asyncio.Task[None]] = set()

    # -- reads ---------------------------------------------------------------

    def _read(self, conn: Connection, credential_id: int) -> tuple[Subject, ...]:
        row = conn.execute(_SUBJECTS, {"credential_id": credential_id}).first()
        return () if row is None else subjects_of(row)

    def _fresh(self, credential_id: int) -> tuple[Subject, ...] | None:
        cached = self._subjects.get(credential_id)
        if cached is None or time.monotonic() - cached[0] > self._settings.lease_refresh:
            return None
        return cached[1]

    def _remember(self, credential_id: int, subjects: tuple[Subject, ...]) -> None:
        self._subjects[credential_id] = (time.monotonic(), subjects)

    # -- messages and recipients ---------------------------------------------

    def _wanted(
        self, subjects: tuple[Subject, ...], counts: str, now: float
    ) -> list[tuple[Subject, LimitKind, int]]:
        return [
            (s, k, window_start(now, k.seconds))
            for s in subjects
            for k in RATES
            if k.counts == counts and k.name in s.limits
        ]

    def _spend_here(self, wanted: list[tuple[Subject, LimitKind, int]]) -> bool:
        """Spend one unit of each from the leases in memory, all or none."""
        keys = [(s.key, k.name, p) for s, k, p in wanted]
        if any(self._leases.get(key, 0) <= 0 for key in keys):
            return False
        for key in keys:
            self._leases[key] -= 1
        return True

    def _take(self, credential_id: int, counts: str, now: float, read: bool) -> _Taken:
        """Off the loop: read the limits when asked, then lease units of every limit
        this unit needs. Each gets a lease of its own (the caller spends one of it,
        the rest joins the pool), so that sessions spending from the pool meanwhile
        never leave the caller short; a limit with none left is recorded, not leased."""
        most = self._settings.lease_units
        with self._engine.begin() as conn:
            subjects = self._read(conn, credential_id) if read else self._cached(credential_id)
            taken = _Taken(subjects)
            for subject, kind, period in self._wanted(subjects, counts, now):
                limit = subject.limits[kind.name]
                n = take_lease(conn, subject.key, kind, period, limit, most)
                if n:
                    taken.grants[(subject.key, kind.name, period)] = n
        return taken

    def _cached(self, credential_id: int) -> tuple[Subject, ...]:
        cached = self._subjects.get(credential_id)
        return () if cached is None else cached[1]

    async def spend(self, credential_id: int, counts: str) -> Reply | None:
        """One message ("messages", at MAIL FROM) or recipient ("recipients", at
        RCPT TO) of this login: None when every limit allows it, else the reply."""
        now = self._clock()
        subjects = self._fresh(credential_id)
        if subjects is not None:
            wanted = self._wanted(subjects, counts, now)
            if not wanted or self._spend_here(wanted):
                return None
        # One hop at a time per credential: a burst of sessions waits for the
        # lease the first one fetches instead of each taking one (which would
        # hold units a burst-wide many, away from the other processes).
        lock = self._hops.setdefault((credential_id, counts), asyncio.Lock())
        async with lock:
            subjects = self._fresh(credential_id)
            if subjects is not None:
                wanted = self._wanted(subjects, counts, now)
                if not wanted or self._spend_here(wanted):
                    return None
            return await self._hop(credential_id, counts, now, subjects is None)

    async def _hop(self, credential_id: int, counts: str, now: float, read: bool) -> Reply | None:
        taken = await asyncio.to_thread(self._take, credential_id, counts, now, read)
        self._remember(credential_id, taken.subjects)
        self._prune(now)
        short, spent = None, []
        for subject, kind, period in self._wanted(taken.subjects, counts, now):
            key = (subject.key, kind.name, period)
            # The unit comes from this hop's own lease, or from the pool (other
            # sessions' leases): none anywhere is a refusal.
            pool = self._leases.get(key, 0) + taken.grants.pop(key, 0)
            if pool > 0:
                self._leases[key] = pool - 1
                spent.append(key)
            else:
                self._leases[key] = 0
                short = short or Refusal(subject, kind, period)
        if short is None:
            return None
        for key in spent:  # refused: the units of the other limits go back to the pool
            self._leases[key] += 1
        return self._refused(short, now)

    def _prune(self, now: float) -> None:
        """Forget leases of windows that have ended (their units lapse with them)."""
        if len(self._leases) > 64:
            self._leases = {
                k: n for k, n in self._leases.items() if k[2] + _seconds(k[1]) > now and n > 0
            }

    def _refused(self, refusal: Refusal, now: float) -> Reply:
        reply = reply_for(refusal, now)
        log.info("limited: %s %s: %s", refusal.subject.label, refusal.kind.name, reply)
        if self._on_limited is not None:
            self._on_limited(
                refusal.subject.account, refusal.subject.metric_prefix + refusal.kind.name
            )
        return reply

    # -- concurrent sessions -------------------------------------------------

    async def admit(self, credential_id: int) -> Reply | tuple[str, ...]:
        """At AUTH: the subjects whose session count this login now holds (give
        them back with ``release``), or the reply refusing it.

        A process reserves a few slots beyond its open sessions when the limit is
        far (``lease_size`` of what is left, as for units), so that most logins
        need no database hop; near the limit it reserves none, and then each
        session that ends is written back at once."""
        subjects = self._fresh(credential_id)
        if subjects is None:
            subjects = await asyncio.to_thread(self._read_now, credential_id)
            self._remember(credential_id, subjects)
        keys = tuple(sorted(s.key for s in subjects if SESSIONS.name in s.limits))
        if not keys:
            return ()
        if self._open_here(keys):
            return keys
        async with self._admitting:
            if self._open_here(keys):
                return keys
            limited = sorted((s for s in subjects if s.key in keys), key=lambda s: s.key)
            mine = {k: self._sessions.get(k, 0) for k in keys}
            now = self._clock()
            result = await asyncio.to_thread(self._admit, limited, mine, now)
            if isinstance(result, Refusal):
                return self._refused(result, now)
            for key, reserved in result.items():
                self._sessions[key] = mine[key] + 1
                self._reserved[key] = reserved
                self._tight[key] = reserved == mine[key] + 1  # no spare slot: near the limit
        return keys

    def _open_here(self, keys: tuple[str, ...]) -> bool:
        """Open a session within the slots this process has reserved, if it has them."""
        if any(self._sessions.get(k, 0) >= self._reserved.get(k, 0) for k in keys):
            return False
        for k in keys:
            self._sessions[k] = self._sessions.get(k, 0) + 1
        return True

    def _read_now(self, credential_id: int) -> tuple[Subject, ...]:
        with self._engine.connect() as conn:
            return self._read(conn, credential_id)

    def _admit(
        self, limited: list[Subject], mine: dict[str, int], now: float
    ) -> Refusal | dict[str, int]:
        """Off the loop: the slots to reserve per subject (open + 1 + slack), or a refusal."""
        expires = int(now + self._settings.session_lease)
        reserve = {}
        with self._engine.begin() as conn:
            for s in limited:  # in key order: two admissions never wait on each other in a ring
                params = {"subject": s.key, "name": SESSIONS.name, "period": 0}
                conn.execute(_TOUCH, params)
                conn.execute(_LOCK, params)  # held to the commit: admissions of s one at a time
                others = int(
                    conn.execute(
                        _OTHERS, {"subject": s.key, "holder": self.holder, "now": int(now)}
                    ).scalar_one()
                )
                most = s.limits[SESSIONS.name]
                if others + mine[s.key] + 1 > most:
                    conn.rollback()  # nothing written; the lock goes with it
                    return Refusal(s, SESSIONS, 0)
                slack = lease_size(most, others + mine[s.key] + 1, self._settings.lease_units)
                reserve[s.key] = mine[s.key] + 1 + max(slack - 1, 0)
            for key, count in reserve.items():
                conn.execute(
                    _HOLD,
                    {"subject": key, "holder": self.holder, "count": count, "expires_at": expires},
                )
        return reserve

    def release(self, keys: tuple[str, ...]) -> None:
        """A session admitted by ``admit`` ended. Near the limit its slot is written
        back at once (off the loop); else it stays reserved here for the next login
        until the heartbeat gives the spare slots back."""
        if not keys:
            return
        for key in keys:
            self._sessions[key] = max(self._sessions.get(key, 0) - 1, 0)
        if any(self._tight.get(key, True) for key in keys):
            task = asyncio.get_running_loop().create_task(self._write_later(keys))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write_later(self, keys: tuple[str, ...] | None = None) -> None:
        try:
            await self.write_sessions(keys)
        except Exception as exc:
            log.warning("limits: writing session counts: %s", exc)

    async def write_sessions(self, keys: tuple[str, ...] | None = None) -> None:
        """Write this process's open sessions (of ``keys``; the heartbeat: all) as its
        reservation, with a new expiry. Under the admission lock: an admission's
        larger reservation is never overwritten by an older count."""
        async with self._admitting:
            chosen = tuple(self._reserved) if keys is None else keys
            counts = {k: self._sessions.get(k, 0) for k in chosen}
            await asyncio.to_thread(self._write, counts)
            for key, count in counts.items():
                self._reserved[key] = count
                self._tight[key] = True

    def _write(self, counts: dict[str, int]) -> None:
        expires = int(self._clock() + self._settings.session_lease)
        with self._engine.begin() as conn:
            for key, count in counts.items():
                if count > 0:
                    conn.execute(
                        _HOLD,
                        {
                            "subject": key,
                            "holder": self.holder,
                            "count": count,
                            "expires_at": expires,
                        },
                    )
                else:
                    conn.execute(_LET_GO, {"subject": key, "holder": self.holder})

    def sweep(self) -> None:
        """Delete counters of windows long ended and session rows long expired."""
        before = int(self._clock()) - KEEP
        with self._engine.begin() as conn:
            conn.execute(_SWEEP_COUNTERS, {"before": before})
            conn.execute(_SWEEP_SESSIONS, {"before": before})

    async def run(self) -> None:
        """The heartbeat: renew this process's sessions at a third of their lease;
        sweep old rows now and then."""
        rounds = 0
        while True:
            await asyncio.sleep(self._settings.session_lease / 3)
            try:
                await self.write_sessions()
                if rounds % 100 == 0:
                    await asyncio.to_thread(self.sweep)
            except Exception as exc:
                log.warning("limits heartbeat: %s", exc)
            rounds += 1

    def close(self) -> None:
        """At stop: this process holds no session any more."""
        with self._engine.begin() as conn:
            conn.execute(_FORGET, {"holder": self.holder})
        self._sessions.clear()
        self._reserved.clear()


def _seconds(name: str) -> int:
    return next((k.seconds for k in RATES if k.name == name), 0)
