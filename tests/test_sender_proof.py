"""Who may verify a sender, and how it is proved (issue 10, finding 1).

The operator verifies by say-so; a tenant proves: a domain by DNS, an address
by a code mailed to it through the account's route (the provider emulator
receives it, and the test reads the code there). An agency extends to its
sub-accounts only what it has proved itself. Runs on SQLite and PostgreSQL,
over the real admin API and real SMTP.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, column, insert, select, table, update

from relay.cli import main
from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.service import accounts, providers
from relay.store.engine import make_engine, migrate
from relay.store.models import ApiToken, AuditEntry, Sender, SenderConfirmation
from tests.api_support import Api, World, api_settings, build_world, error, local_cli_reads
from tests.emulated import add_emulated_provider
from tests.support import PASSWORD, RelayThread, connect, message
from tests.test_dns_verify import TinyDNS

TEST_ADDRESS = "ops@agency-a.test"


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str, dns: TinyDNS) -> Settings:
    # Unverified senders are refused at the end of DATA, so a test sees them.
    return api_settings(
        tmp_path / "var",
        db_url,
        policy={"default_unverified": "reject"},
        dns={"port": dns.port, "timeout": 2},
    )


@pytest.fixture
def world(settings: Settings, engine: Engine, emulator: Emulator) -> World:
    """The API world, with agency-a's SendGrid (emulated) carrying agency-a's own
    mail and a-one's and a-two's: their codes come from its test address."""
    world = build_world(settings, engine)
    add_emulated_provider(
        settings, engine, emulator, "agency-a-sg", "sendgrid", "agency-a", test_address=TEST_ADDRESS
    )
    providers.set_default(engine, "agency-a-sg", "agency-a", "own")
    for sub in ("a-one", "a-two"):
        providers.assign(engine, "agency-a-sg", sub)
    return world


@pytest.fixture
def served(
    settings: Settings, engine: Engine, world: World, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RelayThread]:
    # The local command line reads the same configuration as the relay.
    local_cli_reads(settings, monkeypatch, RELAY_POLICY_DEFAULT_UNVERIFIED="reject")
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


@pytest.fixture
def apis(served: RelayThread, world: World) -> Iterator[dict[str, Api]]:
    made = {name: Api(served, world[name].token) for name in world.tenants}
    made["operator"] = Api(served, world.operator)
    yield made
    for api in made.values():
        api.close()


def send_as(relay: RelayThread, world: World, account: str, sender: str) -> int:
    """An SMTP user of ``account`` sends as ``sender``: the end-of-DATA reply code."""
    login = (world[account].username or "", PASSWORD)
    with connect(relay, "submission", login=login) as client:
        try:
            client.sendmail(sender, ["bob@example.org"], message(sender))
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
    return 250


def senders(engine: Engine, account_id: int | None = None) -> list[tuple[str, bool, str | None]]:
    query = select(Sender.pattern, Sender.verified, Sender.method).order_by(Sender.pattern)
    if account_id is not None:
        query = query.where(Sender.account_id == account_id)
    with engine.connect() as conn:
        return [(p, v, m) for p, v, m in conn.execute(query).all()]


def mailed_code(emulator: Emulator, to: str) -> str:
    """The code in the last message the emulated SendGrid took for ``to``."""
    for body in reversed(emulator.sendgrid.accepted()):
        people = [p["email"] for p in body["personalizations"][0]["to"]]
        if people == [to]:
            assert body["from"]["email"] == TEST_ADDRESS
            found = re.search(r"code is: (\d{8})", json.dumps(body))
            assert found, body
            return found.group(1)
    raise AssertionError(f"no code was mailed to {to}")


# -- say-so -----------------------------------------------------------------------


def test_a_tenant_cannot_verify_a_sender_by_say_so(
    served: RelayThread, world: World, engine: Engine, apis: dict[str, Api]
) -> None:
    """The reproduction: a tenant verified another tenant's domain (or a bank's)."""
    before = senders(engine)
    for token, account, sender in [
        ("a-one", "a-one", "b-one.test"),
        ("a-one", "a-one", "bank.test"),
        ("a-one", "a-one", "ceo@bank.test"),
        ("agency-a", "a-one", "b-one.test"),  # an agency for its sub-account, unproved
        ("agency-a", "agency-a", "bank.test"),
    ]:
        answer = apis[token].post(f"/accounts/{account}/senders", {"sender": sender})
        assert answer.status_code == 403, (token, sender, answer.text)
        assert error(answer)["code"] == "forbidden"
        assert "only the operator verifies a sender by say-so" in error(answer)["message"]
    # Outside the token's scope it stays 404, word for word as for no account at all.
    hidden = apis["a-one"].post("/accounts/b-one/senders", {"sender": "b-one.test"})
    ghost = apis["a-one"].post("/accounts/nobody/senders", {"sender": "b-one.test"})
    assert hidden.status_code == ghost.status_code == 404
    assert error(hidden)["message"] == error(ghost)["message"].replace("nobody", "b-one")
    assert senders(engine) == before
    assert send_as(served, world, "a-one", "billing@b-one.test") == 550
    assert send_as(served, world, "a-one", "ceo@bank.test") == 550
    with engine.connect() as conn:
        refused = conn.execute(
            select(AuditEntry.target).where(
                AuditEntry.action == "sender.verify", AuditEntry.result == "forbidden"
            )
        ).all()
    assert len(refused) == 5
    # The operator's word still verifies, and says so.
    done = apis["operator"].post("/accounts/a-one/senders", {"sender": "b-one.test"})
    assert done.status_code == 200 and done.json()["method"] == "operator"
    assert send_as(served, world, "a-one", "billing@b-one.test") == 250


def test_the_local_command_line_is_the_operator(
    served: RelayThread, world: World, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sender", "verify", "bank.test", "--account", "a-one"]) == 0
    url = f"http://127.0.0.1:{served.relay.admin_port}"  # type: ignore[union-attr]
    argv = ["--url", url, "--token", world["a-one"].token, "sender", "verify", "x.test"]
    assert main([*argv, "--account", "a-one"]) == 1
    _, err = capsys.readouterr()
    assert "only the operator verifies a sender by say-so" in err
    assert ("bank.test", True, "operator") in senders(engine)
    assert ("x.test", True, "operator") not in senders(engine)


# -- confirmation by mail -------------------------------------------------------------


def test_an_address_is_verified_by_the_code_mailed_to_it(
    served: RelayThread, world: World, engine: Engine, emulator: Emulator, apis: dict[str, Api]
) -> None:
    api = apis["a-one"]
    assert send_as(served, world, "a-one", "boss@example.org") == 550
    started = api.post("/accounts/a-one/senders/Boss@Example.org/confirmation")
    assert started.status_code == 202, started.text
    body = started.json()
    assert (body["sender"], body["state"], body["sent_from"]) == (
        "boss@example.org",
        "pending",
        TEST_ADDRESS,
    )
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(hours=23) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=24)
    code = mailed_code(emulator, "boss@example.org")
    assert send_as(served, world, "a-one", "boss@example.org") == 550  # pending is not verified

    # Stored only as a keyed hash: the code is nowhere in the database.
    with engine.connect() as conn:
        rows = conn.execute(select(SenderConfirmation)).all()
        audit = conn.execute(select(AuditEntry)).all()
    assert len(rows) == 1 and code not in str(rows) + str(audit)
    assert re.fullmatch(r"[0-9a-f]{64}", rows[0].code_hash)
    assert rows[0].code_hash != hashlib.sha256(code.encode()).hexdigest()  # keyed, not bare

    wrong = "0" * 8 if code != "0" * 8 else "1" * 8
    miss = api.post("/accounts/a-one/senders/boss@example.org/confirm", {"code": wrong})
    assert miss.status_code == 422 and error(miss) == {
        "code": "invalid",
        "message": "wrong code; 4 tries left",
        "field": "code",
    }
    done = api.post("/accounts/a-one/senders/boss@example.org/confirm", {"code": code})
    assert done.status_code == 200, done.text
    shown = done.json()
    assert (shown["sender"], shown["verified"], shown["method"], shown["proved_by"]) == (
        "boss@example.org",
        True,
        "confirmation",
        None,
    )
    assert shown["verified_at"]
    assert send_as(served, world, "a-one", "boss@example.org") == 250
    # Single use.
    again = api.post("/accounts/a-one/senders/boss@example.org/confirm", {"code": code})
    assert again.status_code == 404
    assert "no code is pending for boss@example.org" in error(again)["message"]
    # Another tenant cannot use it, nor learn of it.
    other = apis["b-one"].post("/accounts/a-one/senders/boss@example.org/confirm", {"code": code})
    assert other.status_code == 404 and "account 'a-one' does not exist" in other.text
    # A domain is proved by DNS, not by a code.
    domain = api.post("/accounts/a-one/senders/brand.test/confirmation")
    assert domain.status_code == 422 and "proved by a DNS TXT record" in error(domain)["message"]
    assert api.post("/accounts/a-one/senders/boss@example.org/confirmation").status_code == 409


def test_wrong_codes_end_the_code(
    served: RelayThread, engine: Engine, emulator: Emulator, apis: dict[str, Api]
) -> None:
    api = apis["a-one"]
    path = "/accounts/a-one/senders/boss@example.org"
    assert api.post(f"{path}/confirmation").status_code == 202
    code = mailed_code(emulator, "boss@example.org")
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    answers = [api.post(f"{path}/confirm", {"code": wrong}) for _ in range(5)]
    assert [error(a)["message"] for a in answers] == [
        "wrong code; 4 tries left",
        "wrong code; 3 tries left",
        "wrong code; 2 tries left",
        "wrong code; 1 try left",
        "5 wrong codes: this code no longer works; ask for a new one",
    ]
    dead = api.post(f"{path}/confirm", {"code": code})  # the right one, too late
    assert dead.status_code == 422 and "no longer works" in error(dead)["message"]
    assert ("boss@example.org", True, "confirmation") not in senders(engine)
    # A new code starts afresh; the old one stays dead.
    assert api.post(f"{path}/confirmation").status_code == 202
    fresh = mailed_code(emulator, "boss@example.org")
    if fresh != code:
        assert api.post(f"{path}/confirm", {"code": code}).status_code == 422
    assert api.post(f"{path}/confirm", {"code": fresh}).status_code == 200


def test_codes_expire_and_are_capped(
    served: RelayThread, engine: Engine, emulator: Emulator, apis: dict[str, Api]
) -> None:
    api = apis["a-one"]
    path = "/accounts/a-one/senders/boss@example.org"
    assert api.post(f"{path}/confirmation").status_code == 202
    code = mailed_code(emulator, "boss@example.org")
    with engine.begin() as conn:
        conn.execute(
            update(SenderConfirmation).values(
                expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            )
        )
    late = api.post(f"{path}/confirm", {"code": code})
    assert late.status_code == 422 and error(late)["message"] == (
        "the code has expired; ask for a new one"
    )
    for _ in range(4):  # five codes a day to one address
        assert api.post(f"{path}/confirmation").status_code == 202
    capped = api.post(f"{path}/confirmation")
    assert capped.status_code == 409 and "the most a day" in error(capped)["message"]
    assert len(emulator.sendgrid.accepted()) == 5


def test_no_route_or_no_test_address_is_a_clear_error(
    served: RelayThread, engine: Engine, apis: dict[str, Api]
) -> None:
    # b-one sends through agency-b's outbox provider, which has no test address.
    answer = apis["b-one"].post("/accounts/b-one/senders/boss@example.org/confirmation")
    assert answer.status_code == 409
    assert "has no test address to mail the code from" in error(answer)["message"]


# -- an agency's proof ------------------------------------------------------------------


def test_an_agency_extends_only_what_it_proved(
    served: RelayThread,
    world: World,
    engine: Engine,
    emulator: Emulator,
    dns: TinyDNS,
    apis: dict[str, Api],
) -> None:
    agency = apis["agency-a"]
    # An address by a mailed code, a domain by DNS, on the agency's own account.
    assert agency.post("/accounts/agency-a/senders/news@agency-a.test/confirmation").is_success
    code = mailed_code(emulator, "news@agency-a.test")
    confirmed = agency.post("/accounts/agency-a/senders/news@agency-a.test/confirm", {"code": code})
    assert confirmed.status_code == 200
    challenge = agency.post("/accounts/agency-a/senders/dns", {"domain": "brand.test"}).json()
    dns.records[challenge["record"]] = [challenge["value"]]
    assert agency.post("/accounts/agency-a/senders/dns", {"domain": "brand.test"}).json()[
        "verified"
    ]
    # The operator's word for the agency is not the agency's proof.
    assert apis["operator"].post("/accounts/agency-a/senders", {"sender": "said.test"}).is_success

    for sender, method in [
        ("news@agency-a.test", "confirmation"),
        ("brand.test", "dns"),
        ("shop@brand.test", "dns"),  # in a domain it proved
    ]:
        answer = agency.post("/accounts/a-one/senders", {"sender": sender})
        assert answer.status_code == 200, (sender, answer.text)
        assert (answer.json()["method"], answer.json()["proved_by"]) == (method, "agency-a")
    for sender in ("agency-a.test", "other@agency-a.test", "said.test", "sub.brand.test"):
        answer = agency.post("/accounts/a-one/senders", {"sender": sender})
        assert answer.status_code == 403, sender
    # Its proof is not its sub-account's to extend, nor anyone else's to use.
    assert (
        apis["a-two"].post("/accounts/a-two/senders", {"sender": "brand.test"}).status_code == 403
    )
    assert agency.post("/accounts/b-one/senders", {"sender": "brand.test"}).status_code == 404
    assert send_as(served, world, "a-one", "shop@brand.test") == 250
    assert send_as(served, world, "a-two", "shop@brand.test") == 550

    listed = {s["sender"]: s for s in apis["a-one"].get("/accounts/a-one/senders").json()}
    assert listed["brand.test"]["proved_by"] == "agency-a"
    assert listed["a-one.test"]["method"] == "operator" and listed["a-one.test"]["verified_at"]


# -- the command line ----------------------------------------------------------------


def test_command_line_sends_confirms_and_lists(
    served: RelayThread,
    world: World,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``send-code``, ``confirm`` and ``list`` print the same locally and remotely."""
    remote = ["--url", f"http://127.0.0.1:{served.relay.admin_port}"]  # type: ignore[union-attr]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    def twin(result: tuple[int, str, str]) -> tuple[int, str, str]:
        code, out, err = result
        return code, out.replace("a-one", "a-two"), err.replace("a-one", "a-two")

    def minute_free(result: tuple[int, str, str]) -> tuple[int, str, str]:
        """The expiry is printed to the minute: two runs may straddle one."""
        code, out, err = result
        return code, re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "WHEN", out), err

    runs = {
        "a-one": lambda *a: run(*a),
        "a-two": lambda *a: run(*remote, "--token", world["a-two"].token, *a),
    }
    sent = {
        account: go("sender", "send-code", f"boss@{account}.org", "--account", account)
        for account, go in runs.items()
    }
    assert sent["a-one"][0] == 0 and f"from {TEST_ADDRESS}" in sent["a-one"][1]
    assert minute_free(twin(sent["a-one"])) == minute_free(sent["a-two"])
    wrong = {
        account: go("sender", "confirm", f"boss@{account}.org", "--account", account, "--code", "x")
        for account, go in runs.items()
    }
    assert wrong["a-one"] == (1, "", "relay: error: wrong code; 4 tries left\n")
    assert twin(wrong["a-one"]) == wrong["a-two"]
    done = {
        account: go(
            "sender",
            "confirm",
            f"boss@{account}.org",
            "--account",
            account,
            "--code",
            mailed_code(emulator, f"boss@{account}.org"),
        )
        for account, go in runs.items()
    }
    assert done["a-one"] == (0, "verified boss@a-one.org for account a-one by confirmation\n", "")
    assert twin(done["a-one"]) == done["a-two"]
    local = run("sender", "list", "--account", "a-one")
    assert local[1].splitlines()[0].split() == [
        "SENDER",
        "KIND",
        "STATE",
        "METHOD",
        "VERIFIED-AT",
        "PROVED-BY",
    ]
    assert local[1].splitlines()[2].split()[:4] == [
        "boss@a-one.org",
        "address",
        "verified",
        "confirmation",
    ]
    assert run(*remote, "--token", world.operator, "sender", "list", "--account", "a-one") == local
    assert run("sender", "list", "--account", "a-one", "--review") == (
        0,
        "SENDER  KIND  STATE  METHOD  VERIFIED-AT  PROVED-BY\n",
        "",
    )


def test_senders_to_review_across_accounts(
    served: RelayThread,
    world: World,
    engine: Engine,
    apis: dict[str, Api],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``relay sender list --review`` without an account: every account's rows that
    were verified without proof; a tenant's token sees only its own."""
    with engine.begin() as conn:
        for pattern, method in (("a-one.test", "tenant"), ("b-one.test", "unreviewed")):
            conn.execute(update(Sender).where(Sender.pattern == pattern).values(method=method))
    listed = apis["operator"].get("/senders/review").json()
    assert [(s["account"], s["sender"], s["method"]) for s in listed] == [
        ("a-one", "a-one.test", "tenant"),
        ("b-one", "b-one.test", "unreviewed"),
    ]
    assert [s["account"] for s in apis["agency-a"].get("/senders/review").json()] == ["a-one"]
    assert apis["a-two"].get("/senders/review").json() == []
    url = f"http://127.0.0.1:{served.relay.admin_port}"  # type: ignore[union-attr]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    local = run("sender", "list", "--review")
    assert local[0] == 0 and local[1].splitlines()[0].split()[:2] == ["ACCOUNT", "SENDER"]
    assert [line.split()[:5] for line in local[1].splitlines()[1:]] == [
        ["a-one", "a-one.test", "domain", "verified", "tenant"],
        ["b-one", "b-one.test", "domain", "verified", "unreviewed"],
    ]
    assert run("--url", url, "--token", world.operator, "sender", "list", "--review") == local
    assert run("sender", "list")[0] == 1  # an account, or --review
    # The operator reviews a row by verifying it again: it leaves the list.
    assert run("sender", "verify", "a-one.test", "--account", "a-one")[0] == 0
    assert [s["sender"] for s in apis["operator"].get("/senders/review").json()] == ["b-one.test"]


# -- the migration ---------------------------------------------------------------------


def test_the_migration_marks_senders_verified_before_proof(db_url: str) -> None:
    """Rows verified by say-so before 0003: the audit log tells the operator's from a
    tenant token's; a DNS token tells a DNS proof; anything else is to review."""
    engine = make_engine(db_url)
    try:
        migrate(engine, "0002")
        said = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
        made = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        with engine.begin() as conn:
            # The accounts table as it was at 0002 (the model has columns added since).
            accounts_0002 = table("accounts", column("id"), column("name"), column("created_at"))
            conn.execute(
                insert(accounts_0002),
                [
                    {"id": 1, "name": "shop", "created_at": made},
                    {"id": 2, "name": "other", "created_at": made},
                ],
            )
            conn.execute(
                insert(ApiToken),
                [
                    {
                        "id": 1,
                        "token_hash": "a" * 64,
                        "prefix": "a",
                        "operator": True,
                        "account_id": None,
                    },
                    {
                        "id": 2,
                        "token_hash": "b" * 64,
                        "prefix": "b",
                        "operator": False,
                        "account_id": 1,
                    },
                ],
            )
            rows = [
                ("op.test", True, None),
                ("optoken.test", True, None),
                ("tenant.test", True, None),
                ("boss@x.test", True, None),
                ("dns.test", True, "tok"),
                ("old.test", True, None),
                ("refused.test", True, None),
                ("pending.test", False, "tok"),
            ]
            conn.execute(
                insert(Sender),
                [
                    {
                        "account_id": 1,
                        "pattern": p,
                        "verified": v,
                        "dns_token": t,
                        "created_at": made,
                    }
                    for p, v, t in rows
                ],
            )
            entries = [
                ("operator", "OP.test", 1, "ok"),
                ("token:1", "optoken.test", 1, "ok"),  # an operator token
                ("token:2", "*@Tenant.test", 1, "ok"),
                ("token:2", "boss@x.test", 1, "ok"),
                ("operator", "Boss@X.test", 1, "ok"),  # the operator's word came last
                ("token:2", "refused.test", 1, "forbidden"),
                ("token:2", "old.test", 2, "ok"),  # another account's row
            ]
            conn.execute(
                insert(AuditEntry),
                [
                    {
                        "at": said + dt.timedelta(minutes=i),
                        "actor": actor,
                        "via": "api",
                        "action": "sender.verify",
                        "target": target,
                        "account_id": account,
                        "result": result,
                    }
                    for i, (actor, target, account, result) in enumerate(entries)
                ],
            )
        migrate(engine)
        with engine.connect() as conn:
            found = {
                p: (m, at)
                for p, m, at in conn.execute(
                    select(Sender.pattern, Sender.method, Sender.verified_at)
                ).all()
            }
        assert found == {
            "op.test": ("operator", said),
            "optoken.test": ("operator", said + dt.timedelta(minutes=1)),
            "tenant.test": ("tenant", said + dt.timedelta(minutes=2)),
            "boss@x.test": ("operator", said + dt.timedelta(minutes=4)),
            "dns.test": ("dns", made),
            "old.test": ("unreviewed", made),
            "refused.test": ("unreviewed", made),
            "pending.test": (None, None),
        }
        review = accounts.list_senders(engine, "shop", review=True)
        assert [s.pattern for s in review] == ["old.test", "refused.test", "tenant.test"]
        # The operator reviews one by verifying it: it leaves the list.
        accounts.verify_sender(engine, "tenant.test", "shop")
        assert [s.pattern for s in accounts.list_senders(engine, "shop", review=True)] == [
            "old.test",
            "refused.test",
        ]
        migrate(engine, "-0002")  # and back, and forth again
        migrate(engine)
    finally:
        engine.dispose()
