"""Re-judge accounts as their bounces and complaints arrive; suspend, and tell them.

``events_sink`` is an ``EventSink`` (``relay.core.events``): the webhook
listener calls it, in a worker thread, with the events it has just stored.
Only accounts with a hard bounce or a complaint among them are re-judged:
nothing else can raise a rate. A suspension is one conditional UPDATE
(``suspended_at IS NULL``), so when several nodes judge the same account at
once exactly one of them suspends it and raises the notice.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import Engine, select, update

from relay.core.events import (
    AccountEvent,
    BounceClass,
    EventSink,
    EventType,
    Notice,
    NoticeKind,
    Notify,
)
from relay.core.settings import ReputationSettings
from relay.reputation.judge import SUSPEND, Breach, judge
from relay.reputation.rates import account_rates
from relay.store.models import Account, utcnow

log = logging.getLogger("relay.reputation")


def _counts(event: AccountEvent) -> bool:
    e = event.event
    return e.type == EventType.COMPLAINT or (
        e.type == EventType.BOUNCE and e.bounce_class == BounceClass.HARD
    )


class Reviewer:
    """Judges one account at a time; remembers the warnings it raised today, so a
    stream of bounces raises one warning, not one per batch (the notifications
    service dedupes again by key, across processes and nodes)."""

    def __init__(
        self,
        engine: Engine,
        settings: ReputationSettings,
        notify: Notify,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._notify = notify
        self._clock = clock
        self._raised: set[str] = set()
        self._day: dt.date | None = None

    def review(self, account_id: int) -> list[Breach]:
        """Judge the account now; suspend or warn. Returns the breaches found."""
        now = self._clock()
        with self._engine.connect() as conn:
            row = conn.execute(
                select(Account.suspended_at, Account.reputation_since).where(
                    Account.id == account_id
                )
            ).first()
            if row is None:
                return []
            suspended_at, since = row
            breaches = judge(account_rates(conn, account_id, now, since), self._settings)
        if suspended_at is not None or not breaches:
            return breaches
        worst = breaches[0]
        if worst.level == SUSPEND:
            self._suspend(account_id, worst, now)
        else:
            for breach in breaches:
                self._warn(account_id, breach, now)
        return breaches

    def _suspend(self, account_id: int, breach: Breach, now: dt.datetime) -> None:
        reason = breach.describe()
        with self._engine.begin() as conn:
            done = conn.execute(
                update(Account)
                .where(Account.id == account_id, Account.suspended_at.is_(None))
                .values(suspended_at=now, suspended_reason=reason)
            )
        if done.rowcount != 1:
            return  # another node suspended it first, and told the account
        log.warning("account %d suspended: %s", account_id, reason)
        self._raise(
            Notice(
                account_id,
                NoticeKind.SUSPENDED,
                f"suspended:{account_id}:{now.isoformat()}",
                "Sending suspended",
                f"New mail is refused or held until the account is resumed: {reason}.",
            )
        )

    def _warn(self, account_id: int, breach: Breach, now: dt.datetime) -> None:
        day = now.date()
        if day != self._day:
            self._raised.clear()
            self._day = day
        key = f"reputation_warning:{account_id}:{breach.metric}:{breach.window}:{day.isoformat()}"
        if key in self._raised:
            return
        self._raised.add(key)
        self._raise(
            Notice(
                account_id,
                NoticeKind.REPUTATION_WARNING,
                key,
                f"Warning: {breach.name} over {breach.window}",
                f"Your {breach.describe()}; past "
                f"{getattr(self._settings, breach.metric + '_suspend'):.2%} sending is suspended.",
            )
        )

    def _raise(self, notice: Notice) -> None:
        try:
            self._notify(notice)
        except Exception:  # raising a notice never fails the caller
            log.exception("notice %s could not be raised", notice.dedupe_key)


def events_sink(engine: Engine, settings: ReputationSettings, notify: Notify) -> EventSink:
    """The reputation ``EventSink``: re-judge the accounts of the hard bounces and
    complaints just stored."""
    reviewer = Reviewer(engine, settings, notify)

    def sink(events: Sequence[AccountEvent]) -> None:
        for account_id in sorted({e.account_id for e in events if _counts(e)}):
            try:
                reviewer.review(account_id)
            except Exception:
                log.exception("reputation of account %d not judged", account_id)

    return sink
