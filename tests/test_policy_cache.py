"""The per-process decision cache (relay.store.generation): a change made anywhere
reaches every relay on the database through the generation counter; the cache
is bounded; the counter moves on every write that changes a decision, and on
no other."""

from __future__ import annotations

import asyncio
import datetime as dt
import smtplib
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, update

from relay.service import accounts
from relay.service.suppressions import add_suppression, remove_suppression
from relay.store.engine import make_engine, migrate
from relay.store.generation import DecisionCache
from relay.store.models import Account, Provider, Sender, Suppression
from tests.support import RelayThread, Tenant, connect, make_settings, message, seed_tenant

RCPT = "bob@example.org"


def send(relay: RelayThread, tenant: Tenant) -> tuple[int, str]:
    """One message; the reply to MAIL FROM if it refused, else DATA's."""
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, text = client.docmd("MAIL", f"FROM:<{tenant.username}>")
        if code != 250:
            return code, text.decode()
        client.docmd("RCPT", f"TO:<{RCPT}>")
        try:
            code, text = client.data(message(tenant.username, RCPT))
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        return code, text.decode()


def last_state(engine: Engine) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT state, reason FROM messages ORDER BY created_at DESC, id DESC LIMIT 1"
        ).one()
    return str(row[0]), row[1]


def generation(engine: Engine) -> int:
    return int(DecisionCache(engine, 0, 1).read_generation() or 0)


def test_a_change_through_the_service_layer_applies_to_the_next_message_of_another_relay(
    tmp_path: Path, any_db_url: str
) -> None:
    # Two relays on one database, each with its own cache; every change is made
    # by a third party (the service layer, the reputation sink's SQL), never
    # through the relay that is then asked.
    reject = {"default_unverified": "reject"}
    settings = make_settings(tmp_path / "a", any_db_url, policy=reject)
    engine = make_engine(any_db_url)
    migrate(engine)
    tenant = seed_tenant(settings, engine)
    first = RelayThread(settings).start()
    second = RelayThread(make_settings(tmp_path / "b", any_db_url, policy=reject)).start()
    try:
        for relay in (first, second):
            assert send(relay, tenant)[0] == 250
            assert send(relay, tenant)[0] == 250
        assert last_state(engine) == ("queued", None)
        assert second.relay is not None and second.relay.decisions.hits > 0  # cached path used

        # The sender no longer verified: the next message is refused (550 5.7.1).
        accounts.remove_sender(engine, tenant.domain, tenant.account)
        code, text = send(second, tenant)
        assert (code, text[:5]) == (550, "5.7.1"), text
        accounts.verify_sender(engine, tenant.domain, tenant.account)
        assert send(second, tenant)[0] == 250

        # A suppression added by the API: the next message keeps none of its mail.
        add_suppression(engine, tenant.account, RCPT)
        assert send(second, tenant)[0] == 250
        assert last_state(engine) == ("dropped", "every recipient suppressed")
        remove_suppression(engine, tenant.account, RCPT)
        assert send(second, tenant)[0] == 250
        assert last_state(engine) == ("queued", None)

        # Suspended by the reputation monitor (plain SQL, no service call):
        # refused at MAIL FROM; resumed through the service layer: accepted.
        with engine.begin() as conn:
            conn.execute(
                update(Account)
                .where(Account.name == tenant.account)
                .values(suspended_at=dt.datetime.now(dt.UTC), suspended_reason="bounces")
            )
        code, text = send(second, tenant)
        assert (code, text[:5]) == (550, "5.7.1") and "bounces" in text, text
        accounts.resume_account(engine, tenant.account)
        assert send(second, tenant)[0] == 250
        assert send(first, tenant)[0] == 250
    finally:
        first.stop()
        second.stop()
        engine.dispose()


def test_the_generation_moves_with_every_write_that_changes_a_decision(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    migrate(engine)
    try:
        before = generation(engine)
        with engine.begin() as conn:
            account = conn.execute(insert(Account).values(name="acme")).inserted_primary_key[0]
        assert generation(engine) > before
        steps = [
            (update(Account).values(unverified_policy="drop"), "policy"),
            (update(Account).values(default_provider_id=7), "route"),
            (update(Account).values(share_suppressions=True), "sharing"),
            (update(Account).values(unsubscribe=True), "unsubscribe"),
            (update(Account).values(suspended_at=dt.datetime.now(dt.UTC)), "suspended"),
            (insert(Sender).values(account_id=account, pattern="acme.test"), "sender added"),
            (update(Sender).values(verified=False), "sender unverified"),
            (
                insert(Provider).values(name="p", kind="outbox", options={}, account_id=account),
                "provider added",
            ),
            (update(Provider).values(options={"test_address": "a@acme.test"}), "provider options"),
            (update(Provider).values(domain="acme.test"), "provider domain"),
            (
                insert(Suppression).values(
                    account_id=account, address=RCPT, reason="manual", source="manual"
                ),
                "suppression added",
            ),
        ]
        for statement, what in steps:
            before = generation(engine)
            with engine.begin() as conn:
                conn.execute(statement)
            assert generation(engine) > before, what
        before = generation(engine)
        with engine.begin() as conn:  # not what the message path decides by
            conn.execute(update(Account).values(notify_url="https://example.org/hook"))
            conn.execute(update(Suppression).values(detail="noted"))
        assert generation(engine) == before
        with engine.begin() as conn:
            conn.execute(Suppression.__table__.delete())
            conn.execute(Sender.__table__.delete())
            conn.execute(Provider.__table__.delete())
        after = generation(engine)
        assert after >= before + 3
        with engine.connect() as conn:  # rolled back: no move
            conn.execute(update(Account).values(unverified_policy="pause"))
            conn.rollback()
        assert generation(engine) == after
    finally:
        engine.dispose()


def test_the_cache_is_bounded_and_forgets_on_a_move(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/relay.db")
    migrate(engine)
    try:
        cache = DecisionCache(engine, refresh=0, limit=3)

        async def scenario() -> None:
            await cache.fresh()
            epoch = cache.epoch
            for n in range(5):
                cache.put(("k", n), n, epoch)
            assert len(cache) == 3
            assert cache.get(("k", 0)) is None and cache.get(("k", 1)) is None
            assert [cache.get(("k", n)) for n in (2, 3, 4)] == [2, 3, 4]
            # A read that raced a change (taken under an older epoch) is not kept.
            with engine.begin() as conn:
                conn.execute(insert(Account).values(name="acme", unverified_policy="drop"))
            await cache.fresh()
            assert len(cache) == 0 and cache.epoch != epoch
            cache.put(("k", 9), 9, epoch)
            assert cache.get(("k", 9)) is None
            cache.put(("k", 9), 9, cache.epoch)
            assert cache.get(("k", 9)) == 9

        asyncio.run(scenario())
        # A longer refresh reads the counter once per interval, not per message.
        slow = DecisionCache(engine, refresh=3600, limit=10)

        async def seldom() -> None:
            for _ in range(5):
                await slow.fresh()
            assert slow.reads == 1

        asyncio.run(seldom())

        async def ahead() -> None:
            # Past half the interval: the read starts, the caller does not wait for it.
            slow._checked = time.monotonic() - 3600 * 0.75
            reads = slow.reads
            await slow.fresh()
            pending = slow._pending
            assert pending is not None and slow.reads == reads
            await pending
            assert slow.reads == reads + 1 and slow._pending is None
            # Past the whole interval, the caller waits for the read.
            slow._checked = time.monotonic() - 3601
            await slow.fresh()
            assert slow.reads == reads + 2

        asyncio.run(ahead())
        off = DecisionCache(engine, refresh=0, limit=0)
        off.put(("k", 1), 1, off.epoch)
        assert not off.enabled and off.get(("k", 1)) is None
    finally:
        engine.dispose()


@pytest.mark.parametrize("limit", [1])
def test_a_cache_of_one_entry_still_decides_right(
    tmp_path: Path, any_db_url: str, limit: int
) -> None:
    # Two tenants through a cache of one entry: every message evicts the other's.
    settings = make_settings(tmp_path / "a", any_db_url, policy={"cache_entries": limit})
    engine = make_engine(any_db_url)
    migrate(engine)
    one = seed_tenant(settings, engine)
    two = seed_tenant(settings, engine, name="bolt", domain="bolt.test")
    relay = RelayThread(settings).start()
    try:
        for tenant in (one, two, one, two):
            assert send(relay, tenant)[0] == 250
        assert relay.relay is not None and len(relay.relay.decisions) <= limit
    finally:
        relay.stop()
        engine.dispose()
