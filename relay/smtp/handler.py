"""The session handler: speaks SMTP, and asks auth, policy and the spool.

aiosmtpd calls ``handle_<VERB>(server, session, envelope, ...)`` and
``auth_<MECH>(server, args)``; each returns the reply. Hooks that exist must
set ``envelope.mail_from`` and append ``rcpt_tos`` themselves. Nothing here
runs SQL or HTTP: the collaborators do, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session

from relay.auth.authenticator import Authenticator, Identity
from relay.core.errors import SpoolError
from relay.core.message import (
    DuplicateOriginator,
    MalformedMessage,
    ParsedMessage,
    UnreadableOriginator,
    classify,
    has_smuggling,
    normalise_line_endings,
    parse,
    received_header,
    rewrite_headers,
)
from relay.core.replies import (
    BAD_COMMAND_BYTES,
    BAD_RECIPIENT_ADDRESS,
    BAD_SENDER_ADDRESS,
    DUPLICATE_ORIGINATOR,
    INTERNAL_ERROR,
    MALFORMED_MESSAGE,
    NUL_BYTES,
    RECIPIENT_OK,
    SENDER_OK,
    SMUGGLING,
    TOO_MANY_RECIPIENTS,
    Reply,
    queued,
)
from relay.queue.spool import Acceptance, Spool
from relay.routing.policy import Policy, Submission
from relay.smtp.protocol import RelaySMTP, header_section_too_big, too_many_headers

log = logging.getLogger("relay.smtp")

CAMPAIGN_HEADER = "X-Relay-Campaign"
# A message larger than this, or with a header section larger than the
# second, is read (parsed, addresses, rewrite) on a worker thread: a few
# milliseconds of work at most stays on the loop (bench/stall.py; a To field
# of 12,000 addresses costs 140 ms to read).
OFF_LOOP_BYTES = 256 * 1024
OFF_LOOP_HEADER_BYTES = 32 * 1024


@dataclass
class Accepted:
    """One message's result, for counters and logs."""

    queue_id: str | None
    account: str
    state: str
    recipients: list[tuple[str, str]]
    size: int
    seconds: float


@dataclass
class HandlerConfig:
    hostname: str
    max_recipients: int
    observers: list[Callable[[Accepted], None]] = field(default_factory=list)
    on_auth_failure: list[Callable[[str], None]] = field(default_factory=list)
    # (listener, scope) when a failed login engages a lock-out or slow-down.
    on_lockout: list[Callable[[str, str], None]] = field(default_factory=list)


def _decode(blob: bytes) -> str:
    return blob.decode("utf-8", "surrogateescape")


def _undecodable(address: str) -> bool:
    """Bytes that are not UTF-8 (RFC 6531 allows UTF-8 only): kept as surrogates."""
    return any("\udc80" <= c <= "\udcff" for c in address)


@dataclass
class Reading:
    """What DATA's checks read from one message: a refusal, or what policy needs."""

    refusal: Reply | None = None
    parsed: ParsedMessage | None = None
    originators: list[str] = field(default_factory=list)
    header_from: list[str] = field(default_factory=list)
    recipients: list[tuple[str, str]] = field(default_factory=list)


def read_message(
    raw: bytes, rcpt_tos: list[str], max_header_bytes: int, max_headers: int, scanned: bool = False
) -> Reading:
    """Every check on the content before policy: the work of DATA that needs no I/O.

    In order: smuggling, NUL bytes, line endings, the header section (its
    limits, a second From or Sender), then every From and Sender address a
    reader would show. Pure CPU: the handler runs it on a thread for a big
    message. ``scanned``: the protocol's line reader already looked for
    smuggling and made every line end in CRLF, a line at a time (a search
    or a replace over a big message of short lines holds the GIL, and so
    the event loop, for most of a second).
    """
    if not scanned and has_smuggling(raw):
        return Reading(SMUGGLING)
    if b"\x00" in raw:
        return Reading(NUL_BYTES)
    try:
        parsed = parse(raw if scanned else normalise_line_endings(raw))
        if parsed.header_end > max_header_bytes:
            return Reading(header_section_too_big(max_header_bytes))
        if parsed.fields > max_headers:
            return Reading(too_many_headers(max_headers))
        originators = parsed.originators()
    except DuplicateOriginator as exc:
        return Reading(DUPLICATE_ORIGINATOR.with_text(DUPLICATE_ORIGINATOR.text.format(exc.name)))
    except UnreadableOriginator as exc:
        return Reading(MALFORMED_MESSAGE.with_text(f"Message header malformed: {exc}"))
    except MalformedMessage:
        return Reading(MALFORMED_MESSAGE)
    recipients = classify(rcpt_tos, parsed.addresses("To"), parsed.addresses("Cc"))
    return Reading(None, parsed, originators, parsed.addresses("From"), recipients)


class SessionHandler:
    def __init__(
        self, config: HandlerConfig, authenticator: Authenticator, policy: Policy, spool: Spool
    ) -> None:
        self._config = config
        self._auth = authenticator
        self._policy = policy
        self._spool = spool

    # -- AUTH (RFC 4954), replacing aiosmtpd's synchronous authenticator ---------

    async def _login(self, server: RelaySMTP, login: bytes, password: bytes) -> AuthResult:
        session = server.session
        peer = session.peer[0] if session is not None and session.peer else "?"
        if any(c in login for c in b"\r\n\x00"):
            # No header carries the username today; a future one must not
            # inherit a line break from it (the rule for every argument).
            await server.push(str(BAD_COMMAND_BYTES))
            return AuthResult(success=False, handled=True)
        result = await self._auth.login(_decode(login), _decode(password), str(peer))
        if result.identity is None:
            for callback in self._config.on_auth_failure:
                callback(server.listener)
            for scope in result.lockouts:
                for counted in self._config.on_lockout:
                    counted(server.listener, scope)
            return AuthResult(success=False, handled=False, message=str(result.reply))
        return AuthResult(success=True, auth_data=result.identity, message=str(result.reply))

    async def _initial_or_challenge(
        self, server: RelaySMTP, args: list[str], challenge: str
    ) -> bytes | None:
        if len(args) == 1:
            blob = await server.challenge_auth(challenge)
            return None if blob is MISSING else bytes(blob)
        try:
            return base64.b64decode(args[1], validate=True)
        except (binascii.Error, ValueError):
            await server.push("501 5.5.2 Can't decode base64")
            return None

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        blob = await self._initial_or_challenge(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:  # RFC 4616: [authzid] NUL authcid NUL passwd
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._login(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        login = await self._initial_or_challenge(server, args, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._login(server, login, bytes(password))

    # -- the transaction ---------------------------------------------------------

    async def handle_EHLO(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        last = responses.pop()  # "250 HELP"
        responses += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", last]
        return responses

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        server.smuggling = False
        if _undecodable(address):
            return str(BAD_SENDER_ADDRESS)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(SENDER_OK)

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local, at, domain = address.rpartition("@")
        if not (local and at and domain) or _undecodable(address):
            return str(BAD_RECIPIENT_ADDRESS)
        if len(envelope.rcpt_tos) >= self._config.max_recipients:
            return str(TOO_MANY_RECIPIENTS)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(RECIPIENT_OK)

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        identity = session.auth_data
        mail_from = envelope.mail_from
        if not isinstance(identity, Identity) or mail_from is None:  # aiosmtpd checked both
            return "503 5.5.1 Error: need AUTH and MAIL first"
        raw = envelope.original_content or b""
        smuggled, server.smuggling = server.smuggling, False
        if smuggled:
            return self._refuse(SMUGGLING, identity, envelope)
        big = len(raw) > OFF_LOOP_BYTES or raw.find(b"\r\n\r\n", 0, OFF_LOOP_HEADER_BYTES) < 0
        args = (raw, envelope.rcpt_tos, server.max_header_bytes, server.max_headers, True)
        reading = await asyncio.to_thread(read_message, *args) if big else read_message(*args)
        if reading.refusal is not None or reading.parsed is None:
            return self._refuse(reading.refusal or MALFORMED_MESSAGE, identity, envelope)
        parsed = reading.parsed
        campaign = (parsed.headers.get(CAMPAIGN_HEADER) or "").strip() or None
        senders = (mail_from, *reading.originators)
        decision = await self._policy.decide(
            Submission(
                identity.account_id,
                identity.policy,
                campaign is not None or identity.purpose == "campaign",
                tuple(senders),
            )
        )
        recipients = reading.recipients
        if decision.reply is not None:
            log.info(
                "reject: account=%s from=<%s> reason=%s",
                identity.account_name,
                envelope.mail_from,
                decision.reason,
            )
            self._observe(None, identity, "rejected", recipients, len(raw), started)
            return str(decision.reply)
        acc = Acceptance(
            account_id=identity.account_id,
            credential_id=identity.credential_id,
            mail_from=mail_from,
            recipients=recipients,
            data=b"",
            state=decision.state,
            reason=decision.reason,
            provider_id=decision.provider_id,
            header_from=", ".join(reading.header_from)[:998] or None,
            campaign=campaign,
            account_name=identity.account_name,
        )
        rewrite = functools.partial(
            rewrite_headers,
            parsed,
            hostname=self._config.hostname,
            remove=("bcc", CAMPAIGN_HEADER),
            received=self._received(server, session, envelope, acc.queue_id),
        )
        acc.data = await asyncio.to_thread(rewrite) if big else rewrite()
        try:
            queue_id = await self._spool.accept(acc)
        except SpoolError as exc:
            log.error(
                "not accepted: account=%s from=<%s>: %s",
                identity.account_name,
                envelope.mail_from,
                exc,
            )
            self._observe(None, identity, "tempfail", recipients, len(raw), started)
            return str(exc.reply)
        log.info(
            "%s: account=%s from=<%s> size=%d nrcpt=%d state=%s%s",
            queue_id,
            identity.account_name,
            envelope.mail_from,
            len(acc.data),
            len(recipients),
            acc.state,
            f" reason={acc.reason!r}" if acc.reason else "",
        )
        self._observe(queue_id, identity, acc.state, recipients, len(acc.data), started)
        return str(queued(queue_id))

    async def handle_exception(self, error: Exception) -> str:
        # Never show a client our internals; a fault of ours is always temporary
        # for the client (RFC 5321 4.2.5: it keeps the message and retries).
        log.exception("session fault: %s", type(error).__name__)
        return str(INTERNAL_ERROR)

    # -- helpers -----------------------------------------------------------------

    def _received(
        self, server: RelaySMTP, session: Session, envelope: Envelope, queue_id: str
    ) -> str:
        # RFC 3848: ESMTPSA is ESMTP with AUTH over TLS, ESMTPA without TLS.
        protocol = "ESMTPSA" if server.encrypted else "ESMTPA"
        if envelope.smtp_utf8:
            protocol = "UTF8" + protocol.removeprefix("E")
        peer = session.peer[0] if session.peer else "unknown"
        one = envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None
        return received_header(
            helo=session.host_name or "unknown",
            peer=f"[{peer}]",
            hostname=self._config.hostname,
            queue_id=queue_id,
            protocol=protocol,
            recipient=one,
        )

    def _refuse(self, reply: Reply, identity: Identity, envelope: Envelope) -> str:
        log.info(
            "refused: account=%s from=<%s> reply=%s",
            identity.account_name,
            envelope.mail_from,
            reply,
        )
        return str(reply)

    def _observe(
        self,
        queue_id: str | None,
        identity: Identity,
        state: str,
        recipients: list[tuple[str, str]],
        size: int,
        started: float,
    ) -> None:
        event = Accepted(
            queue_id, identity.account_name, state, recipients, size, time.perf_counter() - started
        )
        for observer in self._config.observers:
            observer(event)
