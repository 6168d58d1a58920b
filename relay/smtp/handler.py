"""The session handler: speaks SMTP, and asks auth and the intake stage.

aiosmtpd calls ``handle_<VERB>(server, session, envelope, ...)`` and
``auth_<MECH>(server, args)``; each returns the reply. Hooks that exist must
set ``envelope.mail_from`` and append ``rcpt_tos`` themselves. What happens to
a message after DATA (checks, policy, rewrite, spool) is ``relay.intake``'s;
DATA here maps its result to a reply. Nothing here runs SQL or HTTP: the
collaborators do, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session

from relay.auth.authenticator import Authenticator, Identity
from relay.core.replies import (
    BAD_COMMAND_BYTES,
    BAD_RECIPIENT_ADDRESS,
    BAD_SENDER_ADDRESS,
    INTERNAL_ERROR,
    RECIPIENT_OK,
    SENDER_OK,
    SMUGGLING,
    TOO_MANY_RECIPIENTS,
    Reply,
    queued,
)
from relay.intake import Arrival, Intake
from relay.limits.leases import Limits
from relay.smtp.protocol import RelaySMTP

log = logging.getLogger("relay.smtp")


@dataclass
class HandlerConfig:
    max_recipients: int
    on_auth_failure: list[Callable[[str], None]] = field(default_factory=list)
    # (listener, scope) when a failed login engages a lock-out or slow-down.
    on_lockout: list[Callable[[str, str], None]] = field(default_factory=list)
    # The reply refusing a suspended account's mail at MAIL FROM, or None
    # (relay.reputation.suspension; unset: never refused there).
    suspension: Callable[[int], Awaitable[Reply | None]] | None = None
    # Account and credential limits (relay.limits): sessions at AUTH, messages
    # at MAIL FROM, recipients at RCPT TO; None: no limits checked.
    limits: Limits | None = None
    # Waits at MAIL FROM while the queue is behind (relay.queue.inflow); None: never.
    in_flow: Callable[[], Awaitable[None]] | None = None


def _decode(blob: bytes) -> str:
    return blob.decode("utf-8", "surrogateescape")


def _undecodable(address: str) -> bool:
    """Bytes that are not UTF-8 (RFC 6531 allows UTF-8 only): kept as surrogates."""
    return any("\udc80" <= c <= "\udcff" for c in address)


class SessionHandler:
    def __init__(self, config: HandlerConfig, authenticator: Authenticator, intake: Intake) -> None:
        self._config = config
        self._auth = authenticator
        self._intake = intake
        # Sessions counted against a session limit, by id(session): given back at its end.
        self._admitted: dict[int, tuple[str, ...]] = {}

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
        limits = self._config.limits
        if limits is not None and session is not None:
            admitted = await limits.admit(result.identity.credential_id)
            if isinstance(admitted, Reply):
                return AuthResult(success=False, handled=False, message=str(admitted))
            if admitted:
                self._admitted[id(session)] = admitted
        return AuthResult(success=True, auth_data=result.identity, message=str(result.reply))

    def session_ended(self, session: Session) -> None:
        """The connection closed (RelaySMTP calls this): give back its session slot."""
        admitted = self._admitted.pop(id(session), None)
        if admitted and self._config.limits is not None:
            self._config.limits.release(admitted)

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
        identity = session.auth_data
        if self._config.suspension is not None and isinstance(identity, Identity):
            refusal = await self._config.suspension(identity.account_id)
            if refusal is not None:
                log.info("refused: account=%s suspended at MAIL", identity.account_name)
                return str(refusal)
        if self._config.in_flow is not None:
            # Before the message, so nothing accepted waits (Postfix's in_flow_delay).
            await self._config.in_flow()
        if self._config.limits is not None and isinstance(identity, Identity):
            limited = await self._config.limits.spend(identity.credential_id, "messages")
            if limited is not None:
                return str(limited)
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
        identity = session.auth_data
        if isinstance(identity, Identity):
            refused = await self._intake.check_recipient(identity, address)
            if refused is not None:
                return str(refused)
            if self._config.limits is not None:
                limited = await self._config.limits.spend(identity.credential_id, "recipients")
                if limited is not None:
                    return str(limited)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(RECIPIENT_OK)

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        identity = session.auth_data
        mail_from = envelope.mail_from
        if not isinstance(identity, Identity) or mail_from is None:  # aiosmtpd checked both
            return "503 5.5.1 Error: need AUTH and MAIL first"
        smuggled, server.smuggling = server.smuggling, False
        if smuggled:
            return self._refuse(SMUGGLING, identity, envelope)
        raw = envelope.original_content or b""
        arrival = self._arrival(server, session, envelope)
        result = await self._intake.accept(identity, mail_from, envelope.rcpt_tos, raw, arrival)
        return str(result) if isinstance(result, Reply) else str(queued(result))

    async def handle_exception(self, error: Exception) -> str:
        # Never show a client our internals; a fault of ours is always temporary
        # for the client (RFC 5321 4.2.5: it keeps the message and retries).
        log.exception("session fault: %s", type(error).__name__)
        return str(INTERNAL_ERROR)

    # -- helpers -----------------------------------------------------------------

    @staticmethod
    def _arrival(server: RelaySMTP, session: Session, envelope: Envelope) -> Arrival:
        # RFC 3848: ESMTPSA is ESMTP with AUTH over TLS, ESMTPA without TLS.
        protocol = "ESMTPSA" if server.encrypted else "ESMTPA"
        if envelope.smtp_utf8:
            protocol = "UTF8" + protocol.removeprefix("E")
        peer = session.peer[0] if session.peer else "unknown"
        # The line reader (DataScan) checked smuggling and made every line end in CRLF.
        return Arrival(session.host_name or "unknown", f"[{peer}]", protocol, scanned=True)

    def _refuse(self, reply: Reply, identity: Identity, envelope: Envelope) -> str:
        log.info(
            "refused: account=%s from=<%s> reply=%s",
            identity.account_name,
            envelope.mail_from,
            reply,
        )
        return str(reply)
