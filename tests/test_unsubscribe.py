"""One-click unsubscribe (RFC 8058): the tokens, the header fields intake adds to
opted-in campaign mail (and only to it), the delivered bytes through a real
relay, and the ``/u/{token}`` routes over real HTTP on loopback, writing
suppressions to a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import email
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from email import policy
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.applications import Starlette

from relay.app import make_hasher
from relay.core.crypto import derive_key, secret_key
from relay.core.errors import ConfigError
from relay.core.message import list_unsubscribe_fields
from relay.core.settings import Settings
from relay.core.unsubscribe import (
    MAX_CAMPAIGN_BYTES,
    MAX_TOKEN_LENGTH,
    UNSUBSCRIBE_LABEL,
    Unsubscribe,
    make_token,
    read_token,
)
from relay.intake import Intake, IntakeConfig
from relay.queue.spool import Spool
from relay.routing.policy import Policy
from relay.service import accounts
from relay.store.models import Account, Message, Suppression
from relay.webhooks.unsubscribe import routes
from tests.support import (
    PASSWORD,
    RelayThread,
    Tenant,
    connect,
    fresh_engine,
    make_settings,
    message,
    seed_tenant,
)
from tests.test_intake import ARRIVAL, login, stored

KEY = derive_key("test secret", UNSUBSCRIBE_LABEL)
PUBLIC = "https://relay.example.com"
CAMPAIGN = "X-Relay-Campaign: spring-sale\r\n"


# -- tokens ---------------------------------------------------------------------------


def test_token_round_trip() -> None:
    token = make_token(KEY, 42, "bob@example.org", "spring-sale")
    assert token is not None and token.isascii() and len(token) <= MAX_TOKEN_LENGTH
    assert read_token(KEY, token) == Unsubscribe(42, "bob@example.org", "spring-sale")
    plain = make_token(KEY, 7, "jos\u00e9@exampl\u00e9.org", None)
    assert plain is not None and read_token(KEY, plain) == (7, "jos\u00e9@exampl\u00e9.org", None)
    # The campaign is only a note: cut (on a character boundary), the token stays short.
    long = make_token(KEY, 2**62, "a" * 64 + "@" + "b" * 189, "\u00e9" * 200)
    assert long is not None and len(long) <= MAX_TOKEN_LENGTH
    found = read_token(KEY, long)
    assert found is not None and found.campaign == "\u00e9" * (MAX_CAMPAIGN_BYTES // 2)


def test_addresses_a_token_cannot_carry() -> None:
    assert make_token(KEY, 1, "", None) is None
    assert make_token(KEY, 1, "a" * 250 + "@b.org", None) is None  # longer than a path
    assert make_token(KEY, 1, "bob\0@example.org", None) is None
    assert make_token(KEY, 1, "bob\udcff@example.org", None) is None  # undecodable client bytes
    assert make_token(KEY, 1, "bob@example.org", "a\0b") is None
    assert make_token(KEY, -1, "bob@example.org", None) is None


def test_every_altered_token_is_refused() -> None:
    token = make_token(KEY, 42, "bob@example.org", "spring-sale")
    assert token is not None
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(token):
        other = alphabet[(alphabet.index(char) + 1) % 64]
        assert read_token(KEY, token[:i] + other + token[i + 1 :]) is None, i
    for bad in (
        "",
        token[:-1],
        token[1:],
        token + "A",
        token + "=",
        token[:10] + "." + token[10:],
        token[:10] + "+" + token[11:],
        "A" * (MAX_TOKEN_LENGTH + 1),
        "not a token",
    ):
        assert read_token(KEY, bad) is None, bad


def test_a_token_of_another_key_is_refused() -> None:
    token = make_token(KEY, 42, "bob@example.org", None)
    assert token is not None
    assert read_token(derive_key("another secret", UNSUBSCRIBE_LABEL), token) is None
    # A key for another purpose, or the raw secret itself, is not the token key.
    assert read_token(derive_key("test secret", "something else"), token) is None
    assert read_token(b"test secret", token) is None


def test_derived_keys() -> None:
    assert len(KEY) == 32 and derive_key("test secret", "other") != KEY
    assert derive_key("test secret", UNSUBSCRIBE_LABEL) == KEY
    with pytest.raises(ConfigError):
        derive_key("", UNSUBSCRIBE_LABEL)


def test_header_fields_refuse_a_url_that_could_break_the_header() -> None:
    fields = list_unsubscribe_fields(f"{PUBLIC}/u/abc")
    assert fields == (
        f"List-Unsubscribe: <{PUBLIC}/u/abc>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    )
    for bad in (
        f"{PUBLIC}/u/a\r\nBcc: x@y.org",
        f"{PUBLIC}/u/a\nX: y",
        f"{PUBLIC}/u/a b",
        f"{PUBLIC}/u/a>, <mailto:x@y.org",
        f'{PUBLIC}/u/"a',
        "mailto:x@y.org",
        f"{PUBLIC}/u/\u00e9",
        f"{PUBLIC}/u/" + "a" * 1000,
    ):
        assert list_unsubscribe_fields(bad) is None, bad


# -- intake -----------------------------------------------------------------------------


@dataclass
class Desk:
    intake: Intake
    settings: Settings
    engine: Engine
    tenant: Tenant


def make_intake(settings: Settings, engine: Engine, spool: Spool, public_url: str) -> Intake:
    config = IntakeConfig(
        "relay.test",
        settings.limits.max_header_bytes,
        settings.limits.max_headers,
        public_url=public_url,
        unsubscribe_key=KEY,
    )
    return Intake(config, Policy(engine, settings.policy), spool)


@pytest.fixture
async def desk(settings: Settings, engine: Engine, tenant: Tenant) -> AsyncIterator[Desk]:
    spool = Spool(engine, settings.queue.lifetime)
    yield Desk(make_intake(settings, engine, spool, PUBLIC), settings, engine, tenant)
    await spool.aclose()


def opt_in(engine: Engine, account: str, on: bool = True) -> None:
    with engine.begin() as conn:
        conn.execute(update(Account).where(Account.name == account).values(unsubscribe=on))


def account_id(engine: Engine, account: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(Account.id).where(Account.name == account)).scalar_one())


async def queued(desk: Desk, rcpts: list[str], extra: str = "", username: str = "") -> bytes:
    identity = await login(desk.settings, desk.engine, username or desk.tenant.username)
    data = message(desk.tenant.username, to=", ".join(rcpts), extra=extra)
    result = await desk.intake.accept(identity, desk.tenant.username, rcpts, data, ARRIVAL)
    assert isinstance(result, str), result
    return stored(desk.engine, result)[1]


def unsubscribe_url(data: bytes) -> str | None:
    parsed = email.message_from_bytes(data, policy=policy.default)
    values = parsed.get_all("List-Unsubscribe") or []
    posts = parsed.get_all("List-Unsubscribe-Post") or []
    if not values:
        assert not posts
        return None
    assert len(values) == 1 and posts == ["List-Unsubscribe=One-Click"]
    url = str(values[0])
    assert url.startswith(f"<{PUBLIC}/u/") and url.endswith(">")
    return url[1:-1]


async def test_opted_in_campaign_mail_gets_one_click_headers(desk: Desk) -> None:
    opt_in(desk.engine, desk.tenant.account)
    data = await queued(desk, ["bob@example.org"], CAMPAIGN)
    url = unsubscribe_url(data)
    assert url is not None
    token = url.rsplit("/", 1)[1]
    aid = account_id(desk.engine, desk.tenant.account)
    assert read_token(KEY, token) == (aid, "bob@example.org", "spring-sale")
    assert b"X-Relay-Campaign" not in data
    # The fields sit in the header section, before the blank line.
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
    assert body == b"Hi there.\r\n"


async def test_campaign_credential_marks_campaign_mail(desk: Desk) -> None:
    opt_in(desk.engine, desk.tenant.account)
    user = f"news@{desk.tenant.domain}"
    accounts.create_credential(desk.engine, make_hasher(desk.settings), user, PASSWORD, "campaign")
    url = unsubscribe_url(await queued(desk, ["bob@example.org"], username=user))
    assert url is not None
    found = read_token(KEY, url.rsplit("/", 1)[1])
    assert found is not None and found.campaign is None


async def test_no_headers_without_opt_in_or_for_transactional_mail(desk: Desk) -> None:
    assert unsubscribe_url(await queued(desk, ["bob@example.org"], CAMPAIGN)) is None
    opt_in(desk.engine, desk.tenant.account)
    assert unsubscribe_url(await queued(desk, ["bob@example.org"])) is None


async def test_the_senders_own_fields_are_kept_and_never_doubled(desk: Desk) -> None:
    opt_in(desk.engine, desk.tenant.account)
    own = "List-Unsubscribe: <mailto:leave@acme.test>\r\n"
    data = await queued(desk, ["bob@example.org"], CAMPAIGN + own)
    assert data.count(b"\nList-Unsubscribe") == 1 and b"<mailto:leave@acme.test>" in data
    # Either field of its own is enough to leave both alone (any case).
    post = "list-unsubscribe-post: List-Unsubscribe=One-Click\r\n"
    data = await queued(desk, ["bob@example.org"], CAMPAIGN + post)
    assert data.lower().count(b"\nlist-unsubscribe") == 1


async def test_several_recipients_get_no_token(desk: Desk) -> None:
    """The token names one address: in a message to two, either reader could
    unsubscribe the one it names. Campaign engines send one per recipient."""
    opt_in(desk.engine, desk.tenant.account)
    data = await queued(desk, ["bob@example.org", "carol@example.org"], CAMPAIGN)
    assert unsubscribe_url(data) is None
    # The same address twice in the envelope is one recipient.
    data = await queued(desk, ["bob@example.org", "bob@example.org"], CAMPAIGN)
    assert unsubscribe_url(data) is not None


async def test_no_headers_without_a_public_url(desk: Desk) -> None:
    opt_in(desk.engine, desk.tenant.account)
    spool = Spool(desk.engine, desk.settings.queue.lifetime)
    try:
        desk.intake = make_intake(desk.settings, desk.engine, spool, "")
        assert unsubscribe_url(await queued(desk, ["bob@example.org"], CAMPAIGN)) is None
    finally:
        await spool.aclose()


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_delivered_bytes_carry_the_headers(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    """Through the real relay (SMTP in, outbox provider out), with the key
    the relay derives from its own secret."""
    settings = replace(settings, webhooks=replace(settings.webhooks, public_url=PUBLIC + "/"))
    opt_in(engine, tenant.account)
    relay = RelayThread(settings, engine).start()
    try:
        with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
            data = message(tenant.username, extra=CAMPAIGN)
            client.sendmail(tenant.username, ["bob@example.org"], data)

        def delivered() -> bool:
            with engine.connect() as conn:
                query = select(func.count()).where(Message.state == "delivered")
                return conn.execute(query.select_from(Message)).scalar_one() == 1

        wait_for(delivered)
    finally:
        relay.stop()
    eml = next((settings.var_path / "outbox").glob("*.eml")).read_bytes()
    url = unsubscribe_url(eml)
    assert url is not None and url.startswith(f"{PUBLIC}/u/")  # one slash, not two
    key = derive_key(secret_key(settings), UNSUBSCRIBE_LABEL)
    found = read_token(key, url.rsplit("/", 1)[1])
    assert found == (account_id(engine, tenant.account), "bob@example.org", "spring-sale")


# -- the routes -------------------------------------------------------------------------


class Server:
    """The routes in a tiny Starlette app, served by uvicorn on loopback."""

    def __init__(self, app: Starlette) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> Server:
        self._thread.start()
        wait_for(lambda: self._server.started)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@dataclass
class Site:
    http: httpx.Client
    engine: Engine
    account_id: int
    calls: list[tuple[int, str, str, str, str | None]]

    def rows(self) -> list[tuple[int, str, str, str, str | None]]:
        with Session(self.engine) as session:
            query = select(
                Suppression.account_id,
                Suppression.address,
                Suppression.reason,
                Suppression.source,
                Suppression.detail,
            )
            return [tuple(r) for r in session.execute(query).all()]  # type: ignore[misc]


@pytest.fixture
def site(any_db_url: str, tmp_path: Path) -> Iterator[Site]:
    settings = make_settings(tmp_path / "var", any_db_url)
    engine = fresh_engine(settings)
    tenant = seed_tenant(settings, engine)
    calls: list[tuple[int, str, str, str, str | None]] = []

    def suppress(account: int, address: str, reason: str, source: str, detail: str | None) -> None:
        """A stand-in for the suppression service's write: one row per
        (account, address), the first reason kept."""
        calls.append((account, address, reason, source, detail))
        with Session(engine) as session:
            query = select(Suppression).where(
                Suppression.account_id == account, Suppression.address == address
            )
            if session.execute(query).first() is not None:
                return
            session.add(
                Suppression(
                    account_id=account, address=address, reason=reason, source=source, detail=detail
                )
            )
            try:
                session.commit()
            except IntegrityError:
                session.rollback()

    server = Server(Starlette(routes=routes(KEY, suppress))).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            yield Site(http, engine, account_id(engine, tenant.account), calls)
    finally:
        server.stop()
        engine.dispose()


ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def token_for(site: Site, address: str = "bob@example.org") -> str:
    token = make_token(KEY, site.account_id, address, "spring-sale")
    assert token is not None
    return token


def test_get_shows_a_form_and_changes_nothing(site: Site) -> None:
    response = site.http.get(f"/u/{token_for(site, 'bob+<b>@example.org')}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = response.text
    assert '<form method="post">' in page and 'name="List-Unsubscribe" value="One-Click"' in page
    assert "bob+&lt;b&gt;@example.org" in page and "<b>" not in page
    assert site.http.head(f"/u/{token_for(site)}").status_code == 200
    assert site.calls == [] and site.rows() == []


def test_one_click_post_suppresses_once(site: Site) -> None:
    url = f"/u/{token_for(site)}"
    first = site.http.post(url, data=ONE_CLICK)  # urlencoded, as the page's form
    assert first.status_code == 200 and "Unsubscribed" in first.text
    assert not first.is_redirect
    # Mailbox providers send multipart/form-data (RFC 8058 3.1): the same answer.
    again = site.http.post(url, files={"List-Unsubscribe": (None, "One-Click")})
    assert again.status_code == 200
    expected = (site.account_id, "bob@example.org", "unsubscribe", "unsubscribe")
    assert [c[:4] for c in site.calls] == [expected, expected]
    assert site.rows() == [(*expected, "one-click, campaign spring-sale")]


def test_post_without_the_one_click_body_changes_nothing(site: Site) -> None:
    url = f"/u/{token_for(site)}"
    for kwargs in (
        {},
        {"data": {"List-Unsubscribe": "no"}},
        {"content": b"List-Unsubscribe=One-Click", "headers": {"content-type": "text/plain"}},
        {"files": {"other": (None, "One-Click")}},
    ):
        response = site.http.post(url, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 400, kwargs
        assert response.json()["error"]["code"] == "invalid"
    big = site.http.post(url, data={"List-Unsubscribe": "One-Click", "pad": "x" * 20000})
    assert big.status_code == 413
    assert site.calls == [] and site.rows() == []


def test_bad_tokens_are_404_and_store_nothing(site: Site) -> None:
    good = token_for(site)
    other_key = make_token(derive_key("other", UNSUBSCRIBE_LABEL), site.account_id, "x@y.org", "")
    for token in (good[:-2] + ("AA" if good[-2:] != "AA" else "BB"), other_key, "garbage", "A"):
        for method in ("GET", "POST"):
            response = site.http.request(method, f"/u/{token}", data=ONE_CLICK)
            assert response.status_code == 404, (method, token)
            body = response.json()
            assert body == {
                "error": {
                    "code": "not_found",
                    "message": "This unsubscribe link is not valid.",
                    "field": None,
                }
            }
    # A browser is shown a page, not JSON.
    page = site.http.get("/u/garbage", headers={"accept": "text/html"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert site.calls == [] and site.rows() == []
