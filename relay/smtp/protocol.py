"""aiosmtpd's protocol, adjusted for a relay.

* Every reply after EHLO carries an enhanced status code (RFC 2034), which
  aiosmtpd's stock replies lack; ``push`` adds it from one table.
* Connection limits per client address and per process: the 421 is sent
  before the greeting (RFC 5321 3.1 lets a server refuse that way).
* A Session whose ``login_data`` is a plain attribute: aiosmtpd 1.4 warns on
  every successful AUTH through the deprecated property otherwise.
* A command argument holding CR or NUL is refused (501 5.5.2) before any
  command runs: aiosmtpd ends lines at LF only, so a bare CR would reach the
  handler and, copied into a header, end the line there downstream.
* DATA is read line by line as Postfix does with ``smtpd_forbid_bare_newline
  = normalize``: a line may end in bare LF (it becomes CRLF, whatever the
  size of the message), only CRLF.CRLF ends the data, and a dot line next to
  a bare line ending is smuggling. The header section is measured as it
  arrives, so an oversized one is refused without ever being parsed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import MISSING, SMTP, Session, TLSSetupException, syntax

from relay.core.replies import (
    BAD_COMMAND_BYTES,
    SERVER_BUSY,
    TOO_MANY_CONNECTIONS,
    Reply,
    header_section_too_big,
    too_many_headers,
    with_enhanced_code,
)

log = logging.getLogger("relay.smtp")
# "<dot-atom@domain>" then white space or the end: the path most clients send
# (RFC 5321 4.1.2 Dot-string local part, a plain domain).
_PLAIN_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*(?![ \t(])"
)

DEFAULT_MAX_HEADER_BYTES = 1024 * 1024
DEFAULT_MAX_HEADERS = 1000
# DATA lines read between two yields to the loop: a client's buffered 256 KiB
# of short lines would otherwise be consumed in one go.
YIELD_EVERY = 256


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


@dataclass
class DataScan:
    """What the line reader learned about one DATA transfer as it arrived."""

    max_header_bytes: int
    max_headers: int
    in_header: bool = True
    header_bytes: int = 0
    headers: int = 0
    previous_bare: bool = False  # the last line ended in a bare LF
    smuggling: bool = False
    refusal: Reply | None = None  # a header limit passed

    def line(self, line: bytes) -> bytes:
        """Account for one line as read (ending in LF); return it with CRLF endings only.

        A dot line is smuggling if a bare CR or LF is next to its dot, before
        or after; such a line is handed on with a second dot so that it can
        never end the data (the message is refused anyway). Bare CR and bare
        LF become CRLF here, a line at a time, as Postfix does; a message
        that arrives through this reader needs no other normalisation.
        """
        if (
            line.find(b"\r") == len(line) - 2 >= 0  # CRLF and no other CR (lines end in LF)
            and line[:1] != b"."
            and not self.previous_bare
            and not self.in_header
        ):
            return line  # the common case: nothing to do
        bare = line[-1:] == b"\n" and line[-2:-1] != b"\r"
        after = line[1:2]
        if line[:1] == b"." and (
            after == b"\n" or (after == b"\r" and (line != b".\r\n" or self.previous_bare))
        ):
            self.smuggling = True
            line = b"." + line
        elif b"\r." in line and self._bare_cr_dot(line):
            self.smuggling = True
        if bare:
            line = line[:-1] + b"\r\n"
        if b"\r" in line[:-2]:  # bare CRs inside (the line has no other LF)
            line = line[:-2].replace(b"\r", b"\r\n") + b"\r\n"
            if self.in_header:
                for part in line[:-2].split(b"\r\n"):
                    if self.in_header:
                        self._header_line(part + b"\r\n")
        elif self.in_header:
            self._header_line(line)
        self.previous_bare = bare
        return line

    @staticmethod
    def _bare_cr_dot(line: bytes) -> bool:
        i = line.find(b"\r.")
        while i >= 0:
            if line[i + 2 : i + 3] in (b"\r", b"\n"):
                return True
            i = line.find(b"\r.", i + 2)
        return False

    def _header_line(self, line: bytes) -> None:
        if line == b"\r\n":
            self.in_header = False
            return
        self.header_bytes += len(line)
        if line[:1] not in (b" ", b"\t"):
            self.headers += 1
        if self.refusal is not None:
            return
        if self.header_bytes > self.max_header_bytes:
            self.refusal = header_section_too_big(self.max_header_bytes)
        elif self.headers > self.max_headers:
            self.refusal = too_many_headers(self.max_headers)


def has_bad_bytes(arg: str | None) -> bool:
    """CR, LF or NUL in a command argument (aiosmtpd already split at LF)."""
    return arg is not None and ("\r" in arg or "\n" in arg or "\x00" in arg)


class RelaySMTP(SMTP):
    def __init__(
        self,
        handler: Any,
        *,
        listener: str,
        tracker: ConnectionTracker,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        **kwargs: Any,
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
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        # Set when a DATA line began with a dot and a bare CR or LF: aiosmtpd
        # removes that dot before we see the content, so it is caught here.
        self.smuggling = False
        # The current DATA transfer's findings (None outside DATA).
        self.scan: DataScan | None = None
        self._smtp_methods = {
            verb: self._refusing_bad_bytes(method) for verb, method in self._smtp_methods.items()
        }

    def _refusing_bad_bytes(
        self, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        @functools.wraps(method)
        async def checked(arg: str | None) -> None:
            if has_bad_bytes(arg):
                await self.push(str(BAD_COMMAND_BYTES))
                return
            await method(arg)

        return checked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._tls_protocol is None and transport.get_extra_info("ssl_object") is not None:
            # Implicit TLS (RFC 8314): encrypted from the first byte. aiosmtpd
            # only knows STARTTLS, and only tests this attribute for truth
            # before it offers AUTH; the real SSL protocol is asyncio's.
            self._tls_protocol = transport.get_protocol()  # type: ignore[assignment]
            if self.session is not None:
                self.session.ssl = transport.get_extra_info("ssl_object")

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, read by LF into one buffer (see ``DataScan``).

        aiosmtpd kept a list of lines and unstuffed them in one pass after
        the final dot: seconds on the loop for a big message of short lines.
        Here each line is unstuffed as it arrives and the loop is given back
        every ``YIELD_EVERY`` lines, whatever the client has buffered.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.scan = scan = DataScan(self.max_header_bytes, self.max_headers)
        try:
            failure = await self._read_data(scan)
        finally:
            self.scan = None
        self.smuggling = self.smuggling or scan.smuggling
        if failure is None and scan.refusal is not None:
            failure = str(scan.refusal)
        if failure is not None:
            log.info("DATA refused: listener=%s reply=%s", self.listener, failure)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(failure)
            return
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self, scan: DataScan) -> str | None:
        """Read up to CRLF.CRLF; the reply that refuses the data, or None."""
        assert self.envelope is not None
        content = bytearray()
        size = 0
        limit = self.data_size_limit
        failure: str | None = None
        tail = False  # the rest of a line already found too long
        lines = 0
        ended = False
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as error:
                await self._reader.read(error.consumed)  # drop it as it comes
                failure = failure or "500 Line too long (see RFC5321 4.5.3.1.6)"
                tail = True
                continue
            except asyncio.CancelledError:
                self._writer.close()  # the connection went away during DATA
                raise
            lines += 1
            if lines % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if tail:
                tail = False
                continue
            # The length as the line would be with CRLF (RFC 5321 4.5.3.1.6).
            length = len(line) + (line[-2:-1] != b"\r")
            line = scan.line(line)
            if line == b".\r\n":
                ended = True
                break
            size += length
            if limit and size > limit:
                failure = failure or "552 Error: Too much mail data"
            elif length > self.line_length_limit:
                failure = failure or "500 Line too long (see RFC5321 4.5.3.1.6)"
            if failure is not None or scan.refusal is not None:
                content.clear()  # keep reading to the end, keep nothing
                continue
            if line[:1] == b".":
                content += memoryview(line)[1:]
            else:
                content += line
        if not ended:  # the connection went away: nothing was accepted
            raise ConnectionResetError("connection lost during DATA")
        data = bytes(content)
        self.envelope.content = data
        self.envelope.original_content = data
        return failure

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

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's, without the ``typing.Protocol`` class it defines on every
        call (a class per MAIL FROM and RCPT TO: 5% of acceptance's CPU,
        issue 15's profile), and with a plain ``<local@domain>`` read by one
        regex: the answer the header parser gives (tests/test_smtp_getaddr.py
        compares), at a tenth of the cost."""
        if not arg:
            return "", ""
        plain = _PLAIN_PATH.match(arg)
        if plain is not None:
            addr = plain.group(1)
            localpart = addr.rpartition("@")[0]
            if self.local_part_limit and len(localpart) > self.local_part_limit:
                return None, None
            return addr, arg[plain.end() :]
        try:
            parser = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
            address, rest = parser(arg)
        except HeaderParseError:
            return None, None
        addr = str(address.addr_spec)
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

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
            ended = getattr(self.event_handler, "session_ended", None)
            if ended is not None:  # the session handler's limits give back its slot
                ended(self.session)
