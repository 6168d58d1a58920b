"""Per-domain SMTP users: login, the same 535 for every failure, lock-out,
the five-credential limit, and reset and delete taking effect on a live server."""

from __future__ import annotations

import smtplib
import time
from dataclasses import replace

import pytest
from sqlalchemy import Engine, select

from relay.auth.limiter import FailureLimiter
from relay.auth.passwords import Hasher, LoginCache, make_hasher
from relay.core.errors import Conflict, Invalid, NotFound
from relay.core.settings import Settings
from relay.service import accounts
from relay.store.models import Credential
from tests.support import RelayThread, Tenant, auth_plain, client_context, connect, message
from tests.test_metrics import scrape


def login_reply(relay: RelayThread, user: str, password: str) -> tuple[int, bytes]:
    # One AUTH PLAIN: smtplib's login() would try a second mechanism after a 535.
    with connect(relay, "submission") as client:
        return client.docmd("AUTH", "PLAIN " + auth_plain(user, password))


def test_wrong_password_and_unknown_user_get_the_same_535(
    relay: RelayThread, tenant: Tenant
) -> None:
    wrong = login_reply(relay, tenant.username, "not-the-password")
    unknown = login_reply(relay, "nobody@acme.test", "not-the-password")
    assert wrong == unknown == (535, b"5.7.8 Authentication credentials invalid")


def test_auth_login_mechanism_and_domain_case(relay: RelayThread, tenant: Tenant) -> None:
    with connect(relay, "submission") as client:
        client.user, client.password = "app@ACME.test", tenant.password
        code, _ = client.auth("LOGIN", client.auth_login)
        assert code == 235


def login_from(relay: RelayThread, source: str, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN from another loopback address (127.0.0.2 is another client)."""
    client = smtplib.SMTP(
        "127.0.0.1", relay.port("submission"), timeout=30, source_address=(source, 0)
    )
    try:
        client.ehlo("client.test")
        client.starttls(context=client_context())
        client.ehlo("client.test")
        return client.docmd("AUTH", "PLAIN " + auth_plain(user, password))
    finally:
        client.close()


def lockouts(relay: RelayThread, scope: str) -> float:
    key = ("relay_auth_lockouts_total", (("listener", "submission"), ("scope", scope)))
    return scrape(relay).get(key, 0.0)


def test_lockout_per_username_and_address(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    settings = replace(settings, auth=replace(settings.auth, max_failures_per_user=3))
    thread = RelayThread(settings, engine).start()
    try:
        for _ in range(3):
            assert login_reply(thread, tenant.username, "bad-password-xx")[0] == 535
        # Locked from this address: even the right password is refused for a while.
        code, text = login_reply(thread, tenant.username, tenant.password)
        assert (code, text[:5]) == (454, b"4.7.0")
        assert lockouts(thread, "user_ip") == 1
    finally:
        thread.stop()


def test_failures_from_one_address_do_not_lock_the_user_out_elsewhere(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    """Finding 6: five wrong passwords from one address used to lock the user for everyone."""
    thread = RelayThread(settings, engine).start()  # the defaults: 5 a user, 10 an address
    try:
        for _ in range(5):
            assert login_from(thread, "127.0.0.2", tenant.username, "wrong-password-x")[0] == 535
        # The attacker's address is locked for this user, right password or not ...
        assert login_from(thread, "127.0.0.2", tenant.username, tenant.password)[0] == 454
        # ... but the user, from their own address, logs in.
        assert login_from(thread, "127.0.0.1", tenant.username, tenant.password)[0] == 235
        assert lockouts(thread, "user_ip") == 1
    finally:
        thread.stop()


def test_lockout_per_address(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    settings = replace(settings, auth=replace(settings.auth, max_failures_per_ip=4))
    thread = RelayThread(settings, engine).start()
    try:
        for i in range(4):
            assert (
                login_from(thread, "127.0.0.2", f"user{i}@acme.test", "bad-password-xx")[0] == 535
            )
        assert login_from(thread, "127.0.0.2", tenant.username, tenant.password)[0] == 454
        assert login_from(thread, "127.0.0.1", tenant.username, tenant.password)[0] == 235
        assert lockouts(thread, "ip") == 1
    finally:
        thread.stop()


def test_a_username_tried_from_many_addresses_is_slowed_never_locked(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    auth = replace(settings.auth, max_failures_per_user=2, max_login_delay=2.0)
    thread = RelayThread(replace(settings, auth=auth)).start()
    try:
        took = []
        for i in range(2, 8):  # one failure from each of six addresses
            started = time.monotonic()
            code, _ = login_from(thread, f"127.0.0.{i}", tenant.username, "wrong-password-x")
            took.append(time.monotonic() - started)
            assert code == 535  # never 454: the username is not locked
        # After two failures each answer waits 0.5 s, doubling, capped at 2 s.
        assert took[2] >= 0.5 and took[3] >= 1.0 and took[4] >= 2.0 and took[5] >= 2.0
        assert lockouts(thread, "user") == 1 and lockouts(thread, "user_ip") == 0

        # The owner still gets in, slowly.
        assert login_from(thread, "127.0.0.9", tenant.username, tenant.password)[0] == 235
    finally:
        thread.stop()


def test_reset_and_delete_take_effect_at_once_on_a_live_server(
    relay: RelayThread, tenant: Tenant, settings: Settings, engine: Engine
) -> None:
    assert login_reply(relay, tenant.username, tenant.password)[0] == 235
    assert login_reply(relay, tenant.username, tenant.password)[0] == 235  # from the cache
    new = accounts.reset_credential(engine, make_hasher(settings), tenant.username, None)
    assert login_reply(relay, tenant.username, tenant.password)[0] == 535
    assert login_reply(relay, tenant.username, new.password)[0] == 235
    accounts.delete_credential(engine, tenant.username)
    assert login_reply(relay, tenant.username, new.password)[0] == 535


def test_an_open_session_keeps_sending_but_new_logins_fail_after_delete(
    relay: RelayThread, tenant: Tenant, engine: Engine
) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        accounts.delete_credential(engine, tenant.username)
        # Like Postfix, a session authenticated before the delete is not cut off.
        assert client.sendmail(tenant.username, ["b@example.org"], message(tenant.username)) == {}
    assert login_reply(relay, tenant.username, tenant.password)[0] == 535


def test_at_most_five_credentials_a_domain(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    hasher = make_hasher(settings)
    for i in range(2, 6):
        accounts.create_credential(engine, hasher, f"user{i}@acme.test", None)
    with pytest.raises(Conflict, match="already has 5 credentials"):
        accounts.create_credential(engine, hasher, "user6@acme.test", None)
    accounts.delete_credential(engine, "user2@acme.test")
    accounts.create_credential(engine, hasher, "user6@acme.test", None)


def test_credential_rules(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    hasher = make_hasher(settings)
    with pytest.raises(Conflict):
        accounts.create_credential(engine, hasher, tenant.username, None)
    with pytest.raises(NotFound, match="not a sending domain"):
        accounts.create_credential(engine, hasher, "a@unknown.test", None)
    with pytest.raises(Invalid):
        accounts.create_credential(engine, hasher, "no-at-sign", None)
    with pytest.raises(Invalid, match="at least 12"):
        accounts.create_credential(engine, hasher, "b@acme.test", "short")
    with pytest.raises(NotFound):
        accounts.reset_credential(engine, hasher, "ghost@acme.test", None)


def test_passwords_are_argon2_hashes(engine: Engine, tenant: Tenant) -> None:
    with engine.connect() as conn:
        stored = conn.execute(select(Credential.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$")
    assert tenant.password not in stored


def test_login_cache_is_keyed_by_stored_hash() -> None:
    cache = LoginCache(size=2)
    cache.remember(1, "hash-a", "pw")
    assert cache.hit(1, "hash-a", "pw")
    assert not cache.hit(1, "hash-b", "pw")  # reset: new hash, no hit
    assert not cache.hit(1, "hash-a", "other")
    cache.remember(2, "h", "x")
    cache.remember(3, "h", "y")
    assert not cache.hit(1, "hash-a", "pw")  # evicted: bounded


def test_hasher_rejects_unknown_users_at_full_cost() -> None:
    hasher = Hasher(time_cost=1, memory_kib=1024)
    assert hasher.verify(hasher.hash("secret-password"), "secret-password")
    assert not hasher.verify(None, "secret-password")
    assert not hasher.verify("not-a-hash", "secret-password")


def test_limiter_window_and_lockout() -> None:
    now = [0.0]
    limiter = FailureLimiter(limit=2, window=10, lockout=60, clock=lambda: now[0])
    limiter.fail("k")
    now[0] = 11  # the first failure left the window
    limiter.fail("k")
    assert not limiter.locked("k")
    limiter.fail("k")
    assert limiter.locked("k")
    now[0] = 72
    assert not limiter.locked("k")
