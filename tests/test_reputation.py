"""Reputation: rates over rolling windows above a volume floor, warnings and
suspensions raised once, a suspended account refused at MAIL FROM by a real
SMTP client (or its mail held), resume by the CLI and the API (audited,
scoped), and the gauges."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sqlalchemy import Engine, insert, select, update

from relay.cli import main
from relay.core.errors import ConfigError
from relay.core.events import (
    AccountEvent,
    BounceClass,
    EventType,
    Notice,
    NoticeKind,
    ProviderEvent,
)
from relay.core.metrics import Metrics
from relay.core.settings import ReputationSettings, Settings
from relay.reputation.gauges import ReputationGauges
from relay.reputation.judge import SUSPEND, WARN, judge
from relay.reputation.rates import account_rates
from relay.reputation.sink import events_sink
from relay.service import accounts
from relay.store.models import Account, AuditEntry, Event, Message, Usage
from tests.api_support import Api, World, api_settings, build_world, error
from tests.support import (
    RelayThread,
    Tenant,
    connect,
    fresh_engine,
    make_settings,
    message,
    seed_tenant,
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
_ids = itertools.count(1)


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


def account_id(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(Account.id).where(Account.name == name)).scalar_one())


def delivered(engine: Engine, account: int, n: int, ago: dt.timedelta) -> None:
    """A finished message and its ledger row: ``n`` recipients delivered ``ago``."""
    at = NOW - ago
    mid = f"rep{next(_ids):012d}"
    with engine.begin() as conn:
        conn.execute(
            insert(Message).values(
                id=mid,
                account_id=account,
                mail_from="app@acme.test",
                state="delivered",
                size=100,
                created_at=at,
                next_attempt_at=at,
                expires_at=at + dt.timedelta(days=5),
                finished_at=at,
            )
        )
        conn.execute(
            insert(Usage).values(
                account_id=account,
                day=at.date(),
                message_id=mid,
                kind="to",
                event="delivered",
                recipients=n,
            )
        )


def events(
    engine: Engine,
    account: int,
    n: int,
    ago: dt.timedelta,
    kind: EventType = EventType.BOUNCE,
    bounce: BounceClass | None = BounceClass.HARD,
) -> list[AccountEvent]:
    """``n`` stored events, as the webhook listener stores them, and what its sinks get."""
    out = []
    with engine.begin() as conn:
        for _ in range(n):
            eid = f"ev-{next(_ids)}"
            pe = ProviderEvent(eid, kind, "x@example.org", NOW - ago, bounce_class=bounce)
            row = conn.execute(
                insert(Event)
                .values(
                    provider_id=1,
                    provider_event_id=eid,
                    account_id=account,
                    address=pe.address,
                    type=kind,
                    bounce_class=bounce if kind == EventType.BOUNCE else None,
                    at=pe.at,
                )
                .returning(Event.id)
            ).scalar_one()
            out.append(AccountEvent(int(row), account, 1, pe))
    return out


@pytest.fixture
def world_engine(tmp_path: Path, db_url: str) -> Iterator[tuple[Settings, Engine, Tenant]]:
    settings = make_settings(tmp_path / "var", db_url)
    engine = fresh_engine(settings)
    tenant = seed_tenant(settings, engine)
    yield settings, engine, tenant
    engine.dispose()


# -- rates -------------------------------------------------------------------------


def test_rates_count_each_window_and_only_what_counts(
    world_engine: tuple[Settings, Engine, Tenant],
) -> None:
    _, engine, tenant = world_engine
    acme = account_id(engine, tenant.account)
    hour, day = dt.timedelta(hours=1), dt.timedelta(days=1)
    delivered(engine, acme, 600, 2 * hour)
    delivered(engine, acme, 400, 3 * day)
    delivered(engine, acme, 999, 8 * day)  # outside both windows
    events(engine, acme, 30, hour)
    events(engine, acme, 5, hour, bounce=BounceClass.SOFT)  # soft bounces do not count
    events(engine, acme, 10, 2 * day)
    events(engine, acme, 1, hour, EventType.COMPLAINT, None)
    events(engine, acme, 3, hour, EventType.OPEN, None)
    events(engine, acme, 50, 9 * day)
    with engine.connect() as conn:
        day_rates, week_rates = account_rates(conn, acme, NOW)
        # Counted afresh from a resume 90 minutes ago: the 600 and the 30 remain.
        resumed = account_rates(conn, acme, NOW, NOW - 90 * dt.timedelta(minutes=1))
    assert (day_rates.window, day_rates.delivered) == ("24h", 600)
    assert (day_rates.hard_bounces, day_rates.complaints) == (30, 1)
    assert day_rates.bounce_rate == pytest.approx(0.05)
    assert (week_rates.window, week_rates.delivered) == ("7d", 1000)
    assert (week_rates.hard_bounces, week_rates.complaints) == (40, 1)
    assert week_rates.complaint_rate == pytest.approx(0.001)
    assert [(r.delivered, r.hard_bounces) for r in resumed] == [(0, 30), (0, 30)]


def test_the_volume_floor_and_the_thresholds() -> None:
    from relay.reputation.rates import Rates

    settings = ReputationSettings()
    assert judge([Rates("24h", 499, 499, 499)], settings) == []  # too little to judge
    assert judge([Rates("24h", 500, 24, 0)], settings) == []
    (warn,) = judge([Rates("24h", 500, 25, 0)], settings)
    assert (warn.level, warn.metric, warn.limit) == (WARN, "bounce", 0.05)
    found = judge([Rates("24h", 1000, 60, 0), Rates("7d", 1000, 0, 3)], settings)
    assert [(b.level, b.metric, b.window) for b in found] == [
        (SUSPEND, "complaint", "7d"),
        (WARN, "bounce", "24h"),
    ]
    assert found[0].describe() == (
        "complaint rate 0.30% over 7d (1000 delivered) reached the limit of 0.30%"
    )


def test_thresholds_are_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bounce_warn must not be above"):
        make_settings(tmp_path, reputation={"bounce_warn": 0.2})
    with pytest.raises(ConfigError, match="suspend_action"):
        make_settings(tmp_path, reputation={"suspend_action": "drop"})
    with pytest.raises(ConfigError, match="complaint_suspend"):
        make_settings(tmp_path, reputation={"complaint_suspend": 1.5})


# -- the sink: warnings and suspensions, once ------------------------------------------


def test_warning_then_suspension_each_raised_once(
    world_engine: tuple[Settings, Engine, Tenant],
) -> None:
    settings, engine, tenant = world_engine
    acme = account_id(engine, tenant.account)
    raised: list[Notice] = []
    sink = events_sink(engine, settings.reputation, raised.append)
    delivered(engine, acme, 1000, dt.timedelta(hours=1))
    sink(events(engine, acme, 30, dt.timedelta(minutes=5)))  # 3%: nothing yet
    assert raised == []
    sink(events(engine, acme, 30, dt.timedelta(minutes=5)))  # 6%: a warning per window
    sink(events(engine, acme, 1, dt.timedelta(minutes=5)))  # still 6%: said already
    sink(events(engine, acme, 3, dt.timedelta(minutes=5), EventType.OPEN, None))
    assert [(n.kind, n.dedupe_key.split(":")[2:4]) for n in raised] == [
        (NoticeKind.REPUTATION_WARNING, ["bounce", "24h"]),
        (NoticeKind.REPUTATION_WARNING, ["bounce", "7d"]),
    ]
    assert all(n.account_id == acme for n in raised)
    assert raised[0].subject == "Warning: hard-bounce rate over 24h"
    raised.clear()
    sink(events(engine, acme, 40, dt.timedelta(minutes=5)))  # 10.1%: suspended
    sink(events(engine, acme, 5, dt.timedelta(minutes=5)))
    assert [n.kind for n in raised] == [NoticeKind.SUSPENDED]
    assert "hard-bounce rate 10.10% over 24h" in raised[0].detail
    with engine.connect() as conn:
        at, reason = conn.execute(
            select(Account.suspended_at, Account.suspended_reason).where(Account.id == acme)
        ).one()
    assert at is not None
    assert reason == "hard-bounce rate 10.10% over 24h (1000 delivered) reached the limit of 10.00%"


def test_complaints_suspend_and_a_failing_notify_changes_nothing(
    world_engine: tuple[Settings, Engine, Tenant],
) -> None:
    settings, engine, tenant = world_engine
    acme = account_id(engine, tenant.account)

    def broken(notice: Notice) -> None:
        raise RuntimeError("the notifications service is down")

    sink = events_sink(engine, settings.reputation, broken)
    delivered(engine, acme, 1000, dt.timedelta(days=2))
    sink(events(engine, acme, 3, dt.timedelta(days=1), EventType.COMPLAINT, None))
    with engine.connect() as conn:
        reason = conn.execute(select(Account.suspended_reason).where(Account.id == acme))
        assert "complaint rate 0.30% over 7d" in str(reason.scalar_one())


# -- the SMTP front ---------------------------------------------------------------


def suspend(engine: Engine, name: str, reason: str = "hard-bounce rate 12.00% over 24h") -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Account)
            .where(Account.name == name)
            .values(suspended_at=NOW, suspended_reason=reason)
        )


def test_a_suspended_account_is_refused_at_mail_from(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path / "var", db_url)
    engine = fresh_engine(settings)
    tenant = seed_tenant(settings, engine)
    relay = RelayThread(settings, engine).start()
    try:
        login = (tenant.username, tenant.password)
        with connect(relay, "submission", login=login) as client:
            suspend(engine, tenant.account)  # after AUTH: seen at the next MAIL
            code, text = client.mail(f"app@{tenant.domain}")
            assert code == 550
            assert text.decode() == (
                "5.7.1 Account suspended: hard-bounce rate 12.00% over 24h; contact your provider"
            )
            accounts.resume_account(engine, tenant.account)
            sender = f"app@{tenant.domain}"
            client.rset()
            assert client.sendmail(sender, ["bob@example.org"], message(sender)) == {}
    finally:
        relay.stop()
        engine.dispose()


def test_pause_mode_holds_the_mail_and_resume_releases_it(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(
        tmp_path / "var",
        db_url,
        reputation={"suspend_action": "pause"},
        queue={"workers": False},
    )
    engine = fresh_engine(settings)
    tenant = seed_tenant(settings, engine)
    suspend(engine, tenant.account)
    relay = RelayThread(settings, engine).start()
    try:
        sender = f"app@{tenant.domain}"
        with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
            assert client.sendmail(sender, ["bob@example.org"], message(sender)) == {}
        with engine.connect() as conn:
            mid, state, reason = conn.execute(
                select(Message.id, Message.state, Message.reason)
            ).one()
        assert state == "paused"
        assert reason == "account suspended: hard-bounce rate 12.00% over 24h"
        done = accounts.resume_account(engine, tenant.account)
        assert done.was_suspended and done.released == [mid]
        with engine.connect() as conn:
            assert conn.execute(select(Message.state)).scalar_one() == "queued"
    finally:
        relay.stop()
        engine.dispose()


def test_a_suspension_after_mail_from_is_refused_at_data(
    world_engine: tuple[Settings, Engine, Tenant],
) -> None:
    settings, engine, tenant = world_engine
    relay = RelayThread(settings, engine).start()
    try:
        sender = f"app@{tenant.domain}"
        with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
            assert client.mail(sender)[0] == 250
            assert client.rcpt("bob@example.org")[0] == 250
            suspend(engine, tenant.account)
            code, text = client.data(message(sender))
        assert (code, text.decode().split(" ")[0]) == (550, "5.7.1")
        with engine.connect() as conn:
            assert conn.execute(select(Message.id)).first() is None
    finally:
        relay.stop()


# -- resume: the CLI and the API ------------------------------------------------------


def test_resume_by_the_cli_is_audited(
    tmp_path: Path,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", db_url)
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert main(["account", "create", "agency"]) == 0
    assert main(["account", "create", "shop", "--agency", "agency"]) == 0
    engine = fresh_engine(make_settings(tmp_path / "var", db_url))
    suspend(engine, "shop")
    capsys.readouterr()
    assert main(["account", "list", "--suspended"]) == 0
    out = capsys.readouterr().out
    assert "SUSPENDED" in out and "hard-bounce rate 12.00% over 24h" in out
    assert len(out.splitlines()) == 2  # the header and shop: the agency is not suspended
    assert main(["account", "resume", "shop"]) == 0
    assert capsys.readouterr().out == "resumed account shop: new mail is accepted\n"
    assert main(["account", "resume", "nobody"]) == 1
    assert "does not exist" in capsys.readouterr().err
    with engine.connect() as conn:
        row = conn.execute(
            select(Account.suspended_at, Account.reputation_since).where(Account.name == "shop")
        ).one()
        audit = conn.execute(
            select(AuditEntry.action, AuditEntry.actor, AuditEntry.result)
            .where(AuditEntry.action == "account.resume")
            .order_by(AuditEntry.id)
        ).all()
    assert row[0] is None and row[1] is not None
    assert [tuple(a) for a in audit] == [
        ("account.resume", "operator", "ok"),
        ("account.resume", "operator", "not_found"),
    ]
    engine.dispose()


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Iterator[tuple[RelayThread, World, Engine]]:
    settings = api_settings(tmp_path / "var", db_url)
    engine = fresh_engine(settings)
    world = build_world(settings, engine)
    relay = RelayThread(settings, engine).start()
    yield relay, world, engine
    relay.stop()
    engine.dispose()


def test_resume_by_the_api_is_scoped_and_audited(
    served: tuple[RelayThread, World, Engine],
) -> None:
    relay, world, engine = served
    suspend(engine, "a-one")
    own, other, agency = (Api(relay, world[n].token) for n in ("a-one", "agency-b", "agency-a"))
    try:
        shown = own.get("/accounts/a-one").json()
        assert shown["suspended_reason"] == "hard-bounce rate 12.00% over 24h"
        assert shown["suspended_at"] is not None
        refused = own.post("/accounts/a-one/resume")
        assert refused.status_code == 403 and "agency or the operator" in error(refused)["message"]
        hidden = other.post("/accounts/a-one/resume")
        assert hidden.status_code == 404
        assert error(hidden)["message"] == "account 'a-one' does not exist"
        done = agency.post("/accounts/a-one/resume")
        assert done.status_code == 200, done.text
        assert done.json()["was_suspended"] is True
        # the paused message of the world was paused for its sender, not by suspension
        assert done.json()["released"] == []
        shown = own.get("/accounts/a-one").json()
        assert shown["suspended_at"] is None and shown["suspended_reason"] is None
    finally:
        for api in (own, other, agency):
            api.close()
    with engine.connect() as conn:
        audit = conn.execute(
            select(AuditEntry.actor, AuditEntry.result).where(AuditEntry.action == "account.resume")
        ).all()
    assert [r[1] for r in audit] == ["forbidden", "not_found", "ok"], audit


# -- gauges ------------------------------------------------------------------------


def test_gauges_show_rates_and_suspension(world_engine: tuple[Settings, Engine, Tenant]) -> None:
    _, engine, tenant = world_engine
    acme = account_id(engine, tenant.account)
    delivered(engine, acme, 1000, dt.timedelta(hours=1))
    delivered(engine, acme, 400, dt.timedelta(days=3))
    events(engine, acme, 60, dt.timedelta(minutes=5))
    events(engine, acme, 7, dt.timedelta(days=2), EventType.COMPLAINT, None)
    metrics = Metrics()
    gauges = ReputationGauges(engine, metrics, min_volume=1200)  # 24h: 1000, not judged
    gauges.refresh()
    text = generate_latest(metrics.registry).decode()
    assert 'relay_account_bounce_rate{account="acme",window="24h"} 0.0' in text
    assert 'relay_account_bounce_rate{account="acme",window="7d"} 0.042857' in text
    assert 'relay_account_complaint_rate{account="acme",window="7d"} 0.005' in text
    assert 'relay_account_suspended{account="acme"} 0.0' in text
    suspend(engine, "acme")
    gauges.refresh()
    text = generate_latest(metrics.registry).decode()
    assert 'relay_account_suspended{account="acme"} 1.0' in text


def test_resume_prints_the_same_locally_and_remotely(
    served: tuple[RelayThread, World, Engine],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay, world, engine = served
    assert relay.relay is not None
    settings = relay.settings
    monkeypatch.setenv("RELAY_DATABASE_URL", settings.database.url)
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(settings.var_path))
    for key in ("RELAY_CONFIG", "RELAY_URL", "RELAY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    remote = ["--url", f"http://127.0.0.1:{relay.relay.admin_port}", "--token", world.operator]
    suspend(engine, "a-one")
    suspend(engine, "a-two")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("account", "list", "--suspended") == run(*remote, "account", "list", "--suspended")
    local = run("account", "resume", "a-one")
    assert local == (0, "resumed account a-one: new mail is accepted\n", "")
    assert run(*remote, "account", "resume", "a-two") == (
        0,
        "resumed account a-two: new mail is accepted\n",
        "",
    )
