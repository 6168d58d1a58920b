"""Sender verification and routing, over real SMTP: reject, drop, pause, resume,
release, discard, expiry; which sender is checked; tenants apart; the route."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import Engine, func, select, update

from relay.core.crypto import secret_box
from relay.core.settings import Settings
from relay.queue import held
from relay.service import accounts, providers
from relay.service.queue import discard_messages, release_messages
from relay.store.models import Account, Message, Usage
from relay.store.models import Provider as ProviderRow
from tests.support import RelayThread, Tenant, connect, message, seed_tenant


def send(
    relay: RelayThread,
    tenant: Tenant,
    data: bytes,
    mail_from: str | None = None,
    rcpts: tuple[str, ...] = ("bob@example.org",),
) -> tuple[int, bytes]:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        client.docmd("MAIL", f"FROM:<{mail_from or tenant.username}>")
        for rcpt in rcpts:
            client.docmd("RCPT", f"TO:<{rcpt}>")
        return client.data(data)


def states(engine: Engine) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        return [
            (s, r)
            for s, r in conn.execute(
                select(Message.state, Message.reason).order_by(Message.created_at)
            ).all()
        ]


def wait_state(engine: Engine, state: str, n: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for s, _ in states(engine) if s == state) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {state} message; have {states(engine)}")


def set_policy(engine: Engine, account: str, policy: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Account).where(Account.name == account).values(unverified_policy=policy)
        )


def test_verified_sender_is_queued_and_delivered(relay: RelayThread, tenant: Tenant) -> None:
    assert send(relay, tenant, message(tenant.username))[0] == 250
    wait_state(relay.engine, "delivered")


def test_reject_names_the_sender_and_queues_nothing(
    relay: RelayThread, tenant: Tenant, engine: Engine
) -> None:
    set_policy(engine, tenant.account, "reject")
    code, text = send(relay, tenant, message("ceo@other.test"))
    assert code == 550
    assert text.startswith(b"5.7.1 Sender ceo@other.test is not verified for this account")
    assert states(engine) == []


def test_drop_answers_250_and_delivers_nothing(
    relay: RelayThread, tenant: Tenant, engine: Engine
) -> None:
    code, text = send(relay, tenant, message("ceo@other.test"))  # default for transactional
    assert code == 250 and b"queued as" in text
    ((state, reason),) = states(engine)
    assert state == "dropped" and "ceo@other.test not verified" in (reason or "")
    time.sleep(0.5)
    assert not (relay.settings.var_path / "outbox").exists() or not any(
        (relay.settings.var_path / "outbox").iterdir()
    )
    with engine.connect() as conn:
        events = set(conn.execute(select(Usage.event)).scalars())
    assert events == {"accepted", "dropped"}


def test_campaign_mail_pauses_and_resumes_when_verified(
    relay: RelayThread, tenant: Tenant, engine: Engine
) -> None:
    data = message("news@brand.test", extra="X-Relay-Campaign: autumn-sale\r\n")
    assert send(relay, tenant, data, mail_from="news@brand.test")[0] == 250
    ((state, reason),) = states(engine)
    assert state == "paused" and "news@brand.test" in (reason or "")
    accounts.verify_sender(engine, "brand.test", tenant.account)
    wait_state(engine, "delivered")
    eml = next((relay.settings.var_path / "outbox").glob("*.eml")).read_bytes()
    assert b"X-Relay-Campaign" not in eml  # removed before delivery
    with engine.connect() as conn:
        assert conn.execute(select(Message.campaign)).scalar_one() == "autumn-sale"


def test_campaign_credential_pauses_by_default(
    relay: RelayThread, settings: Settings, engine: Engine
) -> None:
    campaign = seed_tenant(
        settings, engine, name="mailer", domain="mailer.test", purpose="campaign"
    )
    send(relay, campaign, message("promo@elsewhere.test"), mail_from="promo@elsewhere.test")
    assert states(engine)[0][0] == "paused"


def test_release_and_discard_paused_mail(
    relay: RelayThread, tenant: Tenant, engine: Engine
) -> None:
    set_policy(engine, tenant.account, "pause")
    for _ in range(3):
        send(relay, tenant, message("x@held.test"), mail_from="x@held.test")
    ids = [m[0] for m in held.paused(engine)]
    assert len(ids) == 3
    assert release_messages(engine, ids[0]) == [ids[0]]
    wait_state(engine, "delivered")
    rows = discard_messages(engine, sender="held.test")
    assert sorted({r[0] for r in rows}) == sorted(ids[1:])
    assert sorted(s for s, _ in states(engine)) == ["delivered", "dropped", "dropped"]
    with engine.connect() as conn:
        dropped = conn.execute(
            select(func.sum(Usage.recipients)).where(Usage.event == "dropped")
        ).scalar_one()
    assert dropped == 2


def test_paused_mail_expires(relay: RelayThread, tenant: Tenant, engine: Engine) -> None:
    set_policy(engine, tenant.account, "pause")
    send(relay, tenant, message("x@held.test"), mail_from="x@held.test")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=relay.settings.queue.lifetime + 1)
    rows = held.expire(engine, now=later)
    assert [(r[2], r[3]) for r in rows] == [("to", "failed")]
    assert states(engine) == [("failed", "expired while paused")]


@pytest.mark.parametrize(
    ("envelope", "header", "extra", "ok"),
    [
        ("app@acme.test", "Someone <Other@Evil.test>", "", False),  # header From unverified
        ("bounce@evil.test", "app@acme.test", "", False),  # envelope unverified
        ("app@acme.test", "app@acme.test", "Sender: agent@evil.test\r\n", False),
        ("APP@ACME.TEST", '"Acme, Inc." <Sales@ACME.test>', "", True),  # case and names
        ("app@acme.test", "a@acme.test, b@acme.test", "", True),  # every From address
        ("app@acme.test", "a@acme.test, b@evil.test", "", False),
    ],
)
def test_which_senders_are_checked(
    relay: RelayThread,
    tenant: Tenant,
    engine: Engine,
    envelope: str,
    header: str,
    extra: str,
    ok: bool,
) -> None:
    set_policy(engine, tenant.account, "reject")
    data = f"From: {header}\r\nTo: bob@example.org\r\nSubject: s\r\n{extra}\r\nbody\r\n".encode()
    code, _ = send(relay, tenant, data, mail_from=envelope)
    assert (code == 250) is ok


def test_a_tenant_cannot_send_as_another(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine
) -> None:
    other = seed_tenant(settings, engine, name="globex", domain="globex.test")
    set_policy(engine, other.account, "reject")
    code, text = send(relay, other, message(tenant.username), mail_from=tenant.username)
    assert code == 550 and b"app@acme.test is not verified" in text


def test_provider_test_address_counts_as_verified(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(ProviderRow).values(
                options={
                    "directory": str(settings.var_path / "outbox"),
                    "test_address": "ops@agency.test",
                }
            )
        )
    set_policy(engine, tenant.account, "reject")
    assert send(relay, tenant, message("ops@agency.test"), mail_from="ops@agency.test")[0] == 250


# -- routing ------------------------------------------------------------------------------


def outbox(
    settings: Settings, engine: Engine, name: str, account: str, domain: str | None = None
) -> int:
    config = providers.ProviderConfig(
        name, "outbox", {"directory": str(settings.var_path / name)}, {}, domain
    )
    row = providers.add_provider(engine, secret_box(settings), account, config)
    return row.id


def routed(engine: Engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(
            select(Message.provider_id).order_by(Message.created_at.desc()).limit(1)
        ).scalar_one()


def test_routing_matrix(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine
) -> None:
    with engine.connect() as conn:
        agency_default = conn.execute(select(ProviderRow.id)).scalar_one()
    # 1. the agency's default for sub-accounts
    send(relay, tenant, message(tenant.username))
    assert routed(engine) == agency_default
    # 2. the sub-account's own default wins over the agency's
    own = outbox(settings, engine, "own", tenant.account)
    providers.set_default(engine, "own", tenant.account)
    send(relay, tenant, message(tenant.username))
    assert routed(engine) == own
    # 3. a provider bound to the sender's domain wins over both
    bound = outbox(settings, engine, "bound", tenant.account, domain="acme.test")
    send(relay, tenant, message(tenant.username))
    assert routed(engine) == bound
    # 4. other domains of the account still use the default
    accounts.verify_sender(engine, "other.test", tenant.account)
    send(relay, tenant, message("x@other.test"), mail_from="x@other.test")
    assert routed(engine) == own
    # 5. an agency's assignment of the sub-account wins over the sub-account's default
    assigned = outbox(settings, engine, "assigned", "agency")
    providers.assign(engine, "assigned", tenant.account)
    send(relay, tenant, message("x@other.test"), mail_from="x@other.test")
    assert routed(engine) == assigned
    send(relay, tenant, message(tenant.username))
    assert routed(engine) == bound  # the domain binding still comes first
    # 6. the agency's own default is for the agency's own mail, not its sub-accounts'
    providers.unassign(engine, tenant.account)
    providers.set_default(engine, "assigned", "agency")
    send(relay, tenant, message("x@other.test"), mail_from="x@other.test")
    assert routed(engine) == own


def test_no_route_holds_the_message(relay: RelayThread, settings: Settings, engine: Engine) -> None:
    accounts.create_account(engine, "lonely")
    accounts.create_account(engine, "orphan", agency="lonely")
    accounts.add_domain(engine, "orphan.test", "orphan")
    from relay.auth.passwords import make_hasher

    accounts.create_credential(engine, make_hasher(settings), "a@orphan.test", "a-long-password-1")
    accounts.verify_sender(engine, "orphan.test", "orphan")
    lonely = Tenant("orphan", "orphan.test", "a@orphan.test", "a-long-password-1")
    assert send(relay, lonely, message("a@orphan.test"), mail_from="a@orphan.test")[0] == 250
    assert states(engine)[-1] == ("paused", "no provider")


def test_set_default_rules(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    from relay.core.errors import Invalid, NotFound

    seed_tenant(settings, engine, name="other", domain="other.test", agency="agency2")
    with pytest.raises(Invalid, match="belongs to another account"):
        providers.set_default(engine, "agency2-outbox", tenant.account)
    with pytest.raises(Invalid, match="only an agency"):
        providers.set_default(engine, "agency-outbox", tenant.account, "subaccounts")
    with pytest.raises(NotFound):
        providers.set_default(engine, "missing", tenant.account)


def test_smtp_client_sees_no_difference_between_drop_and_queue(
    relay: RelayThread, tenant: Tenant
) -> None:
    ok = send(relay, tenant, message(tenant.username))
    dropped = send(relay, tenant, message("x@unverified.test"), mail_from="x@unverified.test")
    assert ok[0] == dropped[0] == 250
    assert ok[1].split(b" as ")[0] == dropped[1].split(b" as ")[0]
