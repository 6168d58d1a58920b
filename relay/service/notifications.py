"""Telling an account what happened to its mail: a message and a signed POST.

Notices are raised wherever things happen (intake pauses campaign mail, the
reputation code warns or suspends, a provider's circuit opens or its live
check fails) through ``Notifier.notify``, the ``Notify`` callable. Raising
one never blocks and never fails the caller: it is put on a bounded queue and
the app's sender task does the rest, off the hot path:

1. it records the notice in ``notifications``; a ``dedupe_key`` already there
   means it was told already, and nothing more is done (once per key);
2. it mails the account's ``notify_addresses`` from the test address of the
   provider that carries the account's mail, through that provider, as a
   sender's confirmation code is mailed (``relay.service.confirmations``);
3. when ``notify_url`` is set, it POSTs the notice as JSON, signed as Stripe
   signs its webhooks: ``X-Relay-Signature: t=<unix time>,v1=<hex>``, the
   HMAC-SHA256 of ``"<t>.<body>"`` keyed with the account's notify secret.
   The tenant recomputes it and refuses a stale ``t`` (replays);
4. it records each way's state (``sent``, ``failed``, ``none`` when there is
   no address or URL) and the error, which never holds a secret.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import format_datetime

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.core.crypto import SecretBox
from relay.core.errors import ProviderError
from relay.core.events import Notice, NoticeKind
from relay.core.message import OutboundMessage, make_message_id
from relay.core.settings import PolicySettings
from relay.routing.policy import route_of
from relay.service import provider_checks, scope
from relay.service.accounts import get_account
from relay.service.providers import ProviderConfig
from relay.store.models import Account, Notification, utcnow
from relay.store.models import Provider as ProviderRow

log = logging.getLogger("relay.notifications")

SIGNATURE_HEADER = "X-Relay-Signature"
SECRET_FIELD = "notify_secret"  # the key inside the sealed ``accounts.notify_secret``
QUEUE_SIZE = 1000  # notices waiting to be sent; past it new ones are dropped (logged)
POST_TIMEOUT = 10.0  # seconds for the tenant's URL to answer
RECENT = 4096  # dedupe keys remembered in memory, so a burst does not fill the queue
ERROR_CHARS = 500

SENT, FAILED, NONE = "sent", "failed", "none"


def new_secret() -> str:
    """A notify secret: 32 random bytes, shown to the tenant once."""
    return "whsec_" + secrets.token_urlsafe(32)


def seal_secret(box: SecretBox, secret: str) -> str | None:
    return box.seal({SECRET_FIELD: secret})


def open_secret(box: SecretBox, sealed: str | None) -> str | None:
    return box.open(sealed).get(SECRET_FIELD) if sealed else None


def sign(secret: str, body: bytes, at: int) -> str:
    """The ``X-Relay-Signature`` value for ``body`` sent at unix time ``at``."""
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float, tolerance: float = 300) -> bool:
    """What a tenant does with a POST (the README shows it): recompute the HMAC of
    ``"<t>.<body>"``, compare in constant time, refuse a ``t`` older than ``tolerance``."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        at = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - at) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, at), f"t={at},v1={fields.get('v1', '')}")


def day() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


@dataclass(frozen=True)
class ProviderNotice:
    """A notice about a provider, for its owner account: the owner is looked up
    by the sender task (the raiser, a circuit breaker on the event loop, must not
    query the database)."""

    provider_id: int
    kind: NoticeKind
    detail: str


def provider_notice(
    engine: Engine, provider_id: int, kind: NoticeKind, detail: str
) -> Notice | None:
    """The notice for the provider's owner (None: the provider is gone or ownerless).

    Once per provider, kind and day: a flapping circuit is told once a day."""
    with Session(engine) as session:
        row = session.get(ProviderRow, provider_id)
        if row is None or row.account_id is None:
            return None
        name, owner = row.name, row.account_id
    what = "its circuit opened" if kind == NoticeKind.CIRCUIT_OPEN else "it failed its live check"
    return Notice(
        owner,
        kind,
        f"{kind}:{provider_id}:{day()}",
        f"Provider {name}: {what}"[:300],
        detail,
    )


def check_failed(engine: Engine, provider: str, detail: str) -> Notice | None:
    """The notice for a saved provider that failed its live check (``relay provider
    test``), for its owner; the name resolves as the current actor sees it."""
    with Session(engine) as session:
        provider_id = scope.find_provider(session, provider)
    if provider_id is None:
        return None
    return provider_notice(engine, provider_id, NoticeKind.PROVIDER_FAILED, detail)


def send_now(
    engine: Engine,
    box: SecretBox,
    policy: PolicySettings,
    hostname: str,
    notice: Notice,
    tls_context: ssl.SSLContext | None = None,
) -> int | None:
    """Record and send one notice now, where no relay runs a notifier (the command
    line). Blocking; failures are recorded, never raised."""

    async def go() -> int | None:
        async with httpx.AsyncClient(timeout=POST_TIMEOUT) as http:
            notifier = Notifier(engine, box, policy, hostname, tls_context=tls_context, http=http)
            return await notifier.deliver(notice)

    return asyncio.run(go())


def record(engine: Engine, notice: Notice) -> int | None:
    """Insert the notice; its row id, or None when its dedupe key is there already."""
    row = Notification(
        account_id=notice.account_id,
        kind=str(notice.kind),
        dedupe_key=notice.dedupe_key[:300],
        subject=notice.subject[:300],
        detail=notice.detail,
    )
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            if session.scalar(
                select(Notification.id).where(Notification.dedupe_key == row.dedupe_key)
            ):
                return None
            session.add(row)
    except IntegrityError:  # the same key recorded at once by another process
        return None
    return row.id


@dataclass(frozen=True)
class Target:
    """Where one notification goes, read when it is sent."""

    account: str
    addresses: list[str]
    url: str | None
    secret: str | None
    created_at: dt.datetime


def _target(engine: Engine, box: SecretBox, notification_id: int) -> Target:
    with Session(engine) as session:
        note = session.get(Notification, notification_id)
        assert note is not None
        account = session.get(Account, note.account_id)
        assert account is not None
        return Target(
            account.name,
            list(account.notify_addresses or []),
            account.notify_url,
            open_secret(box, account.notify_secret),
            note.created_at,
        )


def _finish(engine: Engine, notification_id: int, way: str, state: str, error: str | None) -> None:
    with Session(engine) as session, session.begin():
        note = session.get(Notification, notification_id)
        if note is None:
            return
        if way == "mail":
            note.mail_state, note.mail_error = state, error
        else:
            note.webhook_state, note.webhook_error = state, error


def _route(
    engine: Engine, box: SecretBox, policy: PolicySettings, account_id: int, sender: str
) -> ProviderConfig | None:
    route = route_of(engine, policy, account_id, sender)
    with Session(engine) as session:
        row = session.get(ProviderRow, route) if route is not None else None
        if row is None:
            return None
        return ProviderConfig(
            row.name, row.kind, dict(row.options or {}), box.open(row.secrets), row.domain
        )


def body_of(notice: Notice, account: str, created_at: dt.datetime, notification_id: int) -> bytes:
    """The POST body: ``{"kind","account","subject","detail","created_at","id"}``."""
    return json.dumps(
        {
            "kind": str(notice.kind),
            "account": account,
            "subject": notice.subject,
            "detail": notice.detail,
            "created_at": created_at.isoformat(),
            "id": notification_id,
        },
        separators=(",", ":"),
    ).encode()


def _message(sent_from: str, to: list[str], notice: Notice, hostname: str) -> OutboundMessage:
    subject = " ".join(f"[Relay] {notice.subject}".split())
    data = (
        f"From: <{sent_from}>\r\nTo: {', '.join(f'<{a}>' for a in to)}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {format_datetime(utcnow())}\r\n"
        f"Message-ID: {make_message_id(hostname)}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nAuto-Submitted: auto-generated\r\n"
        f"\r\n{notice.detail}\r\n"
    ).encode()
    return OutboundMessage("notification", sent_from, [(a, "to") for a in to], data)


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:ERROR_CHARS]


class Notifier:
    """Records and sends notices; ``notify`` is the ``Notify`` the app wires.

    ``start`` is called on the app's event loop and returns the sender task;
    ``notify`` may be called from that loop or any thread.
    """

    def __init__(
        self,
        engine: Engine,
        box: SecretBox,
        policy: PolicySettings,
        hostname: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        http: httpx.AsyncClient | None = None,
        queue_size: int = QUEUE_SIZE,
        timeout: float = POST_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._box = box
        self._policy = policy
        self._hostname = hostname
        self._tls_context = tls_context
        self._http = http
        self._own_http = http is None
        self._timeout = timeout
        self._queue: asyncio.Queue[Notice | ProviderNotice | None] = asyncio.Queue(queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    # -- raising --------------------------------------------------------------

    def notify(self, notice: Notice) -> None:
        """Queue a notice; never blocks, never raises."""
        self._put(notice)

    def provider_failed(self, provider_id: int, kind: NoticeKind, detail: str) -> None:
        """Queue a notice about a provider, for its owner account."""
        self._put(ProviderNotice(provider_id, kind, detail))

    def circuit_open(self, provider_id: int) -> None:
        """The pool's ``on_circuit_open``."""
        self.provider_failed(
            provider_id,
            NoticeKind.CIRCUIT_OPEN,
            "The provider's API failed several times in a row, so Relay stopped using it "
            "for a while (its circuit is open) and sends by its SMTP relay where it has one. "
            "Check the provider's status and your account with it.",
        )

    def _put(self, item: Notice | ProviderNotice) -> None:
        try:
            loop = self._loop
            if loop is None or loop.is_closed():
                log.warning("notice dropped: the notifier is not running")
                return
            if threading.get_ident() == self._thread:
                self._enqueue(item)
            else:
                loop.call_soon_threadsafe(self._enqueue, item)
        except Exception:
            log.exception("notice dropped")

    def _enqueue(self, item: Notice | ProviderNotice | None) -> None:
        if isinstance(item, Notice):
            if item.dedupe_key in self._recent:
                return  # told already (the table is the memory; this spares the queue)
            self._recent[item.dedupe_key] = None
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("notice dropped: %d notices are waiting", self._queue.qsize())

    # -- the sender -----------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout, verify=self._verify())
        self._task = asyncio.create_task(self.run())
        return self._task

    def _verify(self) -> ssl.SSLContext | bool:
        return self._tls_context if self._tls_context is not None else True

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                await self.deliver(item)
            except Exception:
                log.exception("notification not sent")

    async def aclose(self, grace: float = 5.0) -> None:
        """Send what is queued (within ``grace``), then stop."""
        if self._task is not None:
            self._enqueue(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        if self._own_http and self._http is not None:
            await self._http.aclose()
        self._loop = None

    async def deliver(self, item: Notice | ProviderNotice) -> int | None:
        """Record, then mail and POST; the row id, or None when deduplicated."""
        if isinstance(item, ProviderNotice):
            notice = await asyncio.to_thread(
                provider_notice, self._engine, item.provider_id, item.kind, item.detail
            )
            if notice is None:
                return None
        else:
            notice = item
        note_id = await asyncio.to_thread(record, self._engine, notice)
        if note_id is None:
            return None
        target = await asyncio.to_thread(_target, self._engine, self._box, note_id)
        state, error = await self._mail(notice, target)
        await asyncio.to_thread(_finish, self._engine, note_id, "mail", state, error)
        state, error = await self._post(notice, target, note_id)
        await asyncio.to_thread(_finish, self._engine, note_id, "webhook", state, error)
        return note_id

    async def _mail(self, notice: Notice, target: Target) -> tuple[str, str | None]:
        if not target.addresses:
            return NONE, None
        config = await asyncio.to_thread(
            _route, self._engine, self._box, self._policy, notice.account_id, target.addresses[0]
        )
        if config is None:
            return FAILED, f"account {target.account} has no provider to mail notifications"
        sent_from = str(config.options.get("test_address") or "")
        if not sent_from:
            return FAILED, f"provider {config.name} has no test address to mail from"
        message = _message(sent_from, target.addresses, notice, self._hostname)
        try:
            await provider_checks.send_message(config, message, self._hostname, self._tls_context)
        except ProviderError as exc:
            return FAILED, f"provider {config.name}: {_short(exc)}"
        return SENT, None

    async def _post(self, notice: Notice, target: Target, note_id: int) -> tuple[str, str | None]:
        if not target.url:
            return NONE, None
        if not target.secret or self._http is None:
            return FAILED, "no notify secret: set the URL again (relay account edit --notify-url)"
        body = body_of(notice, target.account, target.created_at, note_id)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(target.secret, body, int(time.time())),
            "User-Agent": "Relay-Notifications",
        }
        try:
            response = await self._http.post(
                target.url, content=body, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            return FAILED, f"POST failed: {type(exc).__name__}: {_short(exc)}"
        if not 200 <= response.status_code < 300:
            return FAILED, f"POST answered {response.status_code}"
        return SENT, None


# -- reading --------------------------------------------------------------------


def list_notifications(engine: Engine, account: str, limit: int = 100) -> list[Notification]:
    """The account's notifications, newest first (the caller checks the scope)."""
    with Session(engine) as session:
        account_id = get_account(session, account).id
        return list(
            session.scalars(
                select(Notification)
                .where(Notification.account_id == account_id)
                .order_by(Notification.id.desc())
                .limit(limit)
            )
        )


def visible_notifications(engine: Engine, account: str, limit: int = 100) -> list[Notification]:
    """``list_notifications`` for the current actor: NotFound outside its scope."""
    scope.require(engine, scope.of_account(), account=account)
    return list_notifications(engine, account, limit)
