"""The spool and the queue table on both engines: group commit, claims that never
overlap, leases that expire, outcomes written once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from relay.core.errors import SpoolError
from relay.core.outcomes import Attempt, Outcome
from relay.queue import store
from relay.queue.spool import Acceptance, Spool, new_queue_id, write_batch
from relay.store.engine import make_engine, migrate
from relay.store.models import Account, Message, Recipient, Usage


@pytest.fixture
def db(any_db_url: str) -> Iterator[Engine]:
    engine = make_engine(any_db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            Account.__table__.insert().values(id=1, name="acme", created_at=dt.datetime.now(dt.UTC))
        )
    yield engine
    engine.dispose()


def acceptance(n: int = 0, state: str = "queued") -> Acceptance:
    return Acceptance(
        account_id=1,
        mail_from="a@acme.test",
        state=state,
        data=f"Subject: {n}\r\n\r\nbody\r\n".encode(),
        provider_id=None,
        recipients=[("to@example.org", "to"), ("cc@example.org", "cc"), ("bcc@example.org", "bcc")],
    )


def usage(engine: Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Usage.kind, Usage.event, func.sum(Usage.recipients)).group_by(
                Usage.kind, Usage.event
            )
        ).all()
    return {(k, e): int(n) for k, e, n in rows}


def test_queue_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_queue_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids[0][:10] <= ids[-1][:10]


async def test_group_commit_shares_transactions(db: Engine) -> None:
    spool = Spool(db, lifetime=3600)
    ids = await asyncio.gather(*(spool.accept(acceptance(i)) for i in range(50)))
    await spool.aclose()
    assert len(set(ids)) == 50
    assert spool.batches < 50  # later arrivals joined the commit in progress
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Message)).scalar_one() == 50
    assert usage(db) == {("to", "accepted"): 50, ("cc", "accepted"): 50, ("bcc", "accepted"): 50}


async def test_a_failed_commit_fails_every_waiter(db: Engine) -> None:
    spool = Spool(db, lifetime=3600)
    first = acceptance()
    await spool.accept(first)
    clash = acceptance()
    clash.queue_id = first.queue_id  # primary key conflict: the batch cannot commit
    results = await asyncio.gather(
        spool.accept(clash), spool.accept(acceptance()), return_exceptions=True
    )
    await spool.aclose()
    assert isinstance(results[0], SpoolError)
    assert str(results[0].reply).startswith("451 4.3.0")
    with pytest.raises(SpoolError):
        await spool.accept(acceptance())  # closed


def test_dropped_messages_are_counted_as_dropped(db: Engine) -> None:
    write_batch(db, [acceptance(state="dropped")], 3600)
    assert usage(db)[("bcc", "dropped")] == 1
    assert store.claim(db, "w1", 10, 60) == []  # never delivered


def test_claims_never_overlap_and_leases_expire(db: Engine) -> None:
    write_batch(db, [acceptance(i) for i in range(10)], 3600)
    first = store.claim(db, "w1", 6, lease=60)
    second = store.claim(db, "w2", 6, lease=60)
    assert len(first) == 6 and len(second) == 4
    assert not {m.id for m in first} & {m.id for m in second}
    assert store.claim(db, "w3", 6, lease=60) == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    reclaimed = store.claim(db, "w3", 20, lease=60, now=later)
    assert len(reclaimed) == 10  # a dead worker's messages come back
    # The first claimers lost their leases: their outcomes are not written.
    assert not store.record(db, first[0], Outcome("delivered", []))


def test_a_claim_racing_another_takes_nothing_the_other_took(db: Engine) -> None:
    """SQLite has no SKIP LOCKED: two processes can read the same due rows. Here
    another process claims between this claim's read and its write; the write
    must not take over what the other holds (it did: both delivered the
    messages, and the second outcome broke on the usage ledger's uniqueness).
    On PostgreSQL the other claim skips the rows this one has locked."""
    theirs = make_engine(str(db.url.render_as_string(hide_password=False)))
    write_batch(db, [acceptance(i) for i in range(5)], 3600)
    raced: list[list[Any]] = []

    def meanwhile(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        selecting = statement.lstrip().upper().startswith("SELECT")
        if selecting and "FROM messages" in statement and not raced:
            raced.append(store.claim(theirs, "other-process", 10, lease=60))

    event.listen(db, "after_cursor_execute", meanwhile)
    try:
        taken = store.claim(db, "this-process", 10, lease=60)
    finally:
        event.remove(db, "after_cursor_execute", meanwhile)
        theirs.dispose()
    ours, other = {m.id for m in taken}, {m.id for m in raced[0]}
    assert not ours & other
    assert len(ours | other) == 5


def test_outcome_counts_once_and_partial_delivery_keeps_state(db: Engine) -> None:
    write_batch(db, [acceptance()], 3600)
    (msg,) = store.claim(db, "w1", 1, 60)
    to, cc, bcc = (rid for rid, _, _ in msg.recipients)
    attempt = Attempt("p", "api", "partial", 0.01, "250", "ok")
    later = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert store.record(
        db,
        msg,
        Outcome(
            "deferred", [attempt], delivered=[to, cc], next_attempt_at=later, reason="one deferred"
        ),
    )
    (again,) = store.claim(db, "w2", 1, 60)
    assert [a for _, a, _ in again.recipients] == ["bcc@example.org"]  # never re-sent
    assert store.record(db, again, Outcome("delivered", [attempt], delivered=[bcc]))
    assert usage(db) == {
        ("to", "accepted"): 1,
        ("cc", "accepted"): 1,
        ("bcc", "accepted"): 1,
        ("to", "delivered"): 1,
        ("cc", "delivered"): 1,
        ("bcc", "delivered"): 1,
    }
    with db.connect() as conn:
        states = set(conn.execute(select(Recipient.state)).scalars())
        tries = conn.execute(select(Message.attempts)).scalar_one()
    assert states == {"delivered"} and tries == 2


def test_failed_message_fails_its_pending_recipients(db: Engine) -> None:
    write_batch(db, [acceptance()], 3600)
    (msg,) = store.claim(db, "w1", 1, 60)
    assert store.record(db, msg, Outcome("failed", [], reason="expired"))
    assert usage(db)[("to", "failed")] == 1
    counts = store.queue_counts(db)
    assert counts["failed"] == 1 and counts["queued"] == 0


def test_release_lease_gives_messages_back(db: Engine) -> None:
    write_batch(db, [acceptance(i) for i in range(3)], 3600)
    assert len(store.claim(db, "w1", 10, 600)) == 3
    assert store.release_lease(db, "w1") == 3
    assert len(store.claim(db, "w2", 10, 600)) == 3


def test_outcomes_share_a_transaction_but_a_lost_lease_skips_only_its_message(
    db: Engine,
) -> None:
    write_batch(db, [acceptance(i) for i in range(3)], 3600)
    first, second, third = store.claim(db, "w1", 3, lease=60)
    second.token = "someone-else"  # as if its lease had been taken over
    results = store.record_many(
        db,
        [
            (m, Outcome("delivered", [], delivered=[rid for rid, _, _ in m.recipients]))
            for m in (first, second, third)
        ],
    )
    assert [r is not None for r in results] == [True, False, True]
    assert store.queue_counts(db)["delivered"] == 2
