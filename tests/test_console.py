"""The web console over HTTP, without a browser: sign-in, CSRF, lock-out, roles, scope,
and each screen's empty, error and success states, on both engines.

The world is the API tests' (``tests/api_support.py``): agencies agency-a (subs
a-one, a-two) and agency-b (sub b-one), each sub-account with a domain, a
credential, a paused and a queued message. Console users are made through the
service, as ``relay user create`` makes them.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select, update

from relay.console import screens
from relay.core.errors import Conflict, Invalid, NotFound, OperatorOnly
from relay.core.settings import Settings
from relay.service import accounts, console_users, dnsverify
from relay.service.scope import Actor, acting
from relay.store.models import AuditEntry, ConsoleSession, Credential, Message
from tests.api_support import World, account_id, api_settings, build_world, put_message
from tests.console_support import ConsoleClient, make_user, text_of
from tests.support import RelayThread, fresh_engine
from tests.test_dns_verify import TinyDNS


@pytest.fixture
def settings(tmp_path: Path, any_db_url: str) -> Settings:
    return api_settings(tmp_path / "var", any_db_url, auth={"max_failures_per_user": 3})


@pytest.fixture
def world(settings: Settings, engine: Engine) -> World:
    world = build_world(settings, engine)
    make_user(settings, engine, "boss@agency-a.test", "agency-a")
    make_user(settings, engine, "viewer@agency-a.test", "agency-a", role="viewer")
    make_user(settings, engine, "b@agency-b.test", "agency-b")
    make_user(settings, engine, "root@relay.test", None, operator=True)
    return world


@pytest.fixture
def served(settings: Settings, engine: Engine, world: World) -> Iterator[RelayThread]:
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


@pytest.fixture
def console(served: RelayThread) -> Iterator[ConsoleClient]:
    client = ConsoleClient(served)
    yield client
    client.close()


def signed_in(console: ConsoleClient, email: str) -> ConsoleClient:
    assert console.sign_in(email).status_code == 303
    return console


# -- sign-in, sessions, CSRF, lock-out ---------------------------------------------------


def test_root_asks_to_sign_in_and_the_api_stays_where_it_was(console: ConsoleClient) -> None:
    first = console.get("/")
    assert first.status_code == 303 and first.headers["location"] == "/sign-in"
    page = console.get("/sign-in")
    assert page.status_code == 200 and '<label for="email">' in page.text
    assert "Content-Security-Policy" in page.headers
    assert console.get("/api/v1/accounts").status_code == 401  # the API, not the console
    assert console.get("/metrics").status_code == 200
    assert console.get("/readyz").status_code == 200


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_ends_the_session(
    console: ConsoleClient, engine: Engine
) -> None:
    response = console.sign_in("boss@agency-a.test")
    assert response.status_code == 303
    cookie = next(
        v
        for k, v in response.headers.multi_items()
        if k == "set-cookie" and v.startswith("relay_session=")
    )
    attributes = cookie.lower()
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # plain HTTP on loopback: see [admin] secure_cookie
    home = console.get("/")
    assert home.status_code == 200 and "boss@agency-a.test" in home.text
    with engine.connect() as conn:
        stored = conn.execute(select(ConsoleSession.id)).scalars().all()
    session_cookie = console.client.cookies["relay_session"]
    assert stored == [console_users.digest(session_cookie)]  # only the digest is stored
    assert console.post("/sign-out").status_code == 303
    assert console.get("/").status_code == 303
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ConsoleSession)).scalar() == 0


def test_wrong_password_then_lock_out(console: ConsoleClient) -> None:
    for _ in range(3):
        assert console.sign_in("boss@agency-a.test", "wrong-password-x").status_code == 401
    locked = console.sign_in("boss@agency-a.test")  # even the right password, while locked
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text
    assert "Retry-After" in locked.headers
    # Another user from the same address is not locked by these (per email and address).
    assert console.sign_in("b@agency-b.test").status_code == 303


def test_unknown_email_is_answered_as_a_wrong_password(console: ConsoleClient) -> None:
    response = console.sign_in("nobody@agency-a.test")
    assert response.status_code == 401 and "Wrong email or password" in response.text


def test_a_post_without_its_csrf_token_is_refused(console: ConsoleClient, engine: Engine) -> None:
    signed_in(console, "boss@agency-a.test")
    refused = console.post("/domains", {"domain": "new.a-one.test", "account": "a-one"}, csrf=False)
    assert refused.status_code == 403 and "security token" in refused.text
    wrong = console.client.post(
        "/domains", data={"domain": "new.a-one.test", "account": "a-one", "csrf": "forged"}
    )
    assert wrong.status_code == 403
    form = console.client.get("/sign-in")  # the sign-in form is covered too
    assert form.status_code == 303  # signed in already: back to the dashboard
    console.client.cookies.clear()
    no_token = console.client.post(
        "/sign-in", data={"email": "boss@agency-a.test", "password": "console-password-1"}
    )
    assert no_token.status_code == 403


def test_a_viewer_sees_but_cannot_change(console: ConsoleClient, engine: Engine) -> None:
    signed_in(console, "viewer@agency-a.test")
    page = console.get("/domains/a-one.test/credentials")
    assert page.status_code == 200 and "app@a-one.test" in page.text
    assert "Create credential" not in page.text and "Reset password" not in page.text
    refused = console.post("/domains/a-one.test/credentials", {"local": "new"})
    assert refused.status_code == 403 and "viewer" in refused.text
    with engine.connect() as conn:
        assert (
            conn.execute(
                select(Credential.id).where(Credential.username == "new@a-one.test")
            ).first()
            is None
        )


# -- scope: another tenant's things are not found ------------------------------------------


def test_another_tenants_domain_is_not_found(console: ConsoleClient) -> None:
    signed_in(console, "b@agency-b.test")
    mine = console.get("/domains/b-one.test/credentials")
    assert mine.status_code == 200
    theirs = console.get("/domains/a-one.test/credentials")
    missing = console.get("/domains/nowhere.test/credentials")
    assert theirs.status_code == missing.status_code == 404
    assert "a-one" not in text_of(console.get("/domains").text)
    post = console.post("/domains/a-one.test/credentials/app@a-one.test/delete")
    assert post.status_code == 404
    assert console.get("/providers/a-one-smtp").status_code == 404
    assert "a-one" not in console.get("/mail").text


def test_an_operator_sees_every_account(console: ConsoleClient) -> None:
    signed_in(console, "root@relay.test")
    page = text_of(console.get("/domains").text)
    assert "a-one.test" in page and "b-one.test" in page


# -- screens -----------------------------------------------------------------------------


def test_dashboard_counts_the_queue_and_shows_accounts(console: ConsoleClient) -> None:
    signed_in(console, "boss@agency-a.test")
    page = console.get("/")
    assert page.status_code == 200
    assert 'id="count-paused">2<' in page.text  # a-one's and a-two's
    assert 'id="count-queued">2<' in page.text
    assert "b-one" not in page.text


def test_domains_add_empty_error_and_success(console: ConsoleClient, engine: Engine) -> None:
    signed_in(console, "boss@agency-a.test")
    added = console.post("/domains", {"domain": "news.a-one.test", "account": "a-one"})
    assert added.status_code == 200 and "Added news.a-one.test" in added.text
    again = console.post("/domains", {"domain": "news.a-one.test", "account": "a-one"})
    assert again.status_code == 409 and "already belongs" in again.text
    bad = console.post("/domains", {"domain": "not a domain", "account": "a-one"})
    assert bad.status_code == 422
    hidden = console.post("/domains", {"domain": "x.test", "account": "b-one"})
    assert hidden.status_code == 404
    # DNS verification: the tests' resolver never answers; the record to publish is shown.
    verify = console.post("/domains/news.a-one.test/verify", {"account": "a-one"})
    assert verify.status_code == 422 and "DNS look-up" in verify.text
    challenge = dnsverify.record_name("news.a-one.test")
    assert challenge in verify.text and "data-copy=" in verify.text


def test_credentials_create_reset_delete_and_the_limit(
    console: ConsoleClient, engine: Engine, settings: Settings
) -> None:
    signed_in(console, "boss@agency-a.test")
    created = console.post("/domains/a-one.test/credentials", {"local": "shop"})
    assert created.status_code == 200
    assert "shop@a-one.test" in created.text and 'id="new-password"' in created.text
    assert "Host: relay.test" in created.text and "Port: 587 with STARTTLS" in created.text
    assert "Port: 465 with SSL/TLS" in created.text
    listed = console.get("/domains/a-one.test/credentials")
    assert 'id="new-password"' not in listed.text  # shown once
    for n in range(3):
        assert (
            console.post("/domains/a-one.test/credentials", {"local": f"u{n}"}).status_code == 200
        )
    full = console.get("/domains/a-one.test/credentials")
    assert 'id="limit-reached"' in full.text and "Create credential" not in full.text
    refused = console.post("/domains/a-one.test/credentials", {"local": "sixth"})
    assert refused.status_code == 409 and "the most a domain may have" in refused.text
    reset = console.post("/domains/a-one.test/credentials/shop@a-one.test/reset")
    assert reset.status_code == 200 and 'id="new-password"' in reset.text
    deleted = console.post("/domains/a-one.test/credentials/shop@a-one.test/delete")
    assert deleted.status_code == 200 and "Deleted shop@a-one.test" in deleted.text
    with engine.connect() as conn:
        entries = conn.execute(
            select(AuditEntry.actor, AuditEntry.via, AuditEntry.action)
            .where(AuditEntry.target == "shop@a-one.test")
            .order_by(AuditEntry.id)
        ).all()
    assert [e.action for e in entries] == [
        "credential.create",
        "credential.reset",
        "credential.delete",
    ]
    assert {e.via for e in entries} == {"console"}


def test_paused_mail_filter_release_and_discard(
    console: ConsoleClient, engine: Engine, world: World
) -> None:
    signed_in(console, "boss@agency-a.test")
    page = console.get("/mail")
    assert world["a-one"].paused in page.text and world["a-two"].paused in page.text
    filtered = console.get("/mail", params={"account": "a-two"})
    assert world["a-one"].paused not in filtered.text
    none = console.get("/mail", params={"reason": "no such reason"})
    assert "No paused mail matches" in text_of(none.text)
    released = console.post("/mail/release", {"queue_id": str(world["a-one"].paused)})
    assert released.status_code == 200 and "Released" in released.text
    again = console.post("/mail/release", {"queue_id": str(world["a-one"].paused)})
    assert again.status_code == 409
    discarded = console.post("/mail/discard", {"account": "a-two"})
    assert discarded.status_code == 200
    with engine.connect() as conn:
        states = dict(conn.execute(select(Message.id, Message.state)).all())
    assert states[world["a-one"].paused] == "queued"
    assert states[world["a-two"].paused] == "dropped"
    assert states[world["b-one"].paused] == "paused"


def test_paused_mail_filters_are_the_services_and_release_all_moves_what_they_show(
    console: ConsoleClient, engine: Engine, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reason and campaign filter in SQL (not over a first page), and "Release all"
    with those filters moves exactly the rows the filtered screen showed."""
    spring = [
        put_message(engine, account_id(engine, "a-one"), "news@a-one.test", "paused")
        for _ in range(3)
    ]
    with engine.begin() as conn:
        conn.execute(
            update(Message)
            .where(Message.id.in_(spring))
            .values(campaign="spring", reason="hourly quota reached")
        )
    signed_in(console, "boss@agency-a.test")
    page = console.get("/mail", params={"campaign": "spring", "reason": "QUOTA"})
    assert {i for i in spring if i in page.text} == set(spring)
    assert world["a-one"].paused not in page.text and world["a-two"].paused not in page.text
    assert 'name="campaign" value="spring"' in page.text  # "Release all" keeps the filters
    # A page at a time (made 2 here), the filters kept on the link to older mail.
    monkeypatch.setattr(screens, "MAIL_PAGE", 2)
    first = console.get("/mail", params={"campaign": "spring"})
    older = re.search(r'href="/mail\?([^"]+)">Older paused mail', first.text)
    assert older and "campaign=spring" in html.unescape(older.group(1))
    rest = console.get("/mail?" + html.unescape(older.group(1)))
    shown = [{i for i in spring if i in p.text} for p in (first, rest)]
    assert len(shown[0]) == 2 and shown[0] | shown[1] == set(spring) and len(shown[1]) == 1
    assert "Older paused mail" not in rest.text
    monkeypatch.undo()
    bad = console.get("/mail", params={"campaign": "x" * 201})
    assert bad.status_code == 422 and "campaign must be 1 to 200" in text_of(bad.text)
    released = console.post(
        "/mail/release?state=paused&campaign=spring",
        {"account": "a-one", "campaign": "spring", "reason": "quota"},
    )
    assert released.status_code == 200
    assert "Released 3 paused message(s) of a-one." in text_of(released.text)
    assert "No paused mail matches these filters" in text_of(released.text)
    with engine.connect() as conn:
        now = dict(conn.execute(select(Message.id, Message.state)).all())
    assert {now[i] for i in spring} == {"queued"}
    assert now[world["a-one"].paused] == "paused"


def test_providers_list_detail_and_a_failing_live_check(console: ConsoleClient) -> None:
    signed_in(console, "boss@agency-a.test")
    listed = console.get("/providers")
    assert "agency-a-outbox" in listed.text and "b-one-smtp" not in listed.text
    detail = console.get("/providers/a-one-smtp")
    assert detail.status_code == 200 and "smtp-secret-of-a-one" not in detail.text
    assert "IP addresses to allowlist" in detail.text
    failed = console.post(
        "/providers",
        {
            "name": "dead",
            "kind": "smtp",
            "account": "a-one",
            "smtp_host": "127.0.0.1",
            "smtp_port": "2",
            "smtp_user": "u",
            "smtp_password": "p",
            "check": "on",
            "test_address": "t@a-one.test",
        },
    )
    assert failed.status_code == 422 and "failed its live check" in failed.text
    assert "The provider&#39;s answer" in failed.text or "provider's answer" in failed.text


def test_suppressions_usage_audit_and_limits(console: ConsoleClient) -> None:
    signed_in(console, "boss@agency-a.test")
    empty = console.get("/suppressions", params={"account": "a-one"})
    assert "No suppressed addresses" in empty.text
    added = console.post("/suppressions/add", {"account": "a-one", "address": "gone@example.org"})
    assert added.status_code == 200 and "gone@example.org" in added.text
    bad = console.post("/suppressions/add", {"account": "a-one", "address": "not an address"})
    assert bad.status_code == 422
    usage = console.get("/usage")
    assert usage.status_code == 200 and "<svg" in usage.text
    csv = console.get("/usage.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "a-one" in csv.text and "b-one" not in csv.text
    audit = console.get("/audit")
    assert "suppression.add" in audit.text


def test_limits_shown_and_set_within_the_agency(console: ConsoleClient) -> None:
    """An agency sets its sub-account's limits and sees them with their use; a bad
    spelling, its own limits and another tenant's account are refused."""
    signed_in(console, "boss@agency-a.test")
    empty = console.get("/limits", params={"account": "a-one"})
    assert empty.status_code == 200 and "No sending limit is set for a-one" in empty.text
    form = {"account": "a-one", "per_minute": "100/min", "rcpt_day": "50000/day"}
    done = console.post("/limits", form)
    assert done.status_code == 200 and "Limits of a-one changed" in done.text
    table = text_of(done.text)
    assert "100/min" in table and "50000/day" in table
    assert "50000" in console.get("/limits", params={"account": "a-one"}).text
    bad = console.post("/limits", {"account": "a-one", "per_minute": "lots/min"})
    assert bad.status_code == 422 and "lots" in bad.text
    nothing = console.post("/limits", {"account": "a-one"})
    assert nothing.status_code == 422
    own = console.post("/limits", {"account": "agency-a", "per_minute": "10/min"})
    assert own.status_code == 403
    assert console.post("/limits", {"account": "b-one", "per_minute": "1/min"}).status_code == 404
    assert console.get("/limits", params={"account": "b-one"}).status_code == 404


# -- the service: users ---------------------------------------------------------------


def test_users_service_rules(settings: Settings, engine: Engine, world: World) -> None:
    from relay.auth.passwords import make_hasher

    hasher = make_hasher(settings)
    with pytest.raises(Conflict):
        console_users.create_user(engine, hasher, "BOSS@agency-a.test", "agency-a")
    with pytest.raises(Invalid):
        console_users.create_user(engine, hasher, "x@y.test", "agency-a", role="owner")
    with pytest.raises(Invalid):
        console_users.create_user(engine, hasher, "x@y.test", "agency-a", password="short")
    agency_b = Actor("token:1", "api", console_users.scope.Scope(frozenset({999})), 999)
    with acting(agency_b), pytest.raises(NotFound):
        console_users.create_user(engine, hasher, "x@y.test", "agency-a")
    with acting(agency_b), pytest.raises(OperatorOnly):
        console_users.create_user(engine, hasher, "x@y.test", None, operator=True)
    new = console_users.create_user(engine, hasher, "gen@agency-a.test", "a-one")
    assert len(new.password) >= 12
    assert console_users.sign_in(engine, hasher, "gen@agency-a.test", new.password, 60)
    reset = console_users.reset_password(engine, hasher, "gen@agency-a.test", None)
    assert console_users.sign_in(engine, hasher, "gen@agency-a.test", new.password, 60) is None
    assert console_users.sign_in(engine, hasher, "gen@agency-a.test", reset.password, 60)
    console_users.remove_user(engine, "gen@agency-a.test")
    with pytest.raises(NotFound):
        console_users.remove_user(engine, "gen@agency-a.test")


# -- the command line: relay user ... -------------------------------------------------


def test_relay_user_verbs(
    settings: Settings,
    engine: Engine,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from relay.auth.passwords import make_hasher
    from relay.cli import main
    from tests.api_support import local_cli_reads

    local_cli_reads(settings, monkeypatch)
    hasher = make_hasher(settings)
    assert main(["user", "create", "ops@a-one.test", "--account", "a-one", "--role", "viewer"]) == 0
    out = capsys.readouterr().out
    password = next(
        line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("password: ")
    )
    assert console_users.sign_in(engine, hasher, "ops@a-one.test", password, 60)
    secret = tmp_path / "pw"
    secret.write_text("from-a-file-0123\n")
    assert main(["user", "reset-password", "ops@a-one.test", "--password-file", str(secret)]) == 0
    assert "password:" not in capsys.readouterr().out  # given, so never printed
    assert console_users.sign_in(engine, hasher, "ops@a-one.test", "from-a-file-0123", 60)
    assert main(["user", "list"]) == 0
    listed = capsys.readouterr().out
    assert "ops@a-one.test" in listed and "viewer" in listed and "operator" in listed
    assert main(["user", "create", "ops@a-one.test", "--account", "a-one"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["user", "create", "nobody@x.test"]) == 1
    assert "name the user's account" in capsys.readouterr().err
    assert main(["user", "remove", "ops@a-one.test"]) == 0
    assert main(["user", "remove", "ops@a-one.test"]) == 1
    with engine.connect() as conn:
        actions = conn.execute(
            select(AuditEntry.action, AuditEntry.via).where(AuditEntry.target == "ops@a-one.test")
        ).all()
    assert ("user.create", "cli") in actions and ("user.remove", "cli") in actions


def test_console_changes_are_in_the_apis_audit_log_as_documented(
    console: ConsoleClient, world: World
) -> None:
    signed_in(console, "boss@agency-a.test")
    assert (
        console.post("/domains", {"domain": "audit.a-one.test", "account": "a-one"}).status_code
        == 200
    )
    api = httpx.Client(
        base_url=console.base + "/api/v1",
        headers={"Authorization": f"Bearer {world['agency-a'].token}"},
        timeout=10,
    )
    with api:
        entries = api.get("/audit").json()["items"]
        document = api.get("/openapi.json").json()
    entry = next(e for e in entries if e["target"] == "audit.a-one.test")
    assert entry["via"] == "console" and entry["actor"].startswith("user:")
    via = document["components"]["schemas"]["AuditOut"]["properties"]["via"]["enum"]
    assert entry["via"] in via


def test_provider_edit_test_default_and_assign(console: ConsoleClient, engine: Engine) -> None:
    signed_in(console, "boss@agency-a.test")
    # a-one-smtp points at a port nothing listens on: the edit's check fails, nothing changes.
    edit = console.post(
        "/providers/a-one-smtp/edit",
        {"smtp_host": "127.0.0.1", "smtp_port": "3", "check": "on", "has_insecure_switch": "1"},
    )
    assert edit.status_code == 422 and "the edit was not applied" in edit.text
    assert "smtp_port</dt><dd>2<" in edit.text.replace("\n", "")
    test = console.post("/providers/a-one-smtp/test", {"to": "someone@example.org"})
    assert test.status_code == 422 and "The test failed" in test.text
    saved = console.post(
        "/providers/a-one-smtp/edit",
        {"allow_insecure_tls": "on", "domain": "a-one.test", "has_insecure_switch": "1"},
    )
    assert saved.status_code == 200 and "Saved." in saved.text
    flat = saved.text.replace("\n", "")
    assert "allow_insecure_tls</dt><dd>True<" in flat and "a-one.test" in flat
    assigned = console.post("/providers/a-one-smtp/assign", {"account": "a-one"})
    assert assigned.status_code == 200 and "a-one now sends through a-one-smtp" in assigned.text
    default = console.post(
        "/providers/agency-a-outbox/default", {"account": "agency-a", "scope": "subaccounts"}
    )
    assert default.status_code == 200 and "default of agency-a" in default.text
    refused = console.post("/providers/a-one-smtp/assign", {"account": "b-one"})
    assert refused.status_code == 404  # another tenant's account does not exist for this user


def test_a_code_that_is_wrong_is_refused(console: ConsoleClient) -> None:
    signed_in(console, "boss@agency-a.test")
    wrong = console.post(
        "/senders/confirm", {"address": "x@a-one.test", "account": "a-one", "code": "000000"}
    )
    assert wrong.status_code in (404, 409, 422) and 'class="notice error"' in wrong.text


def test_a_domain_verified_by_dns(tmp_path: Path, dns: TinyDNS) -> None:
    settings = api_settings(
        tmp_path / "dnsvar",
        None,
        dns={"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 2},
    )
    engine = fresh_engine(settings)
    accounts.create_account(engine, "solo")
    make_user(settings, engine, "me@solo.test", "solo")
    thread = RelayThread(settings, engine).start()
    client = ConsoleClient(thread)
    try:
        signed_in(client, "me@solo.test")
        assert (
            client.post("/domains", {"domain": "solo.test", "account": "solo"}).status_code == 200
        )
        first = client.post("/domains/solo.test/verify", {"account": "solo"})
        assert first.status_code == 422 and "not found yet" in first.text
        value = re.search(r'id="record-value">([^<]+)<', first.text)
        assert value is not None
        dns.records[dnsverify.record_name("solo.test")] = [html.unescape(value.group(1))]
        second = client.post("/domains/solo.test/verify", {"account": "solo"})
        assert second.status_code == 200 and "solo.test is verified by DNS" in second.text
        assert "yes (dns)" in second.text
    finally:
        client.close()
        thread.stop()
        engine.dispose()


def test_a_malformed_name_in_a_path_is_a_clear_error(console: ConsoleClient) -> None:
    signed_in(console, "boss@agency-a.test")
    page = console.get("/domains/not a domain!/credentials")
    assert page.status_code == 422 and "<h1>" in page.text
    assert console.get("/no/such/page").status_code == 404
    assert console.post("/mail/explode", {}).status_code == 404


def test_an_expired_session_signs_out(console: ConsoleClient, engine: Engine) -> None:
    signed_in(console, "boss@agency-a.test")
    assert console.get("/").status_code == 200
    with engine.begin() as conn:
        conn.execute(
            update(ConsoleSession).values(
                expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            )
        )
    assert console.get("/").status_code == 303


def test_names_are_escaped(console: ConsoleClient, engine: Engine) -> None:
    accounts.create_account(engine, "<script>alert(1)</script>", agency="agency-a")
    signed_in(console, "boss@agency-a.test")
    page = console.get("/").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_an_operator_acts_on_a_sub_account_by_its_qualified_name(
    console: ConsoleClient, engine: Engine
) -> None:
    accounts.create_account(engine, "a-one", agency="agency-b")  # the same name in another tree
    signed_in(console, "root@relay.test")
    page = console.get("/domains").text
    assert 'value="agency-a:a-one"' in page and 'value="agency-b:a-one"' in page
    added = console.post("/domains", {"domain": "op.a-one.test", "account": "agency-b:a-one"})
    assert added.status_code == 200
    assert "agency-b:a-one" in text_of(added.text)
