"""The admin API, endpoint by endpoint, over real HTTP against a real relay.

Every test runs on SQLite and on PostgreSQL. The world (tests/api_support.py)
has two agencies with sub-accounts, credentials, senders and queued mail.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from relay.admin.api.auth import Caller
from relay.core.settings import Settings
from relay.service import accounts, tokens
from relay.store.models import Attempt, AuditEntry, Credential, Message
from tests.api_support import Api, World, account_id, api_settings, build_world, error, put_message
from tests.support import PASSWORD, RelayThread, connect


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return api_settings(tmp_path / "var", db_url, auth={"max_failures_per_ip": 3, "lockout": 60})


@pytest.fixture
def world(settings: Settings, engine: Engine) -> World:
    return build_world(settings, engine)


@pytest.fixture
def served(settings: Settings, engine: Engine, world: World) -> Iterator[RelayThread]:
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


@pytest.fixture
def client(served: RelayThread) -> Iterator[Callable[[str | None], Api]]:
    """Clients for tokens, closed at the end of the test."""
    made: list[Api] = []

    def make(token: str | None) -> Api:
        made.append(Api(served, token))
        return made[-1]

    yield make
    for api in made:
        api.close()


@pytest.fixture
def op(client: Callable[[str | None], Api], world: World) -> Api:
    return client(world.operator)


# -- accounts and domains -------------------------------------------------------------


def test_accounts(op: Api, served: RelayThread, world: World) -> None:
    names = [a["name"] for a in op.get("/accounts").json()]
    assert names == ["a-one", "a-two", "agency-a", "agency-b", "b-one"]
    made = op.post("/accounts", {"name": "agency-c", "policy": "pause"})
    assert made.status_code == 201
    assert made.json()["kind"] == "agency" and made.json()["unverified_policy"] == "pause"
    sub = op.post("/accounts", {"name": "c-one", "agency": "agency-c"})
    assert sub.status_code == 201 and sub.json()["agency"] == "agency-c"
    shown = op.get("/accounts/c-one").json()
    assert shown["kind"] == "sub-account" and shown["agency"] == "agency-c"
    assert error(op.get("/accounts/nobody")) == {
        "code": "not_found",
        "message": "account 'nobody' does not exist",
        "field": None,
    }
    assert op.post("/accounts", {"name": "agency-c"}).status_code == 409
    bad = op.post("/accounts", {"name": "x", "policy": "bounce"})
    assert bad.status_code == 422 and error(bad)["field"] == "policy"
    long = op.post("/accounts", {"name": "x" * 300})
    assert long.status_code == 422 and error(long)["field"] == "name"


def test_an_agency_makes_sub_accounts_but_not_agencies(
    client: Callable[[str | None], Api], world: World
) -> None:
    agency = client(world["agency-a"].token)
    assert agency.post("/accounts", {"name": "a-three", "agency": "agency-a"}).status_code == 201
    refused = agency.post("/accounts", {"name": "rogue"})
    assert refused.status_code == 403 and error(refused)["code"] == "forbidden"
    names = [a["name"] for a in agency.get("/accounts").json()]
    assert names == ["a-one", "a-three", "a-two", "agency-a"]


def test_domains(op: Api) -> None:
    added = op.post("/accounts/a-one/domains", {"domain": "Mail.A-One.test"})
    assert added.status_code == 201 and added.json()["name"] == "mail.a-one.test"
    listed = [d["name"] for d in op.get("/accounts/a-one/domains").json()]
    assert listed == ["a-one.test", "mail.a-one.test"]
    taken = op.post("/accounts/a-two/domains", {"domain": "a-one.test"})
    assert taken.status_code == 409 and "already belongs" in error(taken)["message"]
    bad = op.post("/accounts/a-one/domains", {"domain": "not a domain"})
    assert bad.status_code == 422 and error(bad)["field"] == "domain"
    assert op.post("/accounts/nobody/domains", {"domain": "x.test"}).status_code == 404
    assert op.get("/accounts/nobody/domains").status_code == 404


# -- credentials ----------------------------------------------------------------------


def smtp_login(served: RelayThread, username: str, password: str) -> bool:
    try:
        with connect(served, "submission", login=(username, password)):
            return True
    except smtplib.SMTPAuthenticationError:
        return False


def test_credentials_show_a_password_once(op: Api, served: RelayThread, engine: Engine) -> None:
    made = op.post("/credentials", {"username": "web@a-one.test", "purpose": "campaign"})
    assert made.status_code == 201
    password = made.json()["password"]
    assert len(password) >= 20 and smtp_login(served, "web@a-one.test", password)
    listed = op.get("/domains/a-one.test/credentials")
    assert [c["username"] for c in listed.json()] == ["app@a-one.test", "web@a-one.test"]
    assert password not in listed.text and "argon2" not in listed.text
    assert set(listed.json()[1]) == {
        "username",
        "purpose",
        "unverified_policy",
        "created_at",
        "password_set_at",
    }
    reset = op.post("/credentials/web@a-one.test/reset")
    new = reset.json()["password"]
    assert reset.status_code == 200 and new != password
    assert not smtp_login(served, "web@a-one.test", password)
    assert smtp_login(served, "web@a-one.test", new)
    chosen = op.post("/credentials/web@a-one.test/reset", {"password": "chosen-password-1"})
    assert chosen.json() == {"username": "web@a-one.test", "password": None}
    assert op.delete("/credentials/web@a-one.test").json() == {"username": "web@a-one.test"}
    assert op.delete("/credentials/web@a-one.test").status_code == 404
    with engine.connect() as conn:
        assert "chosen-password-1" not in str(conn.execute(select(Credential)).all())


def test_credential_rules(op: Api) -> None:
    for i in range(4):
        assert op.post("/credentials", {"username": f"u{i}@a-one.test"}).status_code == 201
    sixth = op.post("/credentials", {"username": "u5@a-one.test"})
    assert sixth.status_code == 409 and "already has 5 credentials" in error(sixth)["message"]
    short = op.post("/credentials", {"username": "x@a-two.test", "password": "short"})
    assert short.status_code == 422 and error(short)["field"] == "password"
    nodomain = op.post("/credentials", {"username": "x@elsewhere.test"})
    assert nodomain.status_code == 404
    bad = op.post("/credentials", {"username": "no-at-sign"})
    assert bad.status_code == 422 and error(bad)["field"] == "username"
    again = op.post("/credentials", {"username": "app@a-two.test", "password": PASSWORD})
    assert again.status_code == 409
    assert op.get("/domains/elsewhere.test/credentials").status_code == 404


# -- senders ------------------------------------------------------------------------


def test_senders(op: Api) -> None:
    verified = op.post("/accounts/a-one/senders", {"sender": "Boss@Example.org"}).json()
    assert verified.pop("verified_at")
    assert verified == {
        "sender": "boss@example.org",
        "kind": "address",
        "verified": True,
        "method": "operator",
        "proved_by": None,
    }
    dns = op.post("/accounts/a-one/senders/dns", {"domain": "brand.test"})
    assert dns.status_code == 422 and error(dns)["field"] == "domain"  # no DNS answers here
    listed = op.get("/accounts/a-one/senders").json()
    assert [(s["sender"], s["verified"], s["method"]) for s in listed] == [
        ("a-one.test", True, "operator"),
        ("boss@example.org", True, "operator"),
        ("brand.test", False, None),
    ]
    assert listed[2]["verified_at"] is None
    assert op.delete("/accounts/a-one/senders/boss@example.org").status_code == 204
    gone = op.delete("/accounts/a-one/senders/boss@example.org")
    assert gone.status_code == 404
    assert error(gone)["message"] == "boss@example.org is not a sender of account a-one"


def test_dns_challenge(
    tmp_path: Path, any_db_url: str, engine: Engine, world: World, settings: Settings
) -> None:
    from tests.test_dns_verify import TinyDNS

    with contextlib.ExitStack() as closing:
        dns = TinyDNS()
        closing.callback(dns.close)
        local = api_settings(tmp_path / "var", any_db_url, dns={"port": dns.port, "timeout": 2})
        thread = RelayThread(local, engine).start()
        closing.callback(thread.stop)
        api = Api(thread, world.operator)
        closing.callback(api.close)
        first = api.post("/accounts/a-one/senders/dns", {"domain": "brand.test"}).json()
        assert first["record"] == "_relay-verification.brand.test" and not first["verified"]
        dns.records[first["record"]] = [first["value"]]
        again = api.post("/accounts/a-one/senders/dns", {"domain": "brand.test"}).json()
        assert again == {**first, "verified": True}


# -- the queue ------------------------------------------------------------------------


def test_queue_pages_and_filters(op: Api, engine: Engine, world: World) -> None:
    a_one = account_id(engine, "a-one")
    ids = [put_message(engine, a_one, "news@a-one.test", "deferred", age=i) for i in range(7)]
    seen, cursor = [], None
    while True:
        params = {"account": "a-one", "state": "deferred", "limit": 3}
        page = op.get("/queue", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids  # newest first (age 0, 1, ...), each once
    by_sender = op.get("/queue", params={"sender": "news@a-one.test"}).json()["items"]
    assert {m["id"] for m in by_sender} == set(ids)
    by_domain = op.get("/queue", params={"sender": "b-one.test"}).json()["items"]
    assert {m["id"] for m in by_domain} == {world["b-one"].paused, world["b-one"].queued}
    assert len(op.get("/queue").json()["items"]) == 13
    assert error(op.get("/queue", params={"state": "lost"}))["field"] == "state"
    assert error(op.get("/queue", params={"cursor": "bm9wZQ"}))["field"] == "cursor"
    assert error(op.get("/queue", params={"limit": 501}))["field"] == "limit"
    assert op.get("/queue", params={"account": "nobody"}).status_code == 404


def test_queue_show_with_attempts(op: Api, engine: Engine, world: World) -> None:
    queued = world["a-one"].queued
    with engine.begin() as conn:
        conn.execute(
            Attempt.__table__.insert(),
            [
                {"message_id": queued, "provider": "p", "transport": "api", "result": "transient",
                 "code": "429", "text": "slow down", "duration": 0.25},
                {"message_id": queued, "provider": "p", "transport": "smtp", "result": "transient",
                 "code": "451", "text": "try later", "duration": 0.5},
            ],
        )  # fmt: skip
    shown = op.get(f"/queue/{queued}").json()
    assert shown["account"] == "a-one" and shown["state"] == "queued"
    assert [r["kind"] for r in shown["recipients"]] == ["to", "bcc"]
    assert [(a["transport"], a["code"]) for a in shown["history"]] == [
        ("api", "429"),
        ("smtp", "451"),
    ]
    assert error(op.get("/queue/NOSUCHID"))["message"] == "message NOSUCHID is not in the queue"


def test_queue_moves(op: Api, engine: Engine, world: World) -> None:
    a_one, b_one = world["a-one"], world["b-one"]
    assert op.post(f"/queue/{a_one.queued}/retry").json() == {"messages": [a_one.queued]}
    assert op.post(f"/queue/{a_one.paused}/retry").status_code == 409
    assert op.post(f"/queue/{a_one.paused}/release").json() == {"messages": [a_one.paused]}
    assert op.post(f"/queue/{a_one.paused}/release").status_code == 409
    assert op.post(f"/queue/{world['a-two'].paused}/discard").status_code == 200
    extra = put_message(engine, account_id(engine, "b-one"), "app@b-one.test", "paused")
    bulk = op.post("/queue/release", {"sender": "b-one.test"}).json()
    assert sorted(bulk["messages"]) == sorted([b_one.paused, extra])
    assert op.post("/queue/discard", {"account": "b-one"}).json() == {"messages": []}
    assert op.post("/queue/discard", {}).status_code == 422
    with engine.connect() as conn:
        states = dict(conn.execute(select(Message.id, Message.state)).all())
    assert states[a_one.paused] == "queued" and states[world["a-two"].paused] == "dropped"
    assert states[b_one.paused] == "queued" and states[extra] == "queued"


# -- usage, audit, health, the document ------------------------------------------------


def test_usage(op: Api, client: Callable[[str | None], Api], world: World) -> None:
    report = op.get("/usage", params={"account": "agency-a"}).json()
    lines = [(line["account"], line["type"], line["recipients"]) for line in report["lines"]]
    assert lines == [
        ("agency-a", "agency", 0),
        ("a-one", "sub-account", 4),
        ("a-two", "sub-account", 4),
        ("agency-a", "agency-total", 8),
    ]
    assert report["price_per_1000"] == "0.675" and report["lines"][-1]["cost"] == "0.0054"
    csv = op.get("/usage", params={"format": "csv", "account": "a-one"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[1].startswith("a-one,agency-a,sub-account,")
    table = op.get("/usage", params={"format": "table"})
    assert table.headers["content-type"].startswith("text/plain") and "b-one" in table.text
    bad = op.get("/usage", params={"from": "2026-13-01"})
    assert bad.status_code == 422 and error(bad)["field"] == "from"
    mine = client(world["b-one"].token).get("/usage").json()
    assert [line["account"] for line in mine["lines"]] == ["b-one"]


def test_health_and_readiness(op: Api) -> None:
    assert httpx.get(op.base + "/api/v1/healthz").json() == {"status": "ok"}
    ready = httpx.get(op.base + "/api/v1/readyz").json()
    assert ready == {"status": "ok", "checks": {"database": True, "spool": True, "listeners": True}}
    assert httpx.get(op.base + "/readyz").status_code == 200  # the probe at the root stays


def test_openapi_document_and_docs_page(op: Api) -> None:
    document = httpx.get(op.base + "/api/v1/openapi.json").json()
    assert document["servers"] == [{"url": "/api/v1"}]
    assert {"/accounts", "/queue", "/usage", "/audit", "/readyz"} <= set(document["paths"])
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    docs = httpx.get(op.base + "/api/v1/docs")
    assert docs.status_code == 200 and "/api/v1/openapi.json" in docs.text


# -- tokens and errors ---------------------------------------------------------------


def test_tokens_are_checked_and_failures_limited(
    client: Callable[[str | None], Api], world: World, engine: Engine
) -> None:
    anonymous = client(None)
    missing = anonymous.get("/accounts")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    for _ in range(3):  # a missing token is not a guess: never locks
        assert anonymous.get("/accounts").status_code == 401
    revoked = tokens.create_token(engine, "a-one")
    tokens.revoke_token(engine, revoked.id)
    assert client(revoked.token).get("/accounts").status_code == 401
    assert client("rly_guess").get("/accounts").status_code == 401
    assert client(world.operator + "x").get("/accounts").status_code == 401
    locked = client("rly_another-guess").get("/accounts")  # the address is locked now
    assert locked.status_code == 429 and locked.headers["retry-after"] == "60"
    assert error(locked)["code"] == "rate_limited"


def test_a_valid_token_is_never_refused_for_other_tokens_failures(
    client: Callable[[str | None], Api], world: World
) -> None:
    """Finding 6: bad tokens from one address must not lock the operator out."""
    guesser = client("rly_guess")
    answers = [guesser.get("/accounts").status_code for _ in range(10)]
    assert answers == [401] * 3 + [429] * 7
    for _ in range(3):  # the operator's token, from the same (locked) address
        assert client(world.operator).get("/accounts").status_code == 200
    assert client(world["a-one"].token).get("/accounts").status_code == 200
    assert guesser.get("/accounts").status_code == 429  # still locked for unknown tokens


def test_malformed_requests_get_422(op: Api) -> None:
    raw = op(
        "POST", "/accounts", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 422 and error(raw)["message"] == "the request body is not valid JSON"
    extra = op.post("/accounts", {"name": "x", "colour": "red"})
    assert extra.status_code == 422 and error(extra)["field"] == "colour"
    typed = op.post("/accounts", {"name": 7})
    assert typed.status_code == 422 and error(typed)["field"] == "name"
    control = op.get("/accounts/a%00b")
    assert control.status_code == 422 and "control characters" in error(control)["message"]
    unknown = op.get("/nowhere")
    assert unknown.status_code == 404 and error(unknown)["code"] == "not_found"
    assert error(op("PUT", "/accounts"))["code"] == "method_not_allowed"


def test_an_unexpected_error_is_500_and_tells_nothing(
    op: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(engine: Engine) -> None:
        raise RuntimeError("db password is hunter2")

    monkeypatch.setattr(accounts, "list_accounts", broken)
    with caplog.at_level(logging.ERROR, logger="relay.api"):
        answer = op.get("/accounts")
    assert answer.status_code == 500 and "hunter2" not in answer.text
    assert error(answer)["code"] == "internal"
    assert [r.name for r in caplog.records if r.exc_info] == ["relay.api"]  # logged once
    assert "hunter2" in str(caplog.records[-1].exc_info)


def test_a_route_that_forgets_its_token_acts_as_nobody(
    op: Api, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    """Fail closed: outside ``Caller.run`` a request is anonymous, not the operator."""

    def forgetful(self: Caller, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return fn(*args, **kw)

    monkeypatch.setattr(Caller, "run", forgetful)
    refused = op.post("/accounts/a-one/domains", {"domain": "new.test"})
    assert refused.status_code == 404
    with engine.connect() as conn:
        entry = conn.execute(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
    assert entry is not None and (entry.actor, entry.result) == ("anonymous", "not_found")


def test_changes_are_audited_with_the_token(op: Api, engine: Engine, world: World) -> None:
    op.post("/credentials", {"username": "aud@a-one.test"})
    op.post("/credentials", {"username": "aud@a-one.test"})
    entries = op.get("/audit", params={"limit": 2}).json()["items"]
    operator_id = next(t.id for t in tokens.list_tokens(engine) if t.scope == "operator")
    assert [(e["actor"], e["via"], e["action"], e["result"]) for e in entries] == [
        (f"token:{operator_id}", "api", "credential.create", "conflict"),
        (f"token:{operator_id}", "api", "credential.create", "ok"),
    ]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(Credential.username == "aud@a-one.test"))


# -- providers ------------------------------------------------------------------------


def test_providers_list_show_test_egress(op: Api, client: Callable[[str | None], Api]) -> None:
    names = [p["name"] for p in op.get("/providers").json()]
    assert names == ["a-one-smtp", "a-two-smtp", "agency-a-outbox", "agency-b-outbox", "b-one-smtp"]
    shown = op.get("/providers/a-one-smtp")
    assert "smtp-secret-of-a-one" not in shown.text
    assert shown.json()["secrets"] == {"smtp_password": "****-one"}
    assert shown.json()["options"]["smtp_host"] == "127.0.0.1"
    assert op.get("/providers/agency-a-outbox").json()["used_by"] == ["agency-a"]
    sent = op.post("/providers/agency-a-outbox/test", {"to": "x@example.org"}).json()
    assert sent == {
        "ok": True,
        "legs": [{"transport": "file", "ok": True, "detail": sent["legs"][0]["detail"]}],
    }
    refused = op.post("/providers/a-one-smtp/test", {"to": "x@example.org"}).json()
    assert refused["ok"] is False and refused["legs"][0]["transport"] == "smtp"
    egress = op.get("/providers/a-one-smtp/egress").json()
    assert egress == [{"transport": "smtp", "address": "127.0.0.1"}]
    assert error(op.get("/providers/nope"))["message"] == "provider 'nope' does not exist"


def test_provider_routes_and_removal(op: Api, engine: Engine) -> None:
    default = op("PUT", "/accounts/a-one/default-provider", json={"provider": "a-one-smtp"})
    assert default.json() == {"account": "a-one", "provider": "a-one-smtp", "for": "own"}
    subs = {"provider": "a-one-smtp", "for": "subaccounts"}
    not_agency = op("PUT", "/accounts/a-one/default-provider", json=subs)
    assert not_agency.status_code == 422 and error(not_agency)["field"] == "account"
    bad_for = op("PUT", "/accounts/a-one/default-provider", json={**subs, "for": "all"})
    assert bad_for.status_code == 422 and error(bad_for)["field"] == "for"
    theirs = op("PUT", "/accounts/a-one/default-provider", json={"provider": "b-one-smtp"})
    assert theirs.status_code == 422 and error(theirs)["field"] == "provider"
    assigned = op("PUT", "/accounts/a-two/assigned-provider", json={"provider": "agency-a-outbox"})
    assert assigned.json() == {"account": "a-two", "provider": "agency-a-outbox"}
    agency = op("PUT", "/accounts/agency-a/assigned-provider", json={"provider": "a-one-smtp"})
    assert agency.status_code == 422
    assert op.delete("/accounts/a-two/assigned-provider").status_code == 200
    assert op.delete("/accounts/a-two/assigned-provider").status_code == 409
    in_use = op.delete("/providers/agency-b-outbox")
    assert in_use.status_code == 409 and "in use by agency-b;" in error(in_use)["message"]
    moved = op.delete("/providers/agency-b-outbox", params={"replacement": "b-one-smtp"}).json()
    assert moved == {
        "name": "agency-b-outbox",
        "replacement": "b-one-smtp",
        "moved": ["agency-b"],
    }
    assert op.delete("/providers/a-two-smtp").json()["moved"] == []
    actions = [e["action"] for e in op.get("/audit", params={"limit": 10}).json()["items"]]
    assert actions[:9] == [
        "provider.remove",
        "provider.remove",
        "provider.remove",
        "provider.unassign",
        "provider.unassign",
        "provider.assign",
        "provider.assign",
        "provider.default",
        "provider.default",
    ]


def test_add_and_edit_provider_after_the_live_check(
    op: Api, client: Callable[[str | None], Api], world: World
) -> None:
    from tests.emulated import API_KEY, EmulatorThread

    thread = EmulatorThread()
    emulator = thread.start()
    try:
        body = {
            "name": "sg-a",
            "account": "agency-a",
            "kind": "sendgrid",
            "api_key": API_KEY,
            "api_url": emulator.sendgrid_url,
            "smtp_host": "127.0.0.1",
            "smtp_port": emulator.smtp_port,
            "smtp_tls": "none",
            "test_address": "ops@agency-a.test",
        }
        made = op.post("/providers", body)
        assert made.status_code == 201, made.text
        assert [(g["transport"], g["ok"]) for g in made.json()["legs"]] == [
            ("api", True),
            ("smtp", True),
        ]
        assert API_KEY not in made.text
        bad = op.post("/providers", {**body, "name": "sg-b", "api_key": "SG.wrong-key-1234"})
        assert bad.status_code == 422 and error(bad)["field"] == "provider"
        assert "failed its live check; not saved" in error(bad)["message"]
        assert "SG.wrong-key-1234" not in bad.text
        untested = op.post("/providers", {**body, "name": "sg-c", "test_address": None})
        assert untested.status_code == 422 and error(untested)["field"] == "test_address"
        assert op.post("/providers", body).status_code == 409
        broken = op("PATCH", "/providers/sg-a", json={"api_key": "SG.bad-key-5678"})
        assert broken.status_code == 422
        assert "the edit was not applied" in error(broken)["message"]
        edited = op("PATCH", "/providers/sg-a", json={"ip_pool": "bulk"})
        assert edited.status_code == 200, edited.text
        assert op.get("/providers/sg-a").json()["options"]["ip_pool"] == "bulk"
        # Another agency's token cannot see it, nor edit it.
        other = client(world["agency-b"].token)
        assert other("PATCH", "/providers/sg-a", json={"ip_pool": "x"}).status_code == 404
    finally:
        thread.stop()
