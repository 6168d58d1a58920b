"""The Prometheus counters that mirror the ledger, and the other observers of the path.

``Counters`` is what the composition root (``relay.app``) hands to the
spool, the delivery worker, the SMTP handler and the paused-mail sweeper as
their callbacks. The recipient and message counters are the ledger's
numbers: each is counted after the transaction that wrote the same rows
committed, from what that transaction wrote, so ``relay_recipients_total``
and the usage report agree.

The SMTP handler's and the spool's records are read through protocols: this
layer sits below both and imports neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import Engine, select

from relay.accounting.ledger import FAILED, SUPPRESSED, accepted_events
from relay.core.metrics import Metrics
from relay.core.outcomes import Claimed, MessageState, Outcome, Recorded
from relay.store.models import Account

# (message id, account id, kind, event, n): what finishing paused mail added to the ledger
FinishedRows = Sequence[tuple[str, int, str, str, int]]


class SmtpResult(Protocol):
    """The SMTP handler's record of one message (``relay.smtp.handler.Accepted``)."""

    @property
    def queue_id(self) -> str | None: ...
    @property
    def state(self) -> str: ...
    @property
    def seconds(self) -> float: ...


class Spooled(Protocol):
    """A message the spool committed (``relay.queue.spool.Acceptance``)."""

    @property
    def account_name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def recipients(self) -> list[tuple[str, str]]: ...
    @property
    def suppressed(self) -> list[tuple[str, str, str]]: ...


class Counters:
    """The metrics side of accounting: one per process, wired by ``relay.app``."""

    def __init__(self, metrics: Metrics, engine: Engine) -> None:
        self.metrics = metrics
        self._engine = engine

    def observe(self, event: SmtpResult) -> None:
        """The end of one SMTP transaction: its latency and reply code."""
        self.metrics.accept_duration.observe(event.seconds)
        code = "250" if event.queue_id else "550" if event.state == "rejected" else "451"
        self.metrics.smtp_replies.labels(code).inc()
        if event.state == "tempfail":
            self.metrics.spool_healthy.set(0)

    def count_accepted(self, batch: Sequence[Spooled]) -> None:
        """After the spool's commit: the same numbers as the ledger's accepted rows."""
        m = self.metrics
        m.spool_healthy.set(1)
        for acc in batch:
            m.message_bytes.inc(len(acc.data))
            for event in accepted_events(acc.state == MessageState.DROPPED):
                m.messages.labels(acc.account_name, event).inc()
                for _, kind in acc.recipients:
                    m.recipients.labels(acc.account_name, kind, event).inc()
            for _, kind, _ in acc.suppressed:
                m.recipients.labels(acc.account_name, kind, SUPPRESSED).inc()

    def count_outcome(self, msg: Claimed, outcome: Outcome, recorded: Recorded) -> None:
        m = self.metrics
        for attempt in outcome.attempts:
            m.delivery_attempts.labels(attempt.provider, attempt.transport, attempt.result).inc()
            m.delivery_duration.observe(attempt.duration)
        if outcome.fell_back:
            m.provider_fallbacks.labels(outcome.attempts[-1].provider).inc()
        # The ledger's outcome rows, as written in the same transaction.
        for kind, event, n in recorded.usage:
            m.recipients.labels(msg.account_name, kind, event).inc(n)
        if recorded.usage:
            m.messages.labels(msg.account_name, outcome.state).inc()

    async def count_expired(self, rows: FinishedRows) -> None:
        """Paused mail failed by the expiry sweep: the ledger rows it wrote."""
        names = await asyncio.to_thread(self._account_names)
        for _, account_id, kind, event, n in rows:
            self.metrics.recipients.labels(names.get(account_id, ""), kind, event).inc(n)
        for _, account_id in sorted({(r[0], r[1]) for r in rows}):
            self.metrics.messages.labels(names.get(account_id, ""), FAILED).inc()

    def count_auth_failure(self, listener: str) -> None:
        self.metrics.auth_failures.labels(listener).inc()

    def count_lockout(self, listener: str, scope: str) -> None:
        self.metrics.auth_lockouts.labels(listener, scope).inc()

    def _account_names(self) -> dict[int, str]:
        with self._engine.connect() as conn:
            return {i: n for i, n in conn.execute(select(Account.id, Account.name)).all()}
