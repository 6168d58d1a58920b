"""The command line against a remote relay prints what it prints locally; tokens;
the audit trail of a provisioning session.

Local runs use the relay's own database (as an operator on that machine
would); remote runs go through ``--url``/``--token`` to the real admin
listener. A change is made once each way on twin names (``*-l`` locally,
``*-r`` remotely), and the outputs must be equal once the names are swapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from relay.cli import main
from relay.core.settings import Settings
from relay.service import accounts
from relay.store.models import AuditEntry
from tests.api_support import (
    World,
    account_id,
    api_settings,
    build_world,
    local_cli_reads,
    put_message,
)
from tests.support import RelayThread
from tests.test_dns_verify import TinyDNS

Result = tuple[int, str, str]


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str, dns: TinyDNS) -> Settings:
    return api_settings(tmp_path / "var", db_url, dns={"port": dns.port, "timeout": 2})


@pytest.fixture
def world(settings: Settings, engine: Engine) -> World:
    return build_world(settings, engine)


@pytest.fixture
def served(
    settings: Settings, engine: Engine, world: World, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RelayThread]:
    # The local command line reads the same configuration as the relay.
    local_cli_reads(
        settings,
        monkeypatch,
        RELAY_AUTH_ARGON2_TIME_COST="1",
        RELAY_AUTH_ARGON2_MEMORY_KIB="1024",
        RELAY_DNS_NAMESERVERS="127.0.0.1",
        RELAY_DNS_PORT=str(settings.dns.port),
    )
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], relay: RelayThread, token: str):
        assert relay.relay is not None
        self.capsys = capsys
        self.remote_args = ["--url", f"http://127.0.0.1:{relay.relay.admin_port}", "--token", token]

    def local(self, *argv: str) -> Result:
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        # Progress lines on stderr carry the elapsed time, which differs by design.
        return code, out, re.sub(r"\(\d+\.\d s\)", "(elapsed)", err)

    def remote(self, *argv: str) -> Result:
        return self.local(*self.remote_args, *argv)


def unrandom(result: Result) -> Result:
    """Generated passwords and DNS tokens differ by design; everything else must not."""
    code, out, err = result
    out = re.sub(r"password: \S+", "password: <generated>", out)
    return code, re.sub(r"relay-verification=[\w-]+", "relay-verification=<token>", out), err


def twin(result: Result, local: str, remote: str) -> Result:
    code, out, err = result
    return code, out.replace(local, remote), err.replace(local, remote)


# Changes, made once each way: (argv with {n} for the twin's suffix).
CHANGES = [
    "account create agency-{n}",
    "account create shop-{n} --agency agency-{n} --policy drop",
    "domain add Shop-{n}.test --account shop-{n}",
    "credential create web@shop-{n}.test --purpose campaign",
    "credential create api@shop-{n}.test --password chosen-password-1",
    "credential reset web@shop-{n}.test",
    "credential reset api@shop-{n}.test --password chosen-password-2",
    "credential delete API@Shop-{n}.TEST",
    "sender verify *@shop-{n}.test --account shop-{n}",
    "sender verify boss@example.org --account shop-{n}",
    "sender remove boss@example.org --account shop-{n}",
    "sender verify-dns brand-{n}.test --account shop-{n}",
    "account resume shop-{n}",
    # and the errors, word for word
    "account create shop-{n}",
    "account create x-{n} --agency shop-{n}",
    "domain add shop-{n}.test --account shop-{n}",
    "domain add not-a-domain --account shop-{n}",
    "credential create web@shop-{n}.test",
    "credential create x@nowhere-{n}.test",
    "credential create a@shop-{n}.test --password short",
    "credential reset nobody@shop-{n}.test",
    "sender remove boss@example.org --account shop-{n}",
    "queue retry MISSING-{n}",
    "queue release --account nobody-{n}",
    "account resume nobody-{n}",
]

READS = [
    "account list",
    "account list --suspended",
    "credential list shop-l.test",
    "credential list shop-r.test",
    "credential list nowhere.test",
    "sender list --account shop-l",
    "queue list",
    "queue list --state paused --limit 2",
    "queue list --state bogus",
    "usage",
    "usage --account agency-a --format csv",
    "usage --account a-one --format json",
    "usage --from 2026-02-30",
    "audit --limit 20",
    "audit --account a-one",
]


def test_every_verb_prints_the_same_locally_and_remotely(
    capsys: pytest.CaptureFixture[str], served: RelayThread, world: World
) -> None:
    cli = Cli(capsys, served, world.operator)
    for change in CHANGES:
        local = cli.local(*change.format(n="l").split())
        remote = cli.remote(*change.format(n="r").split())
        assert unrandom(twin(local, "-l", "-r")) == unrandom(remote), change
    for read in READS:
        assert cli.local(*read.split()) == cli.remote(*read.split()), read


def test_dns_verification_prints_the_same(
    capsys: pytest.CaptureFixture[str], served: RelayThread, world: World, dns: TinyDNS
) -> None:
    cli = Cli(capsys, served, world.operator)
    runs = {"a-one": cli.local, "a-two": cli.remote}
    for account, run in runs.items():
        code, out, _ = run("sender", "verify-dns", f"brand.{account}.test", "--account", account)
        record, value = re.findall(r'  (\S+)\. TXT "(\S+)"', out)[0]
        assert code == 3
        dns.records[record] = [value]
    local, remote = (
        run("sender", "verify-dns", f"brand.{account}.test", "--account", account)
        for account, run in runs.items()
    )
    assert local == (0, "verified brand.a-one.test for account a-one by DNS\n", "")
    assert twin(local, "a-one", "a-two") == remote


def test_queue_verbs_print_the_same(
    capsys: pytest.CaptureFixture[str], served: RelayThread, world: World, engine: Engine
) -> None:
    cli = Cli(capsys, served, world.operator)
    a_one, a_two = world["a-one"], world["a-two"]
    assert cli.local("queue", "show", a_one.queued) == cli.remote("queue", "show", a_one.queued)
    local = cli.local("queue", "retry", a_one.queued)
    assert twin(local, a_one.queued, a_two.queued) == cli.remote("queue", "retry", a_two.queued)
    for verb in ("release", "discard"):
        one = put_message(engine, account_id(engine, "a-one"), "x@a-one.test", "paused")
        two = put_message(engine, account_id(engine, "a-two"), "x@a-two.test", "paused")
        local = cli.local("queue", verb, one)
        assert twin(local, one, two) == cli.remote("queue", verb, two)
    local = twin(cli.local("queue", "release", "--account", "a-one"), "of a-one", "of a-two")
    assert twin(local, a_one.paused, a_two.paused) == cli.remote(
        "queue", "release", "--account", "a-two"
    )
    assert cli.local("queue", "discard", "--sender", "x@b-one.test") == cli.remote(
        "queue", "discard", "--sender", "x@b-one.test"
    )


def test_remote_errors(capsys: pytest.CaptureFixture[str], served: RelayThread) -> None:
    cli = Cli(capsys, served, "rly_not-a-token")
    assert cli.remote("account", "list") == (1, "", "relay: error: the token is not valid\n")
    code, _, err = cli.remote("token", "list")
    assert code == 1 and "works on this machine only" in err
    cli.remote_args[1] = "http://127.0.0.1:9"
    code, _, err = cli.remote("account", "list")
    assert code == 1 and "cannot reach the relay at http://127.0.0.1:9" in err


def test_token_verbs(capsys: pytest.CaptureFixture[str], served: RelayThread) -> None:
    cli = Cli(capsys, served, "")
    code, out, _ = cli.local("token", "create", "--account", "a-one", "--label", "ci")
    token = re.search(r"token: (rly_\S+)", out)
    assert code == 0 and token and "sees account a-one" in out
    cli.remote_args[3] = token.group(1)
    code, out, _ = cli.remote("account", "list")
    assert code == 0 and out.split()[4:5] == ["a-one"] and "a-two" not in out
    code, out, _ = cli.local("token", "list")
    assert token.group(1) not in out and token.group(1)[:12] + "..." in out
    row = next(line for line in out.splitlines() if " ci" in line).split()
    assert row[2:5] == ["sub-account", "a-one", "active"]
    assert cli.local("token", "revoke", row[0])[0] == 0
    assert cli.remote("account", "list")[0] == 1
    assert cli.local("token", "revoke", row[0])[2].endswith("is already revoked\n")
    assert cli.local("token", "create")[0] == 1  # an account, or --operator
    code, out, _ = cli.local("token", "create", "--operator")
    assert code == 0 and "sees every account" in out


def test_audit_trail_of_a_provisioning_session(
    capsys: pytest.CaptureFixture[str], served: RelayThread, world: World, engine: Engine
) -> None:
    """An agency provisions a shop through the API, the operator fixes one thing
    locally; the trail has every change, who made it, and no secret."""
    agency = Cli(capsys, served, world["agency-a"].token)
    steps = [
        ("account", "create", "shop", "--agency", "agency-a"),
        ("domain", "add", "shop.test", "--account", "shop"),
        ("credential", "create", "web@shop.test"),
        ("credential", "create", "api@shop.test", "--password", "chosen-password-9"),
        ("sender", "verify", "shop.test", "--account", "shop"),
        ("credential", "delete", "web@shop.test"),
        ("domain", "add", "b-one.test", "--account", "shop"),  # taken: a conflict
    ]
    outputs = "".join(agency.remote(*step)[1] for step in steps)
    fixed = agency.local("credential", "reset", "api@shop.test")[1]
    secrets = [*re.findall(r"password: (\S+)", outputs + fixed), "chosen-password-9"]
    token_id = next(e.actor for e in _entries(engine) if e.via == "api")
    expected = [
        (token_id, "api", "account.create", "shop", "ok"),
        (token_id, "api", "domain.add", "shop.test", "ok"),
        (token_id, "api", "credential.create", "web@shop.test", "ok"),
        (token_id, "api", "credential.create", "api@shop.test", "ok"),
        (token_id, "api", "sender.verify", "shop.test", "forbidden"),
        (token_id, "api", "credential.delete", "web@shop.test", "ok"),
        (token_id, "api", "domain.add", "b-one.test", "conflict"),
        ("operator", "cli", "credential.reset", "api@shop.test", "ok"),
    ]
    session = [e for e in _entries(engine) if e.via in ("api", "cli")]
    assert [(e.actor, e.via, e.action, e.target, e.result) for e in session] == expected
    with engine.connect() as conn:
        dump = str(conn.execute(select(AuditEntry)).all())
    assert len(secrets) == 3 and not any(s in dump for s in secrets)
    assert world["agency-a"].token not in dump and world.operator not in dump
    code, out, _ = agency.remote("audit", "--account", "shop")
    results = [line.split()[7] for line in out.splitlines()[1:]]
    assert code == 0 and results == ["ok", "conflict", "ok", "forbidden", "ok", "ok", "ok"]
    assert agency.local("audit", "--account", "shop") == (code, out, "")
    assert accounts.list_senders(engine, "shop") == []  # a tenant's say-so is refused


def _entries(engine: Engine) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def test_provider_verbs_print_the_same(
    capsys: pytest.CaptureFixture[str], served: RelayThread, world: World
) -> None:
    cli = Cli(capsys, served, world.operator)
    for read in (
        "provider list",
        "provider show a-one-smtp",
        "provider show agency-a-outbox",
        "provider show nope",
        "provider ips a-one-smtp",
        "provider test agency-a-outbox --to x@example.org",
    ):
        assert cli.local(*read.split()) == cli.remote(*read.split()), read
    # The socket error's words come from the event loop (uvloop in the relay), so
    # only the provider's part of the line is the same.
    failed = "smtp: FAILED: Error connecting to 127.0.0.1 on port 2: [Errno 111] "
    for run in (cli.local, cli.remote):
        code, out, _ = run("provider", "test", "a-one-smtp", "--to", "x@example.org")
        assert code == 1 and out.startswith(failed)
    for change in (
        "provider default {n}-smtp --account {n}",
        "provider default {n}-smtp --account {n} --for subaccounts",
        "provider assign agency-a-outbox --account {n}",
        "provider unassign --account {n}",
        "provider unassign --account {n}",
        "provider remove {n}-smtp",
    ):
        local = cli.local(*change.format(n="a-one").split())
        remote = cli.remote(*change.format(n="a-two").split())
        assert twin(local, "a-one", "a-two") == remote, change
    local = cli.local("provider", "remove", "agency-a-outbox", "--replacement", "b-one-smtp")
    remote = cli.remote("provider", "remove", "agency-b-outbox", "--replacement", "b-one-smtp")
    assert twin(local, "agency-a", "agency-b") == remote
    code, _, err = cli.remote("provider", "add", "x", "--account", "a-one", "--kind", "outbox")
    assert code == 1 and "works on this machine only" in err
