"""Per-domain SMTP users: login, the same 535 for every failure, lock-out,
the five-credential limit, and reset and delete taking effect on a live server."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import Engine, select

from relay.app import make_hasher
from relay.auth.limiter import FailureLimiter
from relay.auth.passwords import Hasher, LoginCache
from relay.core.errors import Conflict, Invalid, NotFound
from relay.core.settings import Settings
from relay.service import accounts
from relay.store.models import Credential
from tests.support import RelayThread, Tenant, auth_plain, connect, message


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


def test_lockout_per_username(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    settings = replace(settings, auth=replace(settings.auth, max_failures_per_user=3))
    thread = RelayThread(settings, engine).start()
    try:
        for _ in range(3):
            assert login_reply(thread, tenant.username, "bad-password-xx")[0] == 535
        # Locked: even the right password is refused for a while.
        code, text = login_reply(thread, tenant.username, tenant.password)
        assert (code, text[:5]) == (454, b"4.7.0")
    finally:
        thread.stop()


def test_lockout_per_address(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    settings = replace(settings, auth=replace(settings.auth, max_failures_per_ip=4))
    thread = RelayThread(settings, engine).start()
    try:
        for i in range(4):
            assert login_reply(thread, f"user{i}@acme.test", "bad-password-xx")[0] == 535
        assert login_reply(thread, tenant.username, tenant.password)[0] == 454
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
