"""The usage ledger's rows: built here, written inside the caller's transaction.

The ledger (``relay.store.models.Usage``) is append-only, one row per
(message, class, event), with a unique key: an event written twice fails
instead of counting twice, whatever retries, restarts or nodes do. Two moments
write it, and both call this module from their own transaction:

- the spool (``relay.queue.spool``): ``accepted`` rows with the message, plus
  ``dropped`` ones for a message dropped at once (``accepted_rows``), and
  ``suppressed`` ones for recipients on the account's suppression list
  (``suppressed_rows``): those are not ``accepted``, so never charged, and
  their recipient rows stay ``suppressed``, which the outcome does not count
  again;
- the end of a message (``relay.queue.store`` for a delivery outcome,
  ``relay.queue.held`` for paused mail discarded or expired): one outcome row
  per class and outcome (``write_outcome``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, bindparam, insert, text

from relay.core.outcomes import RecipientState
from relay.store.models import Usage

ACCEPTED, DELIVERED, FAILED, DROPPED = "accepted", "delivered", "failed", "dropped"
SUPPRESSED = "suppressed"
# A recipient still pending when its message finishes has failed with it.
_OUTCOME_OF_STATE = {
    RecipientState.DELIVERED: DELIVERED,
    RecipientState.FAILED: FAILED,
    RecipientState.DROPPED: DROPPED,
    RecipientState.PENDING: FAILED,
}

# Suppressed recipients were counted with the message (``suppressed_rows``).
_USAGE = insert(Usage)


def _row(
    account_id: int, day: dt.date, message_id: str, kind: str, event: str, n: int
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "day": day,
        "message_id": message_id,
        "kind": kind,
        "event": event,
        "recipients": n,
    }


def accepted_events(dropped: bool) -> list[str]:
    """The events of an acceptance: ``accepted``, and ``dropped`` when dropped at once."""
    return [ACCEPTED, DROPPED] if dropped else [ACCEPTED]


def accepted_rows(
    message_id: str, account_id: int, kinds: Iterable[str], dropped: bool, day: dt.date
) -> list[dict[str, Any]]:
    """The rows the spool writes with a message: per class, ``accepted`` (and ``dropped``)."""
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return [
        _row(account_id, day, message_id, kind, event, n)
        for event in accepted_events(dropped)
        for kind, n in sorted(counts.items())
    ]


def suppressed_rows(
    message_id: str, account_id: int, kinds: Iterable[str], day: dt.date
) -> list[dict[str, Any]]:
    """Per class, the ``suppressed`` row the spool writes with the message (none if none)."""
    counts = Counter(kinds)
    return [
        _row(account_id, day, message_id, kind, SUPPRESSED, n) for kind, n in sorted(counts.items())
    ]


def write_outcome(
    conn: Connection, message_id: str, account_id: int, day: dt.date
) -> list[tuple[str, str, int]]:
    """Count each finished recipient once, by class and outcome (the ledger's key).

    Runs in the transaction that finishes the message, under our lease; the
    ledger's unique key turns a second finish into an error, never a double count.
    """
    return write_outcomes(conn, [(message_id, account_id)], day).get(message_id, [])


# Suppressed recipients were counted with the message (``suppressed_rows``).
_COUNTS_MANY = text(
    "SELECT message_id, kind, state, COUNT(*) FROM recipients "
    "WHERE message_id IN :ids AND state <> 'suppressed' GROUP BY message_id, kind, state"
).bindparams(bindparam("ids", expanding=True))


def write_outcomes(
    conn: Connection, finished: list[tuple[str, int]], day: dt.date
) -> dict[str, list[tuple[str, str, int]]]:
    """``write_outcome`` for several (message id, account id) at once: one count
    query and one insert for a batch of outcomes, not two statements each."""
    if not finished:
        return {}
    counts: dict[str, Counter[tuple[str, str]]] = {mid: Counter() for mid, _ in finished}
    for mid, kind, state, n in conn.execute(_COUNTS_MANY, {"ids": list(counts)}).all():
        counts[mid][(kind, _OUTCOME_OF_STATE[state])] += int(n)
    written: dict[str, list[tuple[str, str, int]]] = {}
    rows: list[dict[str, Any]] = []
    for mid, account_id in finished:
        mine = sorted((kind, event, n) for (kind, event), n in counts[mid].items())
        written[mid] = mine
        rows.extend(_row(account_id, day, mid, kind, event, n) for kind, event, n in mine)
    if rows:
        conn.execute(_USAGE, rows)
    return written
