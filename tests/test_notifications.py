"""Notifications (issue 12, item 5) and ``relay account edit``.

A notice is recorded once per dedupe key, mailed to the account's addresses
from its route provider's test address (the emulated SendGrid receives it)
and POSTed, signed, to its URL (a small receiver on loopback checks the
signature as a tenant would). Failures are recorded, the listing is scoped,
and the settings verb round-trips through the CLI and the API. SQLite and
PostgreSQL, real SMTP, real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from relay.cli import main
from relay.core.crypto import secret_box
from relay.core.events import Notice, NoticeKind
from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.providers.chain import CircuitBreaker
from relay.service import notifications, providers
from relay.service.notifications import Notifier, ProviderNotice
from relay.store.models import Account, Notification
from tests.api_support import (
    Api,
    World,
    account_id,
    api_settings,
    build_world,
    error,
    local_cli_reads,
)
from tests.emulated import add_emulated_provider
from tests.support import PASSWORD, RelayThread, connect

TEST_ADDRESS = "ops@agency-a.test"


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return api_settings(tmp_path / "var", db_url)


@pytest.fixture
def world(settings: Settings, engine: Engine, emulator: Emulator) -> World:
    """The API world; agency-a's SendGrid (emulated, with a test address) carries
    a-one's mail, so a-one's notifications come from that address."""
    world = build_world(settings, engine)
    add_emulated_provider(
        settings, engine, emulator, "agency-a-sg", "sendgrid", "agency-a", test_address=TEST_ADDRESS
    )
    providers.assign(engine, "agency-a-sg", "a-one")
    return world


@pytest.fixture
def served(
    settings: Settings, engine: Engine, world: World, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RelayThread]:
    # The local command line reads the same configuration as the relay.
    local_cli_reads(settings, monkeypatch)
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


@pytest.fixture
def api(served: RelayThread) -> Iterator[Any]:
    """Api clients as tokens, closed at the end."""
    made: list[Api] = []

    def make(token: str | None) -> Api:
        made.append(Api(served, token))
        return made[-1]

    yield make
    for one in made:
        one.close()


class Receiver:
    """A tenant's HTTP endpoint on loopback: keeps each POST, answers ``status``."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.posts: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.posts.append((dict(self.headers), body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/relay-hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def rows(engine: Engine, account: int | None = None) -> list[Notification]:
    query = select(Notification).order_by(Notification.id)
    if account is not None:
        query = query.where(Notification.account_id == account)
    with engine.connect() as conn:
        return list(conn.execute(query).all())  # type: ignore[arg-type]


def settled(engine: Engine, account: int, count: int = 1) -> list[Notification]:
    """The account's notifications once ``count`` of them are sent or failed both ways."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = rows(engine, account)
        done = [n for n in found if "pending" not in (n.mail_state, n.webhook_state)]
        if len(done) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"notifications did not settle: {rows(engine, account)}")


def campaign(sender: str, to: str, name: str) -> str:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: news\r\n"
        f"X-Relay-Campaign: {name}\r\n\r\nhello\r\n"
    )


def test_paused_campaign_notifies_once_by_mail_and_signed_post(
    served: RelayThread,
    world: World,
    engine: Engine,
    emulator: Emulator,
    receiver: Receiver,
    api: Any,
) -> None:
    operator = api(world.operator)
    edited = operator(
        "PATCH",
        "/accounts/a-one",
        json={"notify": ["boss@a-one.org"], "notify_url": receiver.url},
    )
    assert edited.status_code == 200, edited.text
    secret = edited.json()["notify_secret"]
    assert secret and secret.startswith("whsec_")
    # Two messages of one campaign from an unverified sender: both paused, one notice.
    sender = "news@unverified.example"
    login = (world["a-one"].username or "", PASSWORD)
    with connect(served, "submission", login=login) as client:
        for _ in range(2):
            client.sendmail(
                sender, ["bob@example.org"], campaign(sender, "bob@example.org", "spring")
            )
    a_one = account_id(engine, "a-one")
    (note,) = settled(engine, a_one)
    assert (note.kind, note.mail_state, note.webhook_state) == ("campaign_paused", "sent", "sent")
    assert note.dedupe_key.startswith(f"campaign_paused:{a_one}:spring:")
    # The mail went through the account's route, from the provider's test address.
    mailed = [
        b
        for b in emulator.sendgrid.accepted()
        if [p["email"] for p in b["personalizations"][0]["to"]] == ["boss@a-one.org"]
    ]
    assert len(mailed) == 1 and mailed[0]["from"]["email"] == TEST_ADDRESS
    assert "spring" in mailed[0]["subject"]
    # The POST verifies with the secret shown once, as the README tells a tenant.
    ((headers, body),) = receiver.posts
    signature = headers["X-Relay-Signature"]
    assert notifications.verify(secret, body, signature, time.time())
    assert not notifications.verify("whsec_other", body, signature, time.time())
    assert not notifications.verify(secret, body + b" ", signature, time.time())
    assert not notifications.verify(secret, body, signature, time.time() + 3600)  # replayed late
    payload = json.loads(body)
    assert set(payload) == {"kind", "account", "subject", "detail", "created_at", "id"}
    assert (payload["kind"], payload["account"], payload["id"]) == (
        "campaign_paused",
        "a-one",
        note.id,
    )
    # The API lists it for the account, its agency and the operator; not for others.
    for token in (world.operator, world["agency-a"].token, world["a-one"].token):
        listed = api(token).get("/accounts/a-one/notifications")
        assert [n["id"] for n in listed.json()] == [note.id], listed.text
    hidden = api(world["agency-b"].token).get("/accounts/a-one/notifications")
    assert hidden.status_code == 404 and error(hidden)["code"] == "not_found"
    assert secret not in json.dumps(operator.get("/accounts/a-one").json())


def test_a_key_is_recorded_once(engine: Engine, world: World) -> None:
    notice = Notice(
        account_id(engine, "a-two"), NoticeKind.SUSPENDED, "suspended:x:day", "Suspended", "why"
    )
    first = notifications.record(engine, notice)
    assert first is not None
    assert notifications.record(engine, notice) is None
    assert [n.id for n in rows(engine)] == [first]


def _set_notify(engine: Engine, name: str, addresses: list[str], url: str | None, box: Any) -> None:
    from sqlalchemy.orm import Session

    with Session(engine) as session, session.begin():
        account = session.scalar(select(Account).where(Account.name == name))
        assert account is not None
        account.notify_addresses, account.notify_url = addresses, url
        account.notify_secret = notifications.seal_secret(box, "whsec_test") if url else None


def test_failures_are_recorded_without_secrets(
    settings: Settings, engine: Engine, world: World, emulator: Emulator
) -> None:
    """No test address on the route provider, a URL that refuses, a URL that answers 500."""
    box = secret_box(settings)
    down = Receiver(status=500)
    try:
        # b-one's mail goes by agency-b's outbox, which has no test address.
        _set_notify(engine, "b-one", ["ops@b-one.org"], down.url, box)
        _set_notify(engine, "a-two", [], "http://127.0.0.1:9/nothing-listens", box)

        async def go() -> list[int | None]:
            async with httpx.AsyncClient(timeout=5) as http:
                notifier = Notifier(engine, box, settings.policy, "relay.test", http=http)
                done = []
                for name in ("b-one", "a-two"):
                    notice = Notice(
                        account_id(engine, name), NoticeKind.SUSPENDED, f"k:{name}", "S", "D"
                    )
                    done.append(await notifier.deliver(notice))
                return done

        assert None not in asyncio.run(go())
    finally:
        down.close()
    b_one, a_two = (rows(engine, account_id(engine, n))[0] for n in ("b-one", "a-two"))
    assert b_one.mail_state == "failed" and "no test address" in (b_one.mail_error or "")
    assert (b_one.webhook_state, b_one.webhook_error) == ("failed", "POST answered 500")
    assert len(down.posts) == 1
    assert (a_two.mail_state, a_two.mail_error) == ("none", None)
    assert a_two.webhook_state == "failed" and "whsec_test" not in (a_two.webhook_error or "")


def test_circuit_open_tells_the_provider_owner_once(
    settings: Settings, engine: Engine, world: World
) -> None:
    opened: list[int] = []
    clock = [0.0]
    breaker = CircuitBreaker(2, 10, clock=lambda: clock[0], on_open=lambda: opened.append(1))
    breaker.failure()
    breaker.failure()  # opens
    clock[0] = 11
    assert breaker.allow()  # the probe
    breaker.failure()  # reopens: not a new opening
    assert opened == [1]
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert opened == [1, 1]

    with engine.connect() as conn:
        from relay.store.models import Provider

        provider_id = conn.execute(
            select(Provider.id).where(Provider.name == "agency-a-sg")
        ).scalar_one()

    async def go() -> list[int | None]:
        async with httpx.AsyncClient() as http:
            notifier = Notifier(engine, secret_box(settings), settings.policy, "t", http=http)
            item = ProviderNotice(provider_id, NoticeKind.CIRCUIT_OPEN, "API failing")
            return [await notifier.deliver(item), await notifier.deliver(item)]

    first, again = asyncio.run(go())
    assert first is not None and again is None
    (note,) = rows(engine)
    assert (note.account_id, note.kind) == (account_id(engine, "agency-a"), "circuit_open")
    assert note.subject == "Provider agency-a-sg: its circuit opened"


def test_account_edit_cli_and_api_round_trip(
    served: RelayThread,
    world: World,
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
    api: Any,
) -> None:
    argv = ["account", "edit", "a-two", "--notify", "a@x.org", "--notify", "b@x.org"]
    argv += ["--notify-url", "https://hooks.a-two.example/relay", "--unsubscribe", "on"]
    argv += ["--open-tracking", "off", "--click-tracking", "on"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("notify-secret"))
    assert "notify: a@x.org, b@x.org" in out
    assert "unsubscribe: on  open-tracking: off  click-tracking: on" in out
    with engine.connect() as conn:
        row = conn.execute(select(Account).where(Account.name == "a-two")).one()
    assert row.notify_secret and secret not in row.notify_secret  # sealed
    view = api(world["agency-a"].token).get("/accounts/a-two").json()
    assert view["notify"] == ["a@x.org", "b@x.org"]
    assert (view["unsubscribe"], view["open_tracking"], view["click_tracking"]) == (
        True,
        False,
        True,
    )
    assert "notify_secret" not in view and secret not in json.dumps(view)
    # Clear and back to the provider's default, through the API as the agency.
    agency = api(world["agency-a"].token)
    cleared = agency(
        "PATCH",
        "/accounts/a-two",
        json={"notify": [], "notify_url": "", "open_tracking": "default"},
    )
    assert cleared.status_code == 200, cleared.text
    body = cleared.json()
    assert (body["notify"], body["notify_url"], body["open_tracking"], body["notify_secret"]) == (
        [],
        None,
        None,
        None,
    )
    assert agency("PATCH", "/accounts/agency-a", json={"share_suppressions": "on"}).json()[
        "share_suppressions"
    ]
    # Refusals: the field named, nothing changed.
    bad = {
        "notify_url": {"notify_url": "http://hooks.example/x"},
        "notify": {"notify": ["not an address"]},
        "share_suppressions": {"share_suppressions": "on"},
    }
    for field, payload in bad.items():
        answer = agency("PATCH", "/accounts/a-two", json=payload)
        assert answer.status_code == 422 and error(answer)["field"] == field, answer.text
    sub = api(world["a-two"].token)
    assert sub("PATCH", "/accounts/a-two", json={"unsubscribe": "off"}).status_code == 403
    other = api(world["agency-b"].token)
    assert other("PATCH", "/accounts/a-two", json={"unsubscribe": "off"}).status_code == 404
    assert main(["account", "edit", "a-two", "--notify-url", "ftp://x.example/"]) == 1
    assert "must use https" in capsys.readouterr().err
    assert main(["account", "edit", "a-two"]) == 1


def test_a_failed_provider_test_tells_its_owner_once(
    served: RelayThread, world: World, engine: Engine, api: Any
) -> None:
    """a-one's and a-two's SMTP providers point at a closed port: the test fails."""
    a_one = api(world["a-one"].token)
    for _ in range(2):
        answer = a_one.post("/providers/a-one-smtp/test", json={"to": "x@example.org"})
        assert answer.status_code == 200 and not answer.json()["ok"], answer.text
    (note,) = settled(engine, account_id(engine, "a-one"))
    assert (note.kind, note.mail_state, note.webhook_state) == ("provider_failed", "none", "none")
    assert note.subject == "Provider a-one-smtp: it failed its live check"
    # The command line, where no relay runs a notifier, records and sends it at once.
    for _ in range(2):
        assert main(["provider", "test", "a-two-smtp", "--to", "x@example.org"]) == 1
    (note,) = rows(engine, account_id(engine, "a-two"))
    assert note.kind == "provider_failed" and note.mail_state == "none"
