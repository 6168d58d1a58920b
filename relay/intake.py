"""Intake: what happens to a message between the end of DATA and the reply.

Postfix calls this job "cleanup". Here it is one call, ``Intake.accept``: who
authenticated, the envelope and the message bytes in; the queue id, or the
reply that refuses the message, out. In order:

1. the content checks that need no I/O (``read_message``): smuggling and line
   endings unless the front end's line reader did them, NUL bytes (RFC 5322
   2.3), the header section (its limits, one From and one Sender, RFC 5322
   3.6), every originator address a reader would show, recipient classes;
2. policy and route (``relay.routing.policy``): reject, drop, pause or queue,
   from the process's decision cache when it holds the account (no hop off
   the loop, ``relay.store.generation``); then the suppression list
   (``relay.suppression``, one query for all the recipients, none for an
   account without entries): a suppressed recipient is stored as
   ``suppressed`` and never sent while the others go; when every recipient is
   suppressed the message is ``dropped`` at once, reason "every recipient
   suppressed";
3. the header rewrite (``relay.core.message``): Received on top with the queue
   id (RFC 5321 4.4), Bcc and X-Relay-Campaign gone, Message-ID and Date
   added when missing (RFC 5322 3.6), one-click unsubscribe on the campaign
   mail of an account that asks for it (RFC 8058, ``unsubscribe_fields``);
4. the spool, which answers only once the message is committed; a failed
   write is 451 4.3.0, never a 250 for what was not persisted.

Nothing here knows about sockets: the SMTP handler calls ``accept`` and
turns its result into a reply line, and the tests call it directly. Sending
limits and quotas are not checked here but as each unit is asked for: a
message at MAIL FROM, a recipient at RCPT TO, a session at AUTH
(``relay.limits``, called by the SMTP handler).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relay.auth.authenticator import Identity
from relay.core.errors import SpoolError
from relay.core.events import Notice, NoticeKind, Notify
from relay.core.message import (
    UNSUBSCRIBE_FIELDS,
    DuplicateOriginator,
    MalformedMessage,
    ParsedMessage,
    UnreadableOriginator,
    classify,
    has_smuggling,
    list_unsubscribe_fields,
    normalise_line_endings,
    parse,
    received_header,
    rewrite_headers,
)
from relay.core.outcomes import MessageState
from relay.core.replies import (
    DUPLICATE_ORIGINATOR,
    MALFORMED_MESSAGE,
    NUL_BYTES,
    SMUGGLING,
    SPOOL_UNAVAILABLE,
    Reply,
    header_section_too_big,
    suppressed_recipient,
    too_many_headers,
)
from relay.core.unsubscribe import make_token
from relay.queue.spool import Acceptance, Spool
from relay.routing.policy import Decision, Policy, Submission
from relay.suppression.check import SuppressionCheck, why
from relay.suppression.lists import Entry

# The lines that say what became of a message keep the SMTP front's logger
# name, as before intake had a module of its own (log filters select on it).
log = logging.getLogger("relay.smtp")

CAMPAIGN_HEADER = "X-Relay-Campaign"
# A message larger than this, or with a header section larger than the
# second, is read (parsed, addresses, rewrite) on a worker thread: a few
# milliseconds of work at most stays on the loop (bench/stall.py; a To field
# of 12,000 addresses costs 140 ms to read).
OFF_LOOP_BYTES = 256 * 1024
OFF_LOOP_HEADER_BYTES = 32 * 1024
ALL_SUPPRESSED = "every recipient suppressed"


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
class IntakeConfig:
    hostname: str
    max_header_bytes: int
    max_headers: int
    # ``[suppression] at_rcpt``: refuse a suppressed recipient at RCPT TO.
    suppress_at_rcpt: bool = False
    observers: list[Callable[[Accepted], None]] = field(default_factory=list)
    # One-click unsubscribe: ``[webhooks] public_url`` (empty: never) and the
    # key tokens are made with (``relay.core.crypto.derive_key``).
    public_url: str = ""
    unsubscribe_key: bytes = b""
    # Told when campaign mail is paused (the notifications service, wired by the app).
    notify: Notify | None = None


@dataclass(frozen=True)
class Arrival:
    """How the message came in: what its Received field records (RFC 5321 4.4).

    ``protocol`` is the RFC 3848 keyword (ESMTPSA, UTF8SMTPA ...). ``scanned``:
    the front end's line reader already looked for smuggling and made every
    line end in CRLF, a line at a time (a search or a replace over a big
    message of short lines holds the GIL, and so the event loop, for most of
    a second); otherwise ``accept`` does both.
    """

    helo: str = "unknown"
    peer: str = "[unknown]"
    protocol: str = "ESMTPA"
    scanned: bool = False


@dataclass
class Reading:
    """What DATA's checks read from one message: a refusal, or what policy needs."""

    refusal: Reply | None = None
    parsed: ParsedMessage | None = None
    originators: list[str] = field(default_factory=list)
    header_from: list[str] = field(default_factory=list)
    recipients: list[tuple[str, str]] = field(default_factory=list)


def read_message(
    raw: bytes,
    rcpt_tos: Sequence[str],
    max_header_bytes: int,
    max_headers: int,
    scanned: bool = False,
) -> Reading:
    """Every check on the content before policy: the work of DATA that needs no I/O.

    In order: smuggling, NUL bytes, line endings, the header section (its
    limits, a second From or Sender), then every From and Sender address a
    reader would show. Pure CPU: ``accept`` runs it on a thread for a big
    message. ``scanned``: as ``Arrival.scanned``.
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


class Intake:
    """The cleanup stage: one message in, a queue id or a refusal out."""

    def __init__(
        self,
        config: IntakeConfig,
        policy: Policy,
        spool: Spool,
        suppressions: SuppressionCheck | None = None,
    ) -> None:
        self._config = config
        self._policy = policy
        self._spool = spool
        self._suppressions = suppressions

    def _decide(self, sub: Submission, addresses: list[str]) -> tuple[Decision, dict[str, Entry]]:
        """Policy, then the suppression list of the recipients, in one hop off the
        loop (each hop costs a thread hand-off and two loop wake-ups per message)."""
        decision = self._policy.decide_now(sub)
        if decision.reply is not None or self._suppressions is None or not addresses:
            return decision, {}
        return decision, self._suppressions.suppressed_now(sub.account_id, addresses)

    def _decide_cached(self, sub: Submission, addresses: list[str]) -> Decision | None:
        """``_decide`` from the process's cache, without I/O (on the loop): when
        the policy context is cached and the account has no suppression at all
        (a suppressed recipient is always looked up); None: read the database."""
        decision = self._policy.decide_cached(sub)
        if decision is None or decision.reply is not None or not addresses:
            return decision
        assert self._suppressions is not None  # addresses are given only with it
        return decision if self._suppressions.listed_cached(sub.account_id) is False else None

    async def check_recipient(self, identity: Identity, address: str) -> Reply | None:
        """At RCPT TO, with ``[suppression] at_rcpt``: 550 5.1.1 for a suppressed
        address, naming the reason and the day; None to go on."""
        if not self._config.suppress_at_rcpt or self._suppressions is None:
            return None
        entry = await self._suppressions.one(identity.account_id, address)
        if entry is None:
            return None
        log.info(
            "refused at RCPT: account=%s to=<%s> %s", identity.account_name, address, why(entry)
        )
        return suppressed_recipient(address, entry.reason, entry.created_at.date().isoformat())

    async def accept(
        self,
        identity: Identity,
        mail_from: str,
        recipients: Sequence[str],
        raw: bytes,
        arrival: Arrival = Arrival(),
    ) -> str | Reply:
        """The queue id once the message is committed, or the reply that refuses it.

        ``recipients`` are the envelope's (RCPT TO), ``raw`` the message as
        received after DATA's dot-unstuffing. Dropped and paused messages are
        accepted too (the client is told 250); only ``reject`` and the checks
        above refuse, and a spool failure is a 451 the client retries.
        """
        started = time.perf_counter()
        config = self._config
        big = len(raw) > OFF_LOOP_BYTES or raw.find(b"\r\n\r\n", 0, OFF_LOOP_HEADER_BYTES) < 0
        args = (raw, recipients, config.max_header_bytes, config.max_headers, arrival.scanned)
        reading = await asyncio.to_thread(read_message, *args) if big else read_message(*args)
        if reading.refusal is not None or reading.parsed is None:
            return self._refuse(reading.refusal or MALFORMED_MESSAGE, identity, mail_from)
        parsed = reading.parsed
        campaign = (parsed.get(CAMPAIGN_HEADER) or "").strip() or None
        senders = (mail_from, *reading.originators)
        campaign_mail = campaign is not None or identity.purpose == "campaign"
        sub = Submission(identity.account_id, identity.policy, campaign_mail, tuple(senders))
        await self._policy.fresh()
        classes = reading.recipients
        addresses = [a for a, _ in classes] if self._suppressions else []
        cached = self._decide_cached(sub, addresses)
        found: dict[str, Entry] = {}
        if cached is None:
            decision, found = await asyncio.to_thread(self._decide, sub, addresses)
        else:
            decision = cached
        if decision.reply is not None:
            log.info(
                "reject: account=%s from=<%s> reason=%s",
                identity.account_name,
                mail_from,
                decision.reason,
            )
            self._observe(None, identity, "rejected", classes, len(raw), started)
            return decision.reply
        state, reason = decision.state, decision.reason
        suppressed: list[tuple[str, str, str]] = []
        if found:
            suppressed = [(a, k, why(found[a])) for a, k in classes if a in found]
            classes = [(a, k) for a, k in classes if a not in found]
            if not classes:
                state, reason = MessageState.DROPPED, ALL_SUPPRESSED
        acc = Acceptance(
            account_id=identity.account_id,
            credential_id=identity.credential_id,
            mail_from=mail_from,
            recipients=classes,
            suppressed=suppressed,
            data=b"",
            state=state,
            reason=reason,
            provider_id=decision.provider_id,
            header_from=", ".join(reading.header_from)[:998] or None,
            campaign=campaign,
            account_name=identity.account_name,
        )
        rewrite = functools.partial(
            rewrite_headers,
            parsed,
            hostname=config.hostname,
            remove=("bcc", CAMPAIGN_HEADER),
            received=self._received(arrival, recipients, acc.queue_id),
            add=self.unsubscribe_fields(
                identity.account_id,
                campaign,
                classes,
                parsed,
                wanted=campaign_mail and decision.unsubscribe,
            ),
        )
        acc.data = await asyncio.to_thread(rewrite) if big else rewrite()
        try:
            queue_id = await self._spool.accept(acc)
        except SpoolError as exc:
            log.error(
                "not accepted: account=%s from=<%s>: %s",
                identity.account_name,
                mail_from,
                exc,
            )
            self._observe(None, identity, "tempfail", classes, len(raw), started)
            return exc.reply or SPOOL_UNAVAILABLE
        log.info(
            "%s: account=%s from=<%s> size=%d nrcpt=%d state=%s%s%s",
            queue_id,
            identity.account_name,
            mail_from,
            len(acc.data),
            len(classes),
            acc.state,
            f" reason={acc.reason!r}" if acc.reason else "",
            f" suppressed={len(suppressed)}" if suppressed else "",
        )
        self._observe(queue_id, identity, acc.state, classes, len(acc.data), started)
        if acc.state == MessageState.PAUSED and (campaign or identity.purpose == "campaign"):
            self._paused(identity, campaign, acc.reason)
        return queue_id

    def _paused(self, identity: Identity, campaign: str | None, reason: str | None) -> None:
        """Tell the account its campaign mail is paused: once per campaign a day
        (the dedupe key), however many messages of it are paused."""
        if self._config.notify is None:
            return
        name = campaign or "(no campaign header)"
        day = dt.datetime.now(dt.UTC).date().isoformat()
        self._config.notify(
            Notice(
                identity.account_id,
                NoticeKind.CAMPAIGN_PAUSED,
                f"campaign_paused:{identity.account_id}:{name}:{day}",
                f"Campaign mail paused: {name}"[:300],
                f"Mail of campaign {name} from account {identity.account_name} is held "
                f"(paused): {reason or 'the account policy pauses it'}. It is sent once "
                "the sender is verified, or released by the operator.",
            )
        )

    # -- helpers -----------------------------------------------------------------

    def unsubscribe_fields(
        self,
        account_id: int,
        campaign: str | None,
        recipients: Sequence[tuple[str, str]],
        parsed: ParsedMessage,
        wanted: bool,
    ) -> str:
        """List-Unsubscribe and List-Unsubscribe-Post for this message, or "".

        ``wanted``: campaign mail of an account with unsubscribe on. Added
        only when ``[webhooks] public_url`` is set, the message has neither
        field of its own (the sender's list manager knows best, and a second
        List-Unsubscribe is one too many, RFC 2369 3), and there is exactly
        one envelope recipient: the token names one address, and a message
        to several would let each of them unsubscribe the one it names.
        Campaign engines send one message per recipient; a message to
        several goes without the fields.
        """
        config = self._config
        if not (wanted and config.public_url and config.unsubscribe_key) or len(recipients) != 1:
            return ""
        if any(parsed.has(name) for name in UNSUBSCRIBE_FIELDS):
            return ""
        token = make_token(config.unsubscribe_key, account_id, recipients[0][0], campaign)
        if token is None:
            return ""
        return list_unsubscribe_fields(f"{config.public_url.rstrip('/')}/u/{token}") or ""

    def _received(self, arrival: Arrival, recipients: Sequence[str], queue_id: str) -> str:
        one = recipients[0] if len(recipients) == 1 else None
        return received_header(
            helo=arrival.helo,
            peer=arrival.peer,
            hostname=self._config.hostname,
            queue_id=queue_id,
            protocol=arrival.protocol,
            recipient=one,
        )

    @staticmethod
    def _refuse(reply: Reply, identity: Identity, mail_from: str) -> Reply:
        log.info(
            "refused: account=%s from=<%s> reply=%s",
            identity.account_name,
            mail_from,
            reply,
        )
        return reply

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
