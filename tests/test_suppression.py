"""Suppression lists on the message path, on both databases: a suppressed
recipient among others is stored as ``suppressed`` and never sent while the
others go through the emulated provider (ledger, usage and counters say
``suppressed``, nothing charged); a message of suppressed recipients only is
dropped at once; an agency's list counts for its sub-accounts only when it
shares; ``[suppression] at_rcpt`` refuses at RCPT TO with 550 5.1.1; stored
events become suppressions (soft bounces after the limit, expiring)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, update

from relay.core.events import AccountEvent, BounceClass, EventType, ProviderEvent
from relay.core.settings import Settings, SuppressionSettings
from relay.emulator import Emulator
from relay.service import usage
from relay.store.models import Account, Event, Recipient, Suppression, Usage
from relay.suppression import lists
from relay.suppression.sink import events_sink
from tests.support import RelayThread, Tenant, connect, make_settings, message
from tests.test_delivery import route_to, send, wait_for


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


def account_id(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(Account.id).where(Account.name == name)).scalar_one())


def recipients(engine: Engine, queue_id: str) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Recipient.address, Recipient.state).where(Recipient.message_id == queue_id)
        ).all()
    return {a: s for a, s in rows}


def ledger(engine: Engine, queue_id: str) -> set[tuple[str, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Usage.kind, Usage.event, Usage.recipients).where(Usage.message_id == queue_id)
        ).all()
    return {(k, e, n) for k, e, n in rows}


def sent_to(emulator: Emulator) -> list[str]:
    out = []
    for body in emulator.sendgrid.accepted():
        for p in body["personalizations"]:
            for kind in ("to", "cc", "bcc"):
                out += [x["email"] for x in p.get(kind, [])]
    return out


def test_suppressed_recipient_is_not_sent_the_others_are(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    route_to(settings, engine, emulator, "sendgrid")
    acme = account_id(engine, "acme")
    lists.add(engine, acme, "gone@EXAMPLE.org", lists.HARD_BOUNCE, "manual", "550 no such user")
    data = message(tenant.username, to="ok@example.org, gone@example.org", cc="cc@example.org")
    queue_id = send(relay, tenant, ["ok@example.org", "gone@example.org", "cc@example.org"], data)
    wait_for(engine, queue_id, ("delivered",))
    assert sorted(sent_to(emulator)) == ["cc@example.org", "ok@example.org"]
    assert recipients(engine, queue_id) == {
        "ok@example.org": "delivered",
        "gone@example.org": "suppressed",
        "cc@example.org": "delivered",
    }
    assert ledger(engine, queue_id) == {
        ("to", "accepted", 1),
        ("cc", "accepted", 1),
        ("to", "suppressed", 1),
        ("to", "delivered", 1),
        ("cc", "delivered", 1),
    }
    report = usage.usage_report(engine, usage.Decimal("1000"), "acme")
    (line,) = report.lines
    assert line.totals.recipients == 2  # billed: the suppressed one is not
    assert line.totals.suppressed == 1
    assert line.totals.pending == 0
    assert str(report.cost(line)) == "2.0000"
    assert relay.relay is not None
    metric = relay.relay.metrics.recipients.labels("acme", "to", "suppressed")
    assert metric._value.get() == 1


def test_every_recipient_suppressed_drops_the_message(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    route_to(settings, engine, emulator, "sendgrid")
    acme = account_id(engine, "acme")
    for address in ("a@example.org", "b@example.org"):
        lists.add(engine, acme, address, lists.COMPLAINT, "manual")
    data = message(tenant.username, to="a@example.org, b@example.org")
    queue_id = send(relay, tenant, ["a@example.org", "b@example.org"], data)
    row = wait_for(engine, queue_id, ("dropped",))
    assert row.reason == "every recipient suppressed"
    assert set(recipients(engine, queue_id).values()) == {"suppressed"}
    assert ledger(engine, queue_id) == {("to", "suppressed", 2)}
    assert emulator.sendgrid.accepted() == []


def test_agency_list_counts_only_when_shared(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine
) -> None:
    agency = account_id(engine, "agency")
    lists.add(engine, agency, "x@example.org", lists.UNSUBSCRIBE, "manual")
    data = message(tenant.username, to="x@example.org")
    queue_id = send(relay, tenant, ["x@example.org"], data)
    assert recipients(engine, queue_id)["x@example.org"] != "suppressed"  # not shared
    with engine.begin() as conn:
        conn.execute(update(Account).where(Account.id == agency).values(share_suppressions=True))
    queue_id = send(relay, tenant, ["x@example.org"], data)
    assert recipients(engine, queue_id) == {"x@example.org": "suppressed"}
    with engine.connect() as conn:
        found = lists.lookup(conn, account_id(engine, "acme"), ["x@Example.ORG", "X@example.org"])
    # The domain in any case, the local part as written (RFC 5321 2.4).
    assert list(found) == ["x@Example.ORG"] and found["x@Example.ORG"].reason == "unsubscribe"


def test_expired_soft_bounce_no_longer_suppresses(
    relay: RelayThread, tenant: Tenant, engine: Engine
) -> None:
    acme = account_id(engine, "acme")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    lists.add(engine, acme, "full@example.org", lists.SOFT_BOUNCE, "event", expires_at=past)
    queue_id = send(relay, tenant, ["full@example.org"], message(tenant.username))
    assert recipients(engine, queue_id)["full@example.org"] != "suppressed"


@pytest.fixture
def rcpt_relay(
    tmp_path: Path, db_url: str, engine: Engine, tenant: Tenant
) -> Iterator[RelayThread]:
    settings = make_settings(tmp_path / "var", db_url, suppression={"at_rcpt": True})
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


def test_at_rcpt_refuses_with_550_5_1_1(
    rcpt_relay: RelayThread, tenant: Tenant, engine: Engine
) -> None:
    acme = account_id(engine, "acme")
    lists.add(engine, acme, "gone@example.org", lists.HARD_BOUNCE, "manual")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    with connect(rcpt_relay, "submission", login=(tenant.username, tenant.password)) as client:
        client.docmd("MAIL", f"FROM:<{tenant.username}>")
        code, text = client.docmd("RCPT", "TO:<gone@EXAMPLE.ORG>")
        assert code == 550
        assert text.decode().startswith("5.1.1 ")
        assert "hard_bounce" in text.decode() and today in text.decode()
        assert client.docmd("RCPT", "TO:<ok@example.org>")[0] == 250
        code, _ = client.data(message(tenant.username, to="ok@example.org"))
        assert code == 250


# -- the event sink ---------------------------------------------------------------


def _event(
    engine: Engine,
    account: int,
    n: int,
    type_: EventType,
    address: str,
    bounce: BounceClass | None = None,
    at: dt.datetime | None = None,
) -> AccountEvent:
    """An event as the webhook receiver stores it, then hands it to the sinks."""
    at = at or dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        row_id = conn.execute(
            insert(Event).returning(Event.id),
            {
                "provider_id": 1,
                "provider_event_id": f"ev-{n}",
                "account_id": account,
                "address": address,
                "type": type_,
                "bounce_class": bounce,
                "at": at,
            },
        ).scalar_one()
    event = ProviderEvent(f"ev-{n}", type_, address, at, bounce_class=bounce, detail="550 5.1.1")
    return AccountEvent(int(row_id), account, 1, event)


def entries(engine: Engine, account: int) -> dict[str, str]:
    return {e.address: e.reason for e in lists.entries(engine, account)[0]}


def test_sink_turns_events_into_suppressions(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    acme = account_id(engine, "acme")
    sink = events_sink(engine, settings)
    sink(
        [
            _event(engine, acme, 1, EventType.BOUNCE, "hard@example.org", BounceClass.HARD),
            _event(engine, acme, 2, EventType.COMPLAINT, "spam@example.org"),
            _event(engine, acme, 3, EventType.UNSUBSCRIBE, "bye@example.org"),
            _event(engine, acme, 4, EventType.OPEN, "open@example.org"),
            _event(engine, acme, 5, EventType.DELIVERED, "fine@example.org"),
        ]
    )
    assert entries(engine, acme) == {
        "hard@example.org": "hard_bounce",
        "spam@example.org": "complaint",
        "bye@example.org": "unsubscribe",
    }
    # A stronger reason replaces a weaker one; a weaker one changes nothing.
    sink([_event(engine, acme, 6, EventType.COMPLAINT, "hard@example.org")])
    sink([_event(engine, acme, 7, EventType.BOUNCE, "spam@example.org", BounceClass.HARD)])
    assert entries(engine, acme)["hard@example.org"] == "complaint"
    assert entries(engine, acme)["spam@example.org"] == "complaint"


def test_soft_bounces_suppress_after_the_limit_in_a_row_and_expire(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    acme = account_id(engine, "acme")
    sink = events_sink(engine, SuppressionSettings(soft_bounce_limit=3, soft_bounce_ttl=3600))
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    soft = BounceClass.SOFT
    at = [t0 + dt.timedelta(minutes=i) for i in range(10)]
    sink([_event(engine, acme, 1, EventType.BOUNCE, "full@example.org", soft, at[0])])
    sink([_event(engine, acme, 2, EventType.BOUNCE, "full@example.org", soft, at[1])])
    # A delivery in between starts the count again.
    sink([_event(engine, acme, 3, EventType.DELIVERED, "full@example.org", None, at[2])])
    sink([_event(engine, acme, 4, EventType.BOUNCE, "full@EXAMPLE.org", soft, at[3])])
    sink([_event(engine, acme, 5, EventType.BOUNCE, "full@example.org", soft, at[4])])
    assert entries(engine, acme) == {}
    sink([_event(engine, acme, 6, EventType.BOUNCE, "full@example.org", soft, at[5])])
    (entry,) = lists.entries(engine, acme)[0]
    assert entry.reason == "soft_bounce" and entry.expires_at is not None
    assert entry.expires_at > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=50)
    # Once expired it no longer counts, and is not listed.
    with engine.begin() as conn:
        conn.execute(update(Suppression).values(expires_at=t0))
    with engine.connect() as conn:
        assert lists.lookup(conn, acme, ["full@example.org"]) == {}
    assert entries(engine, acme) == {}
    # A hard bounce then replaces the expired row.
    sink([_event(engine, acme, 7, EventType.BOUNCE, "full@example.org", BounceClass.HARD)])
    assert entries(engine, acme) == {"full@example.org": "hard_bounce"}
