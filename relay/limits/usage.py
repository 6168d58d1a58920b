"""What a subject has used of its limits now: for the usage view and the gauges.

"Used" is what processes have taken from the shared counters in the current
window: every unit sent, plus at most ``[limits] lease_units`` per process
taken and not yet spent (they lapse with the window). Sessions are the open
sessions of live holders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, text

from relay.core.limits import KINDS, RATES, SESSIONS, iso, spell, window_start
from relay.core.metrics import Metrics

_USED = text(
    "SELECT used FROM limit_counters WHERE subject = :subject AND name = :name AND period = :period"
)
_SESSIONS = text(
    "SELECT COALESCE(SUM(count), 0) FROM limit_sessions WHERE subject = :subject "
    "AND expires_at > :now"
)
_LIMITED_ACCOUNTS = text(
    "SELECT id, name, "
    + ", ".join(f"max_{k.name}" for k in RATES)
    + " FROM accounts WHERE "
    + " OR ".join(f"max_{k.name} IS NOT NULL" for k in RATES)
)


@dataclass(frozen=True)
class LimitUse:
    limit: str  # a LimitKind name
    value: str  # as written: 100/min
    max: int
    used: int
    remaining: int
    resets_at: str | None  # ISO 8601 UTC; None for sessions


def uses(
    conn: Connection, subject: str, limits: Mapping[str, int | None], now: float
) -> list[LimitUse]:
    """Each limit of ``subject`` (``a:ID`` or ``c:ID``) that is set, with its use now."""
    found = []
    for kind in KINDS:
        value = limits.get(kind.name)
        if value is None:
            continue
        if kind is SESSIONS:
            used = conn.execute(_SESSIONS, {"subject": subject, "now": int(now)}).scalar_one()
            resets = None
        else:
            period = window_start(now, kind.seconds)
            params = {"subject": subject, "name": kind.name, "period": period}
            used = conn.execute(_USED, params).scalar() or 0
            resets = iso(period + kind.seconds)
        used = int(used)
        found.append(
            LimitUse(kind.name, spell(kind, value), value, used, max(value - used, 0), resets)
        )
    return found


def refresh_gauges(conn: Connection, metrics: Metrics, now: float) -> None:
    """``relay_quota_used_ratio`` for every account with a rate or quota set."""
    for row in conn.execute(_LIMITED_ACCOUNTS).all():
        account_id, name, *values = row
        limits = {k.name: v for k, v in zip(RATES, values, strict=True)}
        for use in uses(conn, f"a:{account_id}", limits, now):
            metrics.quota_used_ratio.labels(name, use.limit).set(min(use.used / use.max, 1.0))
