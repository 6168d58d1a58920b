"""The reputation gauges, refreshed from the database.

Every process of ``relay serve --processes N`` runs the same refresh, so each
holds the same values and the gauges' ``mostrecent`` multiprocess mode shows
one of them. An account that leaves the windows is set to 0, not removed: a
multiprocess gauge's file keeps its last value. A window under the volume
floor (``[reputation] min_volume`` delivered) reads 0, as it is judged: one
bounce in two messages is not a 50% rate anyone should be paged for.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, select

from relay.core.metrics import Metrics
from relay.reputation.rates import WINDOWS, all_rates
from relay.store.models import Account, utcnow


class ReputationGauges:
    def __init__(self, engine: Engine, metrics: Metrics, min_volume: int) -> None:
        self._engine = engine
        self._metrics = metrics
        self._min_volume = min_volume
        self._shown: set[str] = set()

    def refresh(self, now: dt.datetime | None = None) -> None:
        now = now or utcnow()
        with self._engine.connect() as conn:
            rates = all_rates(conn, now)
            suspended = set(
                conn.execute(select(Account.name).where(Account.suspended_at.is_not(None)))
                .scalars()
                .all()
            )
        m = self._metrics
        for name in self._shown - set(rates) - suspended:
            for window in WINDOWS:
                m.account_bounce_rate.labels(name, window).set(0)
                m.account_complaint_rate.labels(name, window).set(0)
            m.account_suspended.labels(name).set(0)
        for name, windows in rates.items():
            for r in windows:
                judged = r.judged(self._min_volume)
                m.account_bounce_rate.labels(name, r.window).set(r.bounce_rate if judged else 0)
                m.account_complaint_rate.labels(name, r.window).set(
                    r.complaint_rate if judged else 0
                )
        for name in set(rates) | suspended | self._shown:
            m.account_suspended.labels(name).set(1 if name in suspended else 0)
        self._shown = set(rates) | suspended
