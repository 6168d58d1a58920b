"""An SMTP sink that plays the providers' SMTP relays (and any custom server).

aiosmtpd on the running loop (``loop.create_server``, not the threaded
``Controller``): optional STARTTLS (or implicit TLS on a second port), AUTH for
the configured users, SMTPUTF8 unless told not to. It records every message
with its envelope, the login and the connection it came on, and counts
connections and RSETs, so tests can see pooling at work.

It can be told to refuse a recipient (``reject``), to fail the next MAIL, RCPT
or DATA (``fail``), and to cap messages per connection (as SparkPost does:
the next MAIL after the cap gets 421). An ``X-MSYS-API`` header that is not
JSON gets SparkPost's 550 5.6.0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOSTNAME = "emulator.relay.invalid"  # given, so aiosmtpd never calls getfqdn()


class _NoLoginDataWarning(logging.Filter):
    # aiosmtpd 1.4.6 logs a deprecation line on every successful AUTH.
    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_NoLoginDataWarning())


@dataclass
class SinkMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    user: str | None
    tls: bool
    connection: int


@dataclass
class SmtpFault:
    stage: str  # mail | rcpt | data
    reply: str
    count: int


@dataclass
class SmtpSink:
    """The handler (aiosmtpd hooks) and what it saw."""

    users: dict[str, str] = field(default_factory=dict)
    tls_context: ssl.SSLContext | None = None
    smtputf8: bool = True
    max_messages_per_connection: int = 0
    messages: list[SinkMessage] = field(default_factory=list)
    connections: int = 0
    rsets: int = 0
    mechanisms_used: list[str] = field(default_factory=list)
    rejections: dict[str, str] = field(default_factory=dict)
    faults: list[SmtpFault] = field(default_factory=list)
    # Called for each accepted message (the emulator posts its events from there).
    on_message: Callable[[SinkMessage], None] | None = field(default=None, repr=False)
    _per_connection: dict[int, int] = field(default_factory=dict)
    _live: set[SMTP] = field(default_factory=set)

    # -- the Python API ------------------------------------------------------

    def reject(self, address: str, reply: str = "550 5.1.1 <{}>: no such user") -> None:
        self.rejections[address.lower()] = reply.format(address)

    def fail(self, stage: str, reply: str = "451 4.3.0 emulated failure", count: int = 1) -> None:
        self.faults.append(SmtpFault(stage, reply, count))

    def reset(self) -> None:
        self.messages.clear()
        self.rejections.clear()
        self.faults.clear()

    def disconnect_all(self) -> None:
        """Drop every open connection (the emulator is closing)."""
        for server in list(self._live):
            if server.transport is not None:
                server.transport.close()

    # -- aiosmtpd ------------------------------------------------------------

    def factory(self, implicit_tls: bool = False) -> SMTP:
        return _SinkServer(self, implicit_tls)

    def _fault(self, stage: str) -> str | None:
        for fault in self.faults:
            if fault.stage == stage and fault.count > 0:
                fault.count -= 1
                return fault.reply
        return None

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        self.mechanisms_used.append(mechanism)
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        ok = user in self.users and self.users[user] == auth_data.password.decode("utf-8")
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        fault = self._fault("mail")
        if fault:
            return fault
        connection = getattr(server, "connection_number", 0)
        cap = self.max_messages_per_connection
        if cap and self._per_connection.get(connection, 0) >= cap:
            return "421 4.7.0 too many messages on this connection, reconnect"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() in self.rejections:
            return self.rejections[address.lower()]
        fault = self._fault("rcpt")
        if fault:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self._fault("data")
        if fault:
            return fault
        data = envelope.original_content or b""
        if not _msys_api_ok(data):
            return "550 5.6.0 JSON parsing error in X-MSYS-API"
        connection = getattr(server, "connection_number", 0)
        self._per_connection[connection] = self._per_connection.get(connection, 0) + 1
        message = SinkMessage(
            envelope.mail_from or "",
            list(envelope.rcpt_tos),
            data,
            list(envelope.mail_options),
            session.auth_data if session.authenticated else None,
            session.ssl is not None or getattr(server, "implicit_tls", False),
            connection,
        )
        self.messages.append(message)
        if self.on_message is not None:
            self.on_message(message)
        return f"250 2.0.0 Ok: queued as {secrets.token_hex(6).upper()}"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.rsets += 1
        return "250 2.0.0 OK"


def _msys_api_ok(data: bytes) -> bool:
    header = BytesHeaderParser(policy=SMTPUTF8).parsebytes(data)
    value = header.get("x-msys-api")
    if value is None:
        return True
    try:
        return isinstance(json.loads(str(value)), dict)
    except ValueError:
        return False


class _SinkServer(SMTP):
    """aiosmtpd's protocol, numbering its connections for the sink."""

    def __init__(self, sink: SmtpSink, implicit_tls: bool) -> None:
        starttls = sink.tls_context is not None and not implicit_tls
        super().__init__(
            sink,
            hostname=HOSTNAME,
            tls_context=sink.tls_context if starttls else None,
            require_starttls=False,
            authenticator=sink.authenticate if sink.users else None,
            # AUTH is enforced in handle_MAIL: aiosmtpd's auth_required warns
            # (a UserWarning) whenever TLS is not also required.
            auth_required=False,
            # AUTH only over TLS where it is offered; over implicit TLS the
            # transport is encrypted already, and without TLS (loopback tests)
            # plaintext AUTH is all there is.
            auth_require_tls=starttls,
            enable_SMTPUTF8=sink.smtputf8,
            decode_data=False,
            data_size_limit=40 * 1024 * 1024,
        )
        self.sink = sink
        self.implicit_tls = implicit_tls
        self.connection_number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the STARTTLS restart of the same connection
            self.sink.connections += 1
            self.connection_number = self.sink.connections
            self.sink._live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._live.discard(self)
        super().connection_lost(error)


async def start_sink(
    sink: SmtpSink, host: str, port: int, *, implicit_tls: bool = False
) -> asyncio.Server:
    """Listen on (host, port); with ``implicit_tls`` the TLS starts at connect (port 465)."""
    loop = asyncio.get_running_loop()
    context = sink.tls_context if implicit_tls else None
    if implicit_tls and context is None:
        raise ValueError("implicit TLS needs the sink's tls_context")
    return await loop.create_server(lambda: sink.factory(implicit_tls), host, port, ssl=context)
