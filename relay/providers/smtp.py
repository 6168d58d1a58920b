"""SMTP upstream: the custom SMTP provider and the API providers' SMTP relays.

The message goes as received (the bytes the spool holds), over a small pool of
aiosmtplib connections per endpoint. A connection is reused for the next
message after an RSET (RFC 5321 4.1.1.5), which also proves it is still alive;
a dead or stale one is closed and replaced. ``max_messages_per_connection``
caps how many messages one connection carries (SparkPost asks for at most 100)
and the connection then says QUIT.

Replies become our errors in one table, :data:`SMTP_REPLIES`, by the stage of
the transaction and the reply's class (RFC 5321 4.2.1: 4yz transient, 5yz
permanent), with the few codes that mean something else in
:data:`SMTP_CODES` (RFC 4954 6: 530/534/535/538 are about our login).

Recipients are refused one by one at RCPT, so a transaction can be partial:

* some accepted, some refused: the message is sent to those accepted and the
  :class:`~relay.providers.base.Receipt` names the refused ones in
  ``rejected``. ``permanent`` is True only if every refusal was a 5yz; if any
  was a 4yz it is False and the worker retries all of them (a 5yz refusal
  then fails again, for certain, while no 4yz recipient is ever lost). We
  cannot raise here: the accepted recipients have the message, and a retry of
  the whole would send it to them twice.
* all refused: nothing was sent, so we raise: ``PermanentError`` if every
  refusal was a 5yz, else ``TransientError``; ``.recipients`` names them all.

No ``aiosmtplib`` exception leaves this module; the password appears in no
text, log line or repr (it is a ``Secret``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

from relay.core.errors import (
    CredentialsError,
    Invalid,
    PermanentError,
    ProviderError,
    TransientError,
)
from relay.core.message import OutboundMessage, split_header
from relay.core.settings import Secret
from relay.providers.base import Health, Receipt
from relay.providers.kind import Prepare, ProviderKind, SmtpRelay

TLS_MODES = ("implicit", "starttls", "none")

# (stage, reply class) -> our error. Stages: connect (greeting, EHLO, STARTTLS),
# auth, mail, rcpt, data.
SMTP_REPLIES: dict[tuple[str, int], type[ProviderError]] = {
    # A 4yz or 554 greeting says the server will not talk to anyone now (RFC 5321
    # 3.1): nothing about this message, so it is retried.
    ("connect", 4): TransientError,
    ("connect", 5): TransientError,
    ("auth", 4): TransientError,  # 454 4.7.0 temporary authentication failure
    ("auth", 5): CredentialsError,
    ("mail", 4): TransientError,
    ("mail", 5): PermanentError,  # the sender is refused
    ("rcpt", 4): TransientError,
    ("rcpt", 5): PermanentError,
    ("data", 4): TransientError,
    ("data", 5): PermanentError,
}
# Codes that override their stage: RFC 4954 6 (AUTH) and RFC 5321 4.2.2.
SMTP_CODES: dict[int, type[ProviderError]] = {
    421: TransientError,  # service closing the channel, at any stage
    530: CredentialsError,  # 5.7.0 authentication required (we did not log in)
    534: CredentialsError,  # 5.7.9 mechanism too weak
    535: CredentialsError,  # 5.7.8 credentials invalid
    538: CredentialsError,  # 5.7.11 encryption required for the mechanism
}

_QUEUED_AS = re.compile(r"queued as\s+<?([^\s;>]+)", re.IGNORECASE)


def error_for(stage: str, code: int) -> type[ProviderError]:
    """Our error class for an SMTP reply ``code`` at ``stage``."""
    if code in SMTP_CODES:
        return SMTP_CODES[code]
    return SMTP_REPLIES.get((stage, code // 100), TransientError)


def _reply_error(stage: str, exc: aiosmtplib.SMTPResponseException) -> ProviderError:
    cls = error_for(stage, exc.code)
    return cls(exc.message, exc.code, transport="smtp")


def translate(exc: BaseException, stage: str = "connect") -> ProviderError:
    """The boundary: every aiosmtplib, ssl or socket error becomes one of ours."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_error(
            "auth" if isinstance(exc, aiosmtplib.SMTPAuthenticationError) else stage, exc
        )
    if isinstance(exc, ssl.SSLError):
        # An unverifiable certificate is retried, as Postfix defers on TLS failure:
        # the operator may fix it, and the mail must not go in clear meanwhile.
        return TransientError(f"TLS failed: {exc.reason or exc}", transport="smtp")
    if isinstance(exc, TimeoutError):
        return TransientError(f"timed out at {stage}", transport="smtp")
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return TransientError(str(text), transport="smtp")


@dataclass(frozen=True)
class SmtpEndpoint:
    """Where and how to reach one SMTP server. The password is a masked ``Secret``."""

    host: str
    port: int
    tls: str = "starttls"  # implicit | starttls | none
    username: str | None = None
    password: Secret = field(default_factory=lambda: Secret(""))
    auth_mechanism: str | None = None  # "login" forces AUTH LOGIN; None: the best offered
    allow_insecure_tls: bool = False
    source_address: str | None = None
    local_hostname: str | None = None  # EHLO name; None: aiosmtplib asks getfqdn in a thread
    timeout: float = 60.0  # per command; SparkPost asks for at least 60 s
    pool_size: int = 2
    max_messages_per_connection: int = 0  # 0: no cap
    idle_timeout: float = 30.0  # close a pooled connection idle longer than this
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.tls})"


@dataclass(eq=False)
class _Connection:
    client: aiosmtplib.SMTP
    sent: int = 0
    idle_since: float = 0.0


class SmtpPool:
    """A few connections to one endpoint, reused; ``opened`` counts how many were made."""

    def __init__(self, endpoint: SmtpEndpoint) -> None:
        self.endpoint = endpoint
        self.opened = 0
        self._closed = False
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max(1, endpoint.pool_size))

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[_Connection]:
        async with self._slots:
            conn = await self._checkout()
            try:
                yield conn
            finally:
                await self._checkin(conn)

    async def _checkout(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the likeliest alive
            if await self._still_good(conn):
                return conn
        return await self._open()

    async def _still_good(self, conn: _Connection) -> bool:
        if not conn.client.is_connected:
            return False
        if time.monotonic() - conn.idle_since > self.endpoint.idle_timeout:
            await _quit(conn.client)
            return False
        try:
            await conn.client.rset()
        except (aiosmtplib.SMTPException, OSError):
            conn.client.close()
            return False
        return True

    async def _checkin(self, conn: _Connection) -> None:
        cap = self.endpoint.max_messages_per_connection
        if not conn.client.is_connected:
            return
        if self._closed or (cap and conn.sent >= cap):
            await _quit(conn.client)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _open(self) -> _Connection:
        client = self._client()
        stage = "connect"
        try:
            await client.connect()
            stage = "auth"
            await self._login(client)
        except BaseException as exc:
            client.close()
            if isinstance(exc, aiosmtplib.SMTPException | OSError | TimeoutError):
                raise translate(exc, stage) from exc
            raise
        self.opened += 1
        return _Connection(client)

    def _client(self) -> aiosmtplib.SMTP:
        ep = self.endpoint
        return aiosmtplib.SMTP(
            hostname=ep.host,
            port=ep.port,
            use_tls=ep.tls == "implicit",
            start_tls=ep.tls == "starttls",
            validate_certs=not ep.allow_insecure_tls,
            tls_context=ep.tls_context,
            source_address=(ep.source_address, 0) if ep.source_address else None,
            local_hostname=ep.local_hostname,
            timeout=ep.timeout,
        )

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        ep = self.endpoint
        if not ep.username:
            return
        if ep.auth_mechanism != "login":
            await client.login(ep.username, ep.password.reveal())
            return
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        if "login" not in client.server_auth_methods:
            raise CredentialsError("the server does not offer AUTH LOGIN", transport="smtp")
        await client.auth_login(ep.username, ep.password.reveal())

    async def aclose(self) -> None:
        """QUIT the idle connections; those in use QUIT when their message is done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await _quit(conn.client)


async def _quit(client: aiosmtplib.SMTP) -> None:
    """Say goodbye politely (RFC 5321 4.1.1.10), but never fail for it."""
    try:
        await client.quit(timeout=5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass
    finally:
        client.close()


def _needs_smtputf8(message: OutboundMessage) -> bool:
    """RFC 6531 3.4: a non-ASCII envelope address needs the SMTPUTF8 extension."""
    addresses = [message.mail_from, *(a for a, _ in message.recipients)]
    return any(not a.isascii() for a in addresses)


def _mail_options(client: aiosmtplib.SMTP, data: bytes, utf8: bool) -> list[str]:
    options = []
    if client.supports_extension("size"):
        options.append(f"SIZE={len(data)}")  # RFC 1870
    if client.supports_extension("8bitmime") and not data.isascii():
        options.append("BODY=8BITMIME")  # RFC 6152
    head, _ = split_header(data)
    if utf8 or (not head.isascii() and client.supports_extension("smtputf8")):
        options.append("SMTPUTF8")  # RFC 6531 3.4, and RFC 6532 headers
    return options


def _refusal_text(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}"


async def _transact(client: aiosmtplib.SMTP, message: OutboundMessage, data: bytes) -> Receipt:
    """MAIL, RCPT for each recipient, DATA: one message on one open connection."""
    utf8 = _needs_smtputf8(message)
    if utf8 and not client.supports_extension("smtputf8"):
        # RFC 6531 3.2: without the extension the message cannot be relayed at all.
        raise PermanentError("the server does not offer SMTPUTF8", 553, transport="smtp")
    encoding = "utf-8" if utf8 else "ascii"
    try:
        await client.mail(
            message.mail_from, options=_mail_options(client, data, utf8), encoding=encoding
        )
    except aiosmtplib.SMTPResponseException as exc:
        raise _reply_error("mail", exc) from exc
    refused = await _recipients(client, message, encoding)
    if len(refused) == len(message.recipients):
        await _abandon(client)
        raise _all_refused(refused)
    try:
        reply = await client.data(data)
    except aiosmtplib.SMTPResponseException as exc:
        raise _reply_error("data", exc) from exc
    return _receipt(reply.message, refused)


async def _recipients(
    client: aiosmtplib.SMTP, message: OutboundMessage, encoding: str
) -> dict[str, tuple[int, str]]:
    refused: dict[str, tuple[int, str]] = {}
    for address, _kind in message.recipients:
        try:
            await client.rcpt(address, encoding=encoding)
        except aiosmtplib.SMTPRecipientRefused as exc:
            if error_for("rcpt", exc.code) is CredentialsError:
                raise _reply_error("rcpt", exc) from exc
            refused[address] = (exc.code, _refusal_text(exc))
    return refused


async def _abandon(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await client.rset()


def _all_refused(refused: dict[str, tuple[int, str]]) -> ProviderError:
    # A 4yz among them makes the whole transient: retrying loses nobody.
    code, text = min(refused.values())
    cls = TransientError if code < 500 else PermanentError
    texts = {addr: reply for addr, (_, reply) in refused.items()}
    return cls(f"every recipient refused: {text}", code, transport="smtp", recipients=texts)


def _receipt(reply: str, refused: dict[str, tuple[int, str]]) -> Receipt:
    match = _QUEUED_AS.search(reply)
    return Receipt(
        "smtp",
        match.group(1) if match else None,
        reply,
        rejected={addr: text for addr, (_, text) in refused.items()},
        permanent=all(code >= 500 for code, _ in refused.values()),
    )


class SmtpTransport:
    """A provider that hands the message bytes to one SMTP server.

    ``prepare`` may add what the relay needs to the bytes (SparkPost's
    ``X-MSYS-API``, SendGrid's ``X-SMTPAPI``); by default they go as received.
    """

    def __init__(self, name: str, endpoint: SmtpEndpoint, *, prepare: Prepare | None = None):
        self.name = name
        self.endpoint = endpoint
        self.pool = SmtpPool(endpoint)
        self._prepare = prepare

    def __repr__(self) -> str:
        return f"SmtpTransport({self.name!r}, {self.endpoint})"

    async def send(self, message: OutboundMessage) -> Receipt:
        if not message.recipients:
            raise PermanentError("no recipients", transport="smtp")
        data = self._prepare(message) if self._prepare else message.data
        try:
            async with self.pool.connection() as conn:
                conn.sent += 1
                return await _transact(conn.client, message, data)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise translate(exc, "transaction") from exc

    async def check(self) -> Health:
        """Connect, negotiate TLS and log in (the connection then joins the pool)."""
        try:
            async with self.pool.connection():
                pass
        except ProviderError as exc:
            return Health(False, f"{self.endpoint}: {exc}")
        return Health(
            True,
            f"{self.endpoint}: connected"
            + (f" as {self.endpoint.username}" if self.endpoint.username else ""),
        )

    async def aclose(self) -> None:
        await self.pool.aclose()


def _check_row(options: Mapping[str, Any], secrets: Mapping[str, Any] | None) -> None:
    """The operator's server has no default host, and its login no API key to fall back on."""
    if not options.get("smtp_host"):
        raise Invalid("an smtp provider needs smtp_host", "smtp_host")
    if secrets is not None and options.get("smtp_user") and not secrets.get("smtp_password"):
        raise Invalid("smtp_user is set but smtp_password is not", "smtp_password")


# The custom SMTP provider: the operator's own server (smtp_host), one leg.
KIND = ProviderKind("smtp", smtp=SmtpRelay(), check_row=_check_row)
