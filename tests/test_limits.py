"""Account and credential limits: rates, the daily quota and concurrent sessions,
over real SMTP; across two relays on one database (two nodes); the replies, the
counter, the gauge; who may set them, and agency ceilings."""

from __future__ import annotations

import asyncio
import datetime as dt
import smtplib
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from relay.core.errors import Conflict, Invalid, OperatorOnly
from relay.core.limits import parse_spec
from relay.core.metrics import Metrics
from relay.core.settings import Settings
from relay.limits.leases import lease_size
from relay.limits.usage import refresh_gauges
from relay.service import limits, scope
from relay.store.models import Account, LimitCounter, Message
from tests.support import (
    RelayThread,
    Tenant,
    client_context,
    connect,
    make_settings,
    message,
    seed_tenant,
)


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


def send(relay: RelayThread, tenant: Tenant, n: int, rcpts: int = 1) -> list[str]:
    """Send ``n`` messages in one session; the reply to each MAIL FROM (or the queue reply)."""
    replies = []
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        for i in range(n):
            code, text_ = client.mail(tenant.username)
            if code != 250:
                replies.append(f"{code} {text_.decode()}")
                client.rset()
                continue
            for r in range(rcpts):
                code, text_ = client.rcpt(f"r{i}-{r}@example.org")
                if code != 250:
                    replies.append(f"{code} {text_.decode()}")
                    break
            else:
                code, text_ = client.data(message(tenant.username, to=f"r{i}-0@example.org"))
                replies.append(f"{code} {text_.decode()}")
                continue
            client.rset()
    return replies


def scrape(relay: RelayThread) -> dict[tuple[str, str, str], float]:
    assert relay.relay is not None
    body = httpx.get(f"http://127.0.0.1:{relay.relay.admin_port}/metrics", timeout=5).text
    return {
        (s.name, s.labels.get("account", ""), s.labels.get("limit", "")): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name in ("relay_limited_total", "relay_quota_used_ratio")
    }


def steady_minute(need: float = 20) -> None:
    """Start a per-minute test at least ``need`` s before the minute ends, so that
    the window it counts in does not roll over half-way (windows align on UTC)."""
    left = 60 - time.time() % 60
    if left < need:
        time.sleep(left + 0.1)


def accepted(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Message)).scalar_one())


# -- the spelling ---------------------------------------------------------------


def test_limit_specs_are_strict() -> None:
    assert parse_spec("100/min", "messages") == {"messages_per_minute": 100}
    assert parse_spec("1000/hour", "messages") == {"messages_per_hour": 1000}
    assert parse_spec("50000/day", "recipients") == {"recipients_per_day": 50000}
    assert parse_spec("off", "recipients") == {
        "recipients_per_hour": None,
        "recipients_per_day": None,
    }
    assert parse_spec("off/min", "messages") == {"messages_per_minute": None}
    for bad, counts in [
        ("100/day", "messages"),
        ("100/min", "recipients"),
        ("100", "messages"),
        ("100/minute", "messages"),
        ("0/min", "messages"),
        ("-1/min", "messages"),
        ("ten/min", "messages"),
    ]:
        with pytest.raises(Invalid, match=f"--max-{counts}"):
            parse_spec(bad, counts)


def test_leases_shrink_near_the_limit() -> None:
    assert lease_size(1000, 0, 10) == 10
    assert lease_size(1000, 980, 10) == 2
    assert lease_size(5, 0, 10) == 1
    assert lease_size(5, 5, 10) == 0


# -- over SMTP --------------------------------------------------------------------


def test_message_rate_refuses_at_mail_from_naming_the_limit(
    settings: Settings, engine: Engine, tenant: Tenant, relay: RelayThread
) -> None:
    limits.set_account_limits(engine, tenant.account, limits.parse_changes(["3/min"]))
    steady_minute()
    replies = send(relay, tenant, 5)
    assert [r[:3] for r in replies] == ["250", "250", "250", "451", "451"]
    assert replies[3].startswith(
        "451 4.7.1 Rate limit 3/min for account acme reached; try again in "
    )
    seconds = int(replies[3].split("try again in ")[1].split()[0])
    assert 1 <= seconds <= 60
    assert accepted(engine) == 3
    metrics = scrape(relay)
    assert metrics[("relay_limited_total", "acme", "messages_per_minute")] == 2


def test_daily_recipient_quota_refuses_at_rcpt_naming_the_reset(
    settings: Settings, engine: Engine, tenant: Tenant, relay: RelayThread
) -> None:
    limits.set_account_limits(engine, tenant.account, limits.parse_changes(None, ["5/day"]))
    replies = send(relay, tenant, 3, rcpts=2)
    assert [r[:3] for r in replies] == ["250", "250", "451"]
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    assert replies[2] == (
        f"451 4.7.1 Daily recipient quota 5 for account acme reached; "
        f"resets at {tomorrow.isoformat()}T00:00:00Z"
    )
    view = limits.account_limits(engine, tenant.account)
    (use,) = view.limits
    assert (use.limit, use.max, use.used, use.remaining) == ("recipients_per_day", 5, 5, 0)
    assert use.resets_at == f"{tomorrow.isoformat()}T00:00:00Z"
    metrics = scrape(relay)
    assert metrics[("relay_limited_total", "acme", "recipients_per_day")] == 1
    # The gauge the 80% alert watches, as each process's gauge loop reads it.
    gauges = Metrics()
    with engine.connect() as conn:
        refresh_gauges(conn, gauges, time.time())
    value = gauges.registry.get_sample_value(
        "relay_quota_used_ratio", {"account": "acme", "limit": "recipients_per_day"}
    )
    assert value == 1.0


def test_credential_limit_is_its_own(
    settings: Settings, engine: Engine, tenant: Tenant, relay: RelayThread
) -> None:
    limits.set_credential_limits(engine, tenant.username, limits.parse_changes(["2/hour"]))
    replies = send(relay, tenant, 3)
    assert replies[2].startswith("451 4.7.1 Rate limit 2/hour for credential app@acme.test")
    assert scrape(relay)[("relay_limited_total", "acme", "credential_messages_per_hour")] == 1


def test_concurrent_sessions_refused_at_auth_and_freed_at_quit(
    settings: Settings, engine: Engine, tenant: Tenant, relay: RelayThread
) -> None:
    limits.set_account_limits(engine, tenant.account, limits.parse_changes(max_sessions="1"))
    login = (tenant.username, tenant.password)
    with (
        connect(relay, "submission", login=login),
        connect(relay, "submission") as second,
        pytest.raises(smtplib.SMTPAuthenticationError) as refused,
    ):
        second.login(*login)
    assert refused.value.smtp_code == 454
    assert b"4.7.0 Too many concurrent sessions (1 at most) for account acme" in (
        refused.value.smtp_error
    )
    # The first session's slot is written back off the loop after QUIT.
    deadline = time.monotonic() + 10
    for _ in range(200):
        if time.monotonic() > deadline:
            pytest.fail("the session limit was not freed after QUIT")
        with connect(relay, "submission") as third:
            try:
                third.login(tenant.username, tenant.password)
                break
            except smtplib.SMTPAuthenticationError:
                time.sleep(0.05)
    else:
        pytest.fail("the session limit was not freed after QUIT")


def test_a_crashed_holders_sessions_free_when_its_lease_expires(
    settings: Settings, engine: Engine, tenant: Tenant, relay: RelayThread
) -> None:
    limits.set_account_limits(engine, tenant.account, limits.parse_changes(max_sessions="1"))
    with engine.begin() as conn:
        account_id = conn.execute(
            select(Account.id).where(Account.name == tenant.account)
        ).scalar_one()
        conn.execute(
            text("INSERT INTO limit_sessions VALUES (:s, 'dead-node:1:x', 1, :e)"),
            {"s": f"a:{account_id}", "e": int(time.time()) + 600},
        )
    with connect(relay, "submission") as client, pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(tenant.username, tenant.password)
    with engine.begin() as conn:  # the dead holder's heartbeat stopped: its lease runs out
        conn.execute(text("UPDATE limit_sessions SET expires_at = :e"), {"e": int(time.time()) - 1})
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        assert client.noop()[0] == 250


def test_two_nodes_share_the_rate(
    settings: Settings, engine: Engine, tenant: Tenant, tmp_path: Path
) -> None:
    """Two relays (each its own leases and sessions, as two nodes) on one database."""
    limits.set_account_limits(engine, tenant.account, limits.parse_changes(["7/min"]))
    steady_minute()
    other = make_settings(tmp_path / "var2", settings.database.url)
    one, two = RelayThread(settings, engine).start(), RelayThread(other).start()
    try:
        replies = []
        for i in range(6):
            replies += send(one if i % 2 else two, tenant, 2)
        assert sum(r.startswith("250") for r in replies) == 7
        assert all(r.startswith("451 4.7.1 Rate limit 7/min") for r in replies[7:])
        assert accepted(engine) == 7
    finally:
        one.stop()
        two.stop()


def test_two_nodes_share_the_daily_quota(
    settings: Settings, engine: Engine, tenant: Tenant, tmp_path: Path
) -> None:
    limits.set_account_limits(engine, tenant.account, limits.parse_changes(None, ["9/day"]))
    other = make_settings(tmp_path / "var2", settings.database.url)
    one, two = RelayThread(settings, engine).start(), RelayThread(other).start()
    try:
        replies = []
        for i in range(6):
            replies += send(one if i % 2 else two, tenant, 1, rcpts=2)
        # Four messages of two recipients; the fifth gets one recipient (the ninth)
        # and is abandoned; the sixth gets none.
        assert [r[:3] for r in replies] == ["250"] * 4 + ["451"] * 2
        assert accepted(engine) == 4
        view = limits.account_limits(engine, tenant.account)
        assert [(u.used, u.remaining) for u in view.limits] == [(9, 0)]
    finally:
        one.stop()
        two.stop()


def test_two_nodes_share_concurrent_sessions(
    settings: Settings, engine: Engine, tenant: Tenant, tmp_path: Path
) -> None:
    limits.set_account_limits(engine, tenant.account, limits.parse_changes(max_sessions="2"))
    other = make_settings(tmp_path / "var2", settings.database.url)
    one, two = RelayThread(settings, engine).start(), RelayThread(other).start()
    try:
        login = (tenant.username, tenant.password)
        with connect(one, "submission", login=login), connect(two, "submission", login=login):
            for node in (one, two):
                with connect(node, "submission") as client:
                    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                        client.login(*login)
                    assert refused.value.smtp_code == 454
    finally:
        one.stop()
        two.stop()


# -- who sets them, and the agency's ceiling ------------------------------------------


def test_agency_limits_cap_the_sum_of_its_sub_accounts(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    seed_tenant(settings, engine, name="beta", domain="beta.test")
    limits.set_account_limits(engine, "agency", limits.parse_changes(["100/min"]))
    with Session(engine) as session:
        agency_id = session.scalars(select(Account.id).where(Account.name == "agency")).one()
        seen = scope.scope_of_account(session, agency_id)
    actor = scope.Actor("token:1", "api", seen, agency_id)
    with scope.acting(actor):
        limits.set_account_limits(engine, tenant.account, limits.parse_changes(["60/min"]))
        with pytest.raises(Conflict, match="would have 110/min of messages_per_minute in all"):
            limits.set_account_limits(engine, "beta", limits.parse_changes(["50/min"]))
        with pytest.raises(Conflict, match="needs one too"):
            limits.set_account_limits(engine, "beta", limits.parse_changes(["off"]))
        limits.set_account_limits(engine, "beta", limits.parse_changes(["40/min"]))
        with pytest.raises(OperatorOnly):  # never its own
            limits.set_account_limits(engine, "agency", limits.parse_changes(["1000/min"]))
        with pytest.raises(Conflict, match="past its account acme's 60/min"):
            limits.set_credential_limits(engine, tenant.username, limits.parse_changes(["61/min"]))
    with pytest.raises(Conflict, match="the sub-accounts of agency have 100/min"):
        limits.set_account_limits(engine, "agency", limits.parse_changes(["99/min"]))
    other = seed_tenant(settings, engine, name="other", domain="other.test", agency="agency2")
    with scope.acting(actor), pytest.raises(Exception, match="does not exist"):
        limits.set_account_limits(engine, other.account, limits.parse_changes(["1/min"]))


def test_an_agency_ceiling_counts_its_whole_tree(
    settings: Settings, engine: Engine, tenant: Tenant, relay: RelayThread
) -> None:
    beta = seed_tenant(settings, engine, name="beta", domain="beta.test")
    limits.set_account_limits(engine, "agency", limits.parse_changes(["3/min"]))
    steady_minute()
    assert [r[:3] for r in send(relay, tenant, 2)] == ["250", "250"]
    replies = send(relay, beta, 2)
    assert replies[0].startswith("250")
    assert replies[1].startswith("451 4.7.1 Rate limit 3/min for agency agency reached")
    assert scrape(relay)[("relay_limited_total", "agency", "messages_per_minute")] == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(LimitCounter.used))).scalar_one() == 3


# -- relay serve --processes 2 -------------------------------------------------------


@pytest.mark.slow
def test_two_processes_share_the_rate_and_the_sessions(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    """``relay serve --processes 2``: connections spread over both processes
    (SO_REUSEPORT); the rate and the session limit hold for their sum."""
    from tests.test_ingest import free_port, wait_port
    from tests.test_nodes import node_config, start, stop

    limits.set_account_limits(engine, tenant.account, limits.parse_changes(["6/min"], None, "2"))
    port, admin = free_port(), free_port()
    config = node_config(settings, "multi", extra=f'[listeners]\nalt = "127.0.0.1:{port}"\n')
    config.write_text(config.read_text().replace('listen = ""', f'listen = "127.0.0.1:{admin}"'))
    proc = start(config, "--processes", "2")
    try:
        wait_port(port, proc, 120)
        wait_port(admin, proc, 120)
        # Both processes serve once each has set its sessions gauge (a file per process).
        deadline = time.monotonic() + 120
        for _ in range(2400):
            live = {p.name for p in (settings.var_path / "metrics").glob("gauge_livesum_*.db")}
            if len(live) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(live) == 2, live
        steady_minute(45)  # twelve TLS sessions on a loaded machine take a while
        codes = []
        for i in range(12):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=client_context())
                client.login(tenant.username, tenant.password)
                code, _ = client.mail(tenant.username)
                codes.append(code)
                if code == 250:
                    client.rcpt(f"r{i}@example.org")
                    client.data(message(tenant.username, to=f"r{i}@example.org"))
        assert sorted(codes) == [250] * 6 + [451] * 6
        assert accepted(engine) == 6
        sessions = [smtplib.SMTP("127.0.0.1", port, timeout=10) for _ in range(4)]
        try:
            answers = []
            for client in sessions:
                client.starttls(context=client_context())
                try:
                    client.login(tenant.username, tenant.password)
                    answers.append(235)
                except smtplib.SMTPAuthenticationError as exc:
                    answers.append(exc.smtp_code)
            assert answers == [235, 235, 454, 454]
        finally:
            for client in sessions:
                client.close()
        body = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
        limited = {
            s.labels["limit"]: s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
            if s.name == "relay_limited_total"
        }
        # smtplib tries AUTH PLAIN, then LOGIN: two refusals per refused client.
        assert limited == {"messages_per_minute": 6, "sessions": 4}
    finally:
        stop(proc)
        assert proc.returncode == 0


def test_concurrent_sessions_of_one_process_get_exactly_the_limit(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    """Many sessions spending at once on one loop: none is refused below the limit
    (each hop's own lease serves its caller), none passes it."""
    from relay.limits.leases import Limits

    with engine.connect() as conn:
        credential = conn.execute(
            text("SELECT id FROM credentials WHERE username = :u"), {"u": tenant.username}
        ).scalar_one()
    now = time.time()  # one window for the whole test, whatever the clock does

    async def spend(limit: Limits, n: int) -> list[str | None]:
        replies = await asyncio.gather(*(limit.spend(credential, "messages") for _ in range(n)))
        return [None if r is None else str(r) for r in replies]

    limits.set_account_limits(engine, tenant.account, limits.parse_changes(["1000/hour"]))
    one = Limits(engine, settings.limits, clock=lambda: now)
    assert asyncio.run(spend(one, 200)) == [None] * 200
    limits.set_credential_limits(engine, tenant.username, limits.parse_changes(["150/hour"]))
    two = Limits(engine, settings.limits, clock=lambda: now)  # reads the new limits
    replies = asyncio.run(spend(two, 200))
    assert replies.count(None) == 150
    assert {r for r in replies if r} == {
        f"451 4.7.1 Rate limit 150/hour for credential {tenant.username} reached; "
        f"try again in {3600 - int(now) % 3600} s"
    }
