"""aiosmtpd's protocol, adjusted for a relay.

* Every reply after EHLO carries an enhanced status code (RFC 2034), which
  aiosmtpd's stock replies lack; ``push`` adds it from one table.
* Connection limits per client address and per process: the 421 is sent
  before the greeting (RFC 5321 3.1 lets a server refuse that way).
* A Session whose ``login_data`` is a plain attribute: aiosmtpd 1.4 warns on
  every successful AUTH through the deprecated property otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import SMTP, Session, TLSSetupException

from relay.core.replies import SERVER_BUSY, TOO_MANY_CONNECTIONS, with_enhanced_code


class _QuietAiosmtpd(logging.Filter):
    """Drop aiosmtpd's per-connection chatter that is not a fault of ours."""

    NOISE = ("auth_required == True but auth_require_tls == False",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


def quiet_aiosmtpd() -> None:
    logger = logging.getLogger("mail.log")
    logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _QuietAiosmtpd) for f in logger.filters):
        logger.addFilter(_QuietAiosmtpd())


class RelaySession(Session):
    login_data: Any = None  # shadows the deprecated property


class ConnectionTracker:
    """Open sessions per client address and per listener, for one process."""

    def __init__(
        self, per_ip: int, total: int, on_change: Callable[[str, int], None] | None = None
    ) -> None:
        self.per_ip = per_ip
        self.total = total
        self._on_change = on_change  # (listener, +1 or -1): the sessions gauge
        self.by_ip: Counter[str] = Counter()
        self.by_listener: Counter[str] = Counter()
        self.sessions: set[RelaySMTP] = set()

    @property
    def open(self) -> int:
        return sum(self.by_listener.values())

    def enter(self, ip: str, listener: str) -> str | None:
        """Admit a session, or return the reply that refuses it."""
        if self.open >= self.total:
            return str(SERVER_BUSY)
        if self.by_ip[ip] >= self.per_ip:
            return str(TOO_MANY_CONNECTIONS)
        self.by_ip[ip] += 1
        self.by_listener[listener] += 1
        if self._on_change:
            self._on_change(listener, 1)
        return None

    def leave(self, ip: str, listener: str) -> None:
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]
        self.by_listener[listener] -= 1
        if self._on_change:
            self._on_change(listener, -1)


class RelaySMTP(SMTP):
    def __init__(
        self, handler: Any, *, listener: str, tracker: ConnectionTracker, **kwargs: Any
    ) -> None:
        if kwargs.get("auth_require_tls", True):
            super().__init__(handler, **kwargs)
        else:
            with warnings.catch_warnings():
                # The operator allowed AUTH without TLS on this listener (for
                # loopback use); aiosmtpd would warn on every connection.
                warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
                super().__init__(handler, **kwargs)
        self.listener = listener
        self._tracker = tracker
        self._raw_replies = False
        # Set when a DATA line began with a dot and a bare CR or LF: aiosmtpd
        # removes that dot before we see the content, so it is caught here.
        self.smuggling = False

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super()._cb_client_connected(reader, writer)
        read = reader.readuntil

        async def readuntil(separator: bytes = b"\n") -> bytes:
            line = await read(separator)
            # aiosmtpd reads DATA (and only DATA) with the CRLF separator.
            if (
                separator == b"\r\n"
                and line[:1] == b"."
                and line[1:2] in (b"\r", b"\n")
                and line != b".\r\n"  # the real end of data
            ):
                self.smuggling = True
            return line

        reader.readuntil = readuntil  # type: ignore[method-assign,assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._tls_protocol is None and transport.get_extra_info("ssl_object") is not None:
            # Implicit TLS (RFC 8314): encrypted from the first byte. aiosmtpd
            # only knows STARTTLS, and only tests this attribute for truth
            # before it offers AUTH; the real SSL protocol is asyncio's.
            self._tls_protocol = transport.get_protocol()  # type: ignore[assignment]
            if self.session is not None:
                self.session.ssl = transport.get_extra_info("ssl_object")

    async def smtp_STARTTLS(self, arg: str) -> None:
        """STARTTLS through the loop's own TLS (uvloop's is native code).

        aiosmtpd layers asyncio's pure-Python SSL protocol by hand, which cost
        a fifth of the CPU of a persistent TLS session (profiled). RFC 3207
        4.2: what the client said before TLS is forgotten, and anything it
        pipelined after STARTTLS in plaintext is discarded, never executed.
        """
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context or self.transport is None:
            await self.push("454 4.7.0 TLS not available")
            return
        if self._tls_protocol is not None:
            await self.push("503 5.5.1 TLS already active")
            return
        await self.push("220 2.0.0 Ready to start TLS")
        # uvloop's transports are not asyncio.WriteTransport subclasses.
        raw = cast(asyncio.WriteTransport, self.transport)
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        try:
            secure = await self.loop.start_tls(
                raw, self, self.tls_context, server_side=True, ssl_handshake_timeout=30
            )
        except (OSError, ssl.SSLError, TimeoutError) as error:
            raise TLSSetupException() from error
        if secure is None:  # the connection went away during the handshake
            return
        self._secured(raw, secure)

    def _secured(self, raw: asyncio.BaseTransport, secure: asyncio.BaseTransport) -> None:
        """Start over on the encrypted transport, as aiosmtpd's connection_made does."""
        peer = self.session.peer if self.session else None
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.session = self._create_session()
        self.session.peer = peer
        self.session.ssl = {"ssl_object": secure.get_extra_info("ssl_object")}
        self._original_transport = raw
        self._tls_protocol = secure  # type: ignore[assignment]  # aiosmtpd tests it for truth
        self._tls_handshake_okay = True
        self.transport = secure
        self._reader._transport = secure  # type: ignore[attr-defined]
        self._writer._transport = secure  # type: ignore[attr-defined]
        # No clearing here: with TLS 1.3 the client's first encrypted command
        # can arrive with its Finished message, before this runs.

    def _create_session(self) -> Session:
        return RelaySession(self.loop)

    @property
    def encrypted(self) -> bool:
        return (
            self.transport is not None and self.transport.get_extra_info("ssl_object") is not None
        )

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the reply to DATA: shutdown waits for these."""
        return self.envelope is not None and self.envelope.mail_from is not None

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close_with(self, line: bytes) -> None:
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(line)
            transport.close()

    def abort(self) -> None:
        """Drop the connection now (a TLS close would wait for the client's reply)."""
        transport = cast(asyncio.WriteTransport | None, self._original_transport or self.transport)
        if transport is not None:
            transport.abort()

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not self._raw_replies:
            await super().push(with_enhanced_code(status))
        else:
            await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034 section 3: no enhanced codes in the EHLO or HELO reply.
        self._raw_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._raw_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._raw_replies = False

    async def _handle_client(self) -> None:
        assert self.session is not None
        ip = str(self.session.peer[0]) if self.session.peer else "?"
        refusal = self._tracker.enter(ip, self.listener)
        if refusal is not None:
            await self.push(refusal)
            if self.transport is not None:
                self.transport.close()
            return
        self._tracker.sessions.add(self)
        try:
            await super()._handle_client()
        finally:
            self._tracker.sessions.discard(self)
            self._tracker.leave(ip, self.listener)
