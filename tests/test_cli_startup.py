"""A local command starts quickly (issue 16, item 6): the quick reads.

The listings a person types often read their rows by the database driver alone
(``relay.store.lite``, ``relay.service.quick``), without SQLAlchemy, the models
or the provider clients. What they print must be what the full service path
prints, on both engines, word for word; where the quick read cannot answer
(an unknown or qualified name) the full path answers, errors included. And a
quick command must not load the heavy modules at all (no timed assertion:
``bench/startup.py`` measures).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from relay.cli import main
from relay.providers.registry import KINDS, SECRETS
from relay.providers.registry import transports as registry_transports
from relay.service import quick
from relay.store import lite
from relay.store.engine import make_engine
from relay.store.models import (
    Account,
    ApiToken,
    Attempt,
    Event,
    Message,
    Provider,
    Recipient,
    Sender,
    Suppression,
    Usage,
)

ROOT = Path(__file__).resolve().parent.parent

# (argv, whether the quick read answers it)
COMMANDS: list[tuple[tuple[str, ...], bool | None]] = [
    (("account", "list"), True),
    (("account", "list", "--format", "json"), True),
    (("account", "list", "--suspended"), True),
    (("credential", "list", "agency.test"), True),
    (("credential", "list", "agency.test", "--format", "json"), True),
    (("credential", "list", "nowhere.test"), False),
    (("sender", "list", "--account", "agency"), True),
    (("sender", "list", "--account", "sub", "--format", "json"), False),  # ambiguous
    (("sender", "list", "--account", "agency", "--review", "--format", "json"), True),
    (("sender", "list", "--account", "agency:sub"), False),
    (("sender", "list", "--review"), True),
    (("sender", "list", "--review", "--format", "json"), True),
    (("sender", "list"), False),
    (("sender", "list", "--account", "nobody"), False),
    (("token", "list"), True),
    (("token", "list", "--format", "json"), True),
    (("user", "list"), True),
    (("suppression", "list", "--account", "agency"), True),
    (("suppression", "list", "--account", "agency", "--format", "json"), True),
    (("suppression", "list", "--account", "agency", "--reason", "complaint"), True),
    (("suppression", "list", "--account", "agency", "--contains", "a%b_"), True),
    (("suppression", "list", "--account", "agency", "--limit", "2", "--offset", "1"), True),
    (("suppression", "list", "--account", "agency", "--limit", "0"), False),
    (("provider", "list"), True),
    (("provider", "list", "--format", "json"), True),
    (("provider", "show", "sg"), True),
    (("provider", "show", "mx", "--format", "json"), True),
    (("provider", "show", "box"), True),
    (("provider", "show", "other:mx"), False),
    (("provider", "show", "none"), False),
    (("queue", "list"), True),
    (("queue", "list", "--format", "json"), True),
    (("queue", "list", "--state", "queued", "--limit", "1"), True),
    (("queue", "list", "--account", "other"), True),
    (("queue", "list", "--state", "lost"), False),
    (("queue", "list", "--reason", "busy"), None),  # not a quick read: none tried
    (("queue", "show", "m1"), True),
    (("queue", "show", "m1", "--format", "json"), True),
    (("queue", "show", "m3"), True),
    (("queue", "show", "nothing"), False),
    (("usage",), True),
    (("usage", "--format", "json"), True),
    (("usage", "--format", "csv", "--account", "agency"), True),
    (("usage", "--account", "other", "--from", "2020-01-01", "--to", "2099-12-31"), True),
    (("usage", "--to", "2000-01-01"), True),
    (("usage", "--account", "agency:sub"), False),
    (("usage", "--from", "2020-13-01"), None),  # refused inside the quick read, as in the full
    (("config", "check", "--format", "json"), True),
]


@pytest.fixture
def seeded(
    any_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """A database with a row of every kind the quick reads list."""
    monkeypatch.setenv("RELAY_DATABASE_URL", any_db_url)
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_SECRET_KEY", "test-secret-key")
    monkeypatch.setenv("RELAY_AUTH_ARGON2_TIME_COST", "1")
    monkeypatch.setenv("RELAY_AUTH_ARGON2_MEMORY_KIB", "1024")
    for key in ("RELAY_CONFIG", "RELAY_URL", "RELAY_TOKEN", "RELAY_API_KEY", "RELAY_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    password = tmp_path / "password"
    password.write_text("a long enough console password\n")
    out = tmp_path / "out"
    for line in (
        "account create agency",
        "account create sub --agency agency --policy pause",
        "account create other",
        "account create sub --agency other",  # "sub" is now ambiguous
        "domain add agency.test --account agency",
        "credential create web@agency.test --password pw-1-long-enough",
        "credential create bulk@agency.test --purpose campaign",
        "sender verify agency.test --account agency",
        "sender verify ops@sub.test --account agency:sub",
        "sender verify news.test --account other",
        "suppression add a%b_c@x.test --account agency --reason complaint",
        "suppression add ab@x.test --account agency --detail asked",
        "suppression add late@x.test --account agency",
        "suppression add gone@x.test --account agency",
        "token create --operator --label ops",
        "token create --account agency:sub",
        f"user create op@admin.test --operator --password-file {password}",
        f"user create v@agency.test --account agency --role viewer --password-file {password}",
        "provider add sg --account agency --kind sendgrid --api-key SG.key --no-check",
        "provider add mx --account other --kind smtp --smtp-host 127.0.0.1 --smtp-user u"
        " --smtp-password pw --no-check",
        f"provider add box --account agency --kind outbox --directory {out} --ip-pool p1"
        " --no-check",
    ):
        argv = line.split()
        assert main(argv) == 0, (argv, capsys.readouterr())
    now = dt.datetime.now(dt.UTC)
    engine = make_engine(any_db_url)
    try:  # what only the relay itself writes, through the models' own types
        with Session(engine) as session, session.begin():
            other = session.scalars(select(Account).where(Account.name == "other")).one()
            other.suspended_at = now
            other.suspended_reason = "complaint rate 0.4% over 24h"
            for row in session.scalars(select(Sender).where(Sender.pattern != "ops@sub.test")):
                row.method = "unreviewed" if row.pattern == "agency.test" else "tenant"
            for address, days in (("late@x.test", 1), ("gone@x.test", -1)):
                entry = session.scalars(
                    select(Suppression).where(Suppression.address == address)
                ).one()
                entry.reason = "soft_bounce"
                entry.expires_at = now + dt.timedelta(days=days)
            token = session.scalars(select(ApiToken).where(ApiToken.label == "ops")).one()
            token.last_used_at = token.revoked_at = now
            agency = session.scalars(select(Account).where(Account.name == "agency")).one()
            for n, state in enumerate(("queued", "deferred", "delivered", "queued")):
                session.add(
                    Message(
                        id=f"m{n}",
                        account_id=other.id if n == 3 else agency.id,
                        mail_from=f"s{n}@agency.test",
                        state=state,
                        reason="4.2.1 mailbox busy" if state == "deferred" else None,
                        size=1000 + n,
                        attempts=n,
                        # two at one time: the id orders them
                        created_at=now - dt.timedelta(minutes=min(n, 2)),
                        next_attempt_at=now,
                        expires_at=now + dt.timedelta(days=5),
                    )
                )
            today, yesterday = now.date(), now.date() - dt.timedelta(days=1)
            session.flush()
            sub = session.scalars(
                select(Account).where(Account.name == "sub", Account.parent_id == agency.id)
            ).one()
            for message, owner, day, kind, event, n in (
                ("m0", agency.id, yesterday, "to", "accepted", 3),
                ("m0", agency.id, yesterday, "cc", "accepted", 1),
                ("m0", agency.id, today, "to", "delivered", 3),
                ("m1", sub.id, today, "bcc", "accepted", 2),
                ("m1", sub.id, today, "bcc", "failed", 1),
                ("m2", sub.id, today, "to", "suppressed", 1),
                ("m3", other.id, today, "to", "accepted", 5),
            ):
                session.add(
                    Usage(
                        account_id=owner,
                        day=day,
                        message_id=message,
                        kind=kind,
                        event=event,
                        recipients=n,
                    )
                )
            session.flush()
            sg = session.scalars(select(Provider).where(Provider.name == "sg")).one()
            for n, (address, kind, state) in enumerate(
                (("to@x.test", "to", "delivered"), ("cc@x.test", "cc", "pending"))
            ):
                session.add(
                    Recipient(message_id="m1", address=address, kind=kind, state=state, reply=None)
                )
                session.add(
                    Attempt(
                        message_id="m1",
                        provider="sg",
                        transport="api",
                        result="delivered" if n == 0 else "transient",
                        code="250" if n == 0 else "421",
                        text=f"attempt {n}",
                        duration=0.123456 + n,
                        at=now - dt.timedelta(seconds=10 - n),
                    )
                )
            session.add(
                Event(
                    provider_id=sg.id,
                    provider_event_id="ev-1",
                    account_id=sub.id,
                    message_id="m1",
                    address="to@x.test",
                    type="bounce",
                    bounce_class="soft",
                    detail="mailbox full",
                    at=now,
                )
            )
    finally:
        engine.dispose()
    capsys.readouterr()
    return any_db_url


def _run(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """What each quick read answered (None: it deferred to the full path)."""
    seen: list[Any] = []
    read_with = lite.read_with

    def spy(url: str, read: Callable[[lite.Reader], Any]) -> Any:
        seen.append(found := read_with(url, read))
        return found

    monkeypatch.setattr(lite, "read_with", spy)
    yield seen


@pytest.mark.parametrize(
    ("argv", "quick_answers"),
    COMMANDS,
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v),
)
def test_quick_read_prints_what_the_full_path_prints(
    seeded: str,
    argv: tuple[str, ...],
    quick_answers: bool | None,
    answered: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fast = _run(capsys, argv)
    expected = [] if quick_answers is None else [quick_answers]
    assert [found is not None for found in answered] == expected, answered
    monkeypatch.setattr(lite, "open_reader", lambda url: None)  # the full path only
    full = _run(capsys, argv)
    assert fast == full
    assert full[1] or full[2]  # it printed something


def test_quick_reads_defer_when_the_schema_is_not_the_newest(seeded: str) -> None:
    engine = make_engine(seeded)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        assert lite.open_reader(seeded) is None  # the full path migrates first
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": max(lite.heads())}
            )
        reader = lite.open_reader(seeded)
        assert reader is not None
        reader.close()
    finally:
        engine.dispose()


def test_no_quick_read_without_a_database(tmp_path: Path) -> None:
    assert lite.open_reader(f"sqlite:///{tmp_path}/none.db") is None
    assert not (tmp_path / "none.db").exists()  # the full path creates it, 0600
    assert lite.open_reader("sqlite://") is None
    assert lite.open_reader("mysql://h/db") is None


def test_provider_legs_table_matches_the_registry() -> None:
    """``quick.LEGS`` restates each kind's record; every kind is in it."""
    assert set(quick.LEGS) == set(KINDS)
    names = ("api_key", "smtp_password", "secret_access_key", "webhook_key")
    for kind in KINDS:
        for given in itertools.product((False, True), repeat=len(names)):
            secrets = {n: "x" for n, on in zip(names, given, strict=True) if on}
            assert quick.transports(kind, secrets) == registry_transports(kind, secrets)
    assert quick.SECRETS == SECRETS


# -- what a quick command loads -------------------------------------------------------

HEAVY = {
    "sqlalchemy",
    "alembic",
    "httpx",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "uvloop",
    "prometheus_client",
    "botocore",
    "argon2",
    "aiosmtpd",
    "aiosmtplib",
    "dns",
    "jinja2",
    "asyncio",
    "email",
}
PROBE = """
import sys
from relay.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(code, " ".join(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def test_quick_commands_load_no_heavy_module(seeded: str, tmp_path: Path) -> None:
    """Start-up time is import time: a quick listing, ``config check`` and every
    ``--help`` load none of SQLAlchemy, the servers, the HTTP client, the hashers."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # the fixture's RELAY_* included
    # psycopg loads asyncio (and through it email) itself, for its async connections.
    heavy = HEAVY if seeded.startswith("sqlite") else HEAVY - {"asyncio", "email"}
    argvs = [argv for argv, quick_answers in COMMANDS if quick_answers]
    argvs += [("--help",), ("account", "--help"), ("queue", "list", "--help")]
    for argv in argvs:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        code, *loaded = done.stderr.splitlines()[-1].split()
        assert code in ("0", "None"), (argv, done.stderr[-2000:])
        assert not set(loaded) & heavy, (argv, set(loaded) & heavy)


def test_startup_bench_runs(tmp_path: Path) -> None:
    """``bench/startup.py`` seeds its own database and times what it is given (no
    timed assertion: the figures are the bench's to print)."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    bench = [sys.executable, str(ROOT / "bench" / "startup.py"), "--runs", "1", "--json"]
    done = subprocess.run(
        [*bench, "--command", "account list", "--command", "usage"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert doc["target_ms"] == 300
    assert [r["command"] for r in doc["results"]] == ["relay account list", "relay usage"]
    for row in doc["results"]:
        assert row["exit"] == "0"
        assert 0 < row["best_ms"] <= row["median_ms"]
        assert row["cpu_best_ms"] > 0
