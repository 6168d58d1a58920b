"""Proving an address by a code mailed to it: how a tenant verifies an address.

As SendGrid's Single Sender Verification and Postal's address checks do, Relay
mails a code to the address and verifies it for the account only when the code
comes back. The code goes through the account's route (the provider the
account's mail from that address would take, ``relay.routing.policy``), from
that provider's test address, a sender the provider has accepted already.

The code is 8 random digits (NIST SP 800-63B 5.1.3: an out-of-band secret of
at least 6 digits, with limited tries). It is stored only as an HMAC keyed
with RELAY_SECRET_KEY (a copy of the database alone cannot try its 10^8
values), bound to the account and the address; it expires after 24 hours,
works once, and dies after ``MAX_TRIES`` answers. At most ``MAX_SENDS`` codes
go to one address for one account a day, so the tries cannot be renewed at
will (5 tries of 10^8 codes, 5 codes a day) and an address is not flooded.

A link is not offered: the code is typed back through the API or the
command line (``relay sender confirm``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import secrets
import ssl
from dataclasses import dataclass
from email.utils import format_datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.core.addresses import check_sender, sender_matches
from relay.core.crypto import SecretBox
from relay.core.errors import Conflict, Invalid, NotFound, ProviderError
from relay.core.message import OutboundMessage, make_message_id
from relay.core.settings import PolicySettings
from relay.routing.policy import route_of
from relay.service import provider_checks, scope
from relay.service.accounts import _resume_paused, get_account
from relay.service.audit import arg, audited
from relay.service.providers import ProviderConfig
from relay.store.models import Provider as ProviderRow
from relay.store.models import Sender, SenderConfirmation, utcnow

CODE_DIGITS = 8
CODE_TTL = dt.timedelta(hours=24)
MAX_TRIES = 5
MAX_SENDS = 5  # codes mailed to one address for one account within CODE_TTL


@dataclass(frozen=True)
class CodeSent:
    address: str
    sent_from: str  # the route provider's test address
    expires_at: dt.datetime


def check_address(address: str) -> str:
    """An address (a domain, or ``*@domain``, is proved by DNS instead)."""
    pattern = check_sender(address)
    if "@" not in pattern:
        raise Invalid(
            f"{pattern} is a domain: a domain is proved by a DNS TXT record "
            "(relay sender verify-dns); a code is mailed to an address",
            "sender",
        )
    return pattern


def _digest(box: SecretBox, account_id: int, address: str, code: str) -> str:
    return box.digest(f"sender-confirmation:{account_id}:{address}:{code}")


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


@audited("sender.send_code", arg("address"), scope.of_account("account"))
def send_code(
    engine: Engine,
    box: SecretBox,
    policy: PolicySettings,
    hostname: str,
    address: str,
    account: str,
    tls_context: ssl.SSLContext | None = None,
) -> CodeSent:
    """Mail a new code to ``address`` (any earlier code of it stops working).

    Blocking: it runs the provider's send on an event loop of its own, so it
    is called from a worker thread (the API's thread pool) or the command line.
    """
    address = check_address(address)
    with Session(engine) as session:
        owner = get_account(session, account)
        account_id = owner.id
        verified = list(
            session.scalars(
                select(Sender.pattern).where(
                    Sender.account_id == account_id, Sender.verified.is_(True)
                )
            )
        )
    if sender_matches(address, verified):
        raise Conflict(f"{address} is verified for account {account} already")
    config = _route(engine, box, policy, account_id, address, account)
    sent_from = str(config.options.get("test_address") or "")
    if not sent_from:
        raise Conflict(
            f"provider {config.name}, which carries account {account}'s mail from "
            f"{address}, has no test address to mail the code from; the operator sets "
            f"one: relay provider edit {config.name} --test-address ADDRESS"
        )
    code, now = new_code(), utcnow()
    expires = _store(engine, _digest(box, account_id, address, code), account_id, address, now)
    message = _message(sent_from, address, account, code, expires, hostname)
    try:
        asyncio.run(provider_checks.send_message(config, message, hostname, tls_context))
    except ProviderError as exc:
        raise Conflict(
            f"could not mail the code to {address} through provider {config.name}: {exc}"
        ) from exc
    return CodeSent(address, sent_from, expires)


def _route(
    engine: Engine,
    box: SecretBox,
    policy: PolicySettings,
    account_id: int,
    address: str,
    account: str,
) -> ProviderConfig:
    route = route_of(engine, policy, account_id, address)
    with Session(engine) as session:
        row = session.get(ProviderRow, route) if route is not None else None
        if row is None:
            raise Conflict(
                f"account {account} has no provider for mail from {address}, so no "
                "code can be mailed; give it a default provider first"
            )
        return ProviderConfig(
            row.name, row.kind, dict(row.options or {}), box.open(row.secrets), row.domain
        )


def _store(
    engine: Engine, code_hash: str, account_id: int, address: str, now: dt.datetime
) -> dt.datetime:
    """Replace the pending code of (account, address); at most MAX_SENDS a day."""
    expires = now + CODE_TTL
    with Session(engine) as session, session.begin():
        row = session.scalar(
            select(SenderConfirmation)
            .where(
                SenderConfirmation.account_id == account_id,
                SenderConfirmation.address == address,
            )
            .with_for_update()
        )
        if row is None:
            row = SenderConfirmation(
                account_id=account_id, address=address, sends=0, window_start=now
            )
            session.add(row)
        elif now - row.window_start >= CODE_TTL:
            row.window_start, row.sends = now, 0
        if row.sends >= MAX_SENDS:
            again = row.window_start + CODE_TTL
            raise Conflict(
                f"{MAX_SENDS} codes were mailed to {address} in the last 24 hours, the "
                f"most a day; ask again after {again:%Y-%m-%d %H:%M} UTC"
            )
        row.sends += 1
        row.code_hash, row.expires_at, row.tries, row.used_at = code_hash, expires, 0, None
        try:
            session.flush()
        except IntegrityError as exc:  # a first code asked for twice at once
            raise Conflict(f"a code for {address} is being mailed; try again") from exc
    return expires


def _message(
    sent_from: str, to: str, account: str, code: str, expires: dt.datetime, hostname: str
) -> OutboundMessage:
    text = (
        f"Someone asked to send mail as {to} through Relay, for the account {account}.\r\n"
        "\r\n"
        f"The confirmation code is: {code}\r\n"
        "\r\n"
        f"It works once, until {expires:%Y-%m-%d %H:%M} UTC. If you did not ask for\r\n"
        "this, ignore this message: nothing is sent as you without the code.\r\n"
    )
    data = (
        f"From: <{sent_from}>\r\nTo: <{to}>\r\n"
        f"Subject: Relay sender confirmation code\r\n"
        f"Date: {format_datetime(utcnow())}\r\n"
        f"Message-ID: {make_message_id(hostname)}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nAuto-Submitted: auto-generated\r\n"
        f"\r\n{text}"
    ).encode()
    return OutboundMessage("confirmation", sent_from, [(to, "to")], data)


@audited("sender.confirm", arg("address"), scope.of_account("account"))
def confirm(engine: Engine, box: SecretBox, address: str, account: str, code: str) -> Sender:
    """Verify ``address`` for ``account`` if ``code`` is the one mailed to it."""
    address = check_address(address)
    code = "".join(code.split())
    now = utcnow()
    missing = (
        f"no code is pending for {address} at account {account}; "
        "ask for one (relay sender send-code)"
    )
    with Session(engine) as session:
        account_id = get_account(session, account).id
        row = session.scalar(
            select(SenderConfirmation).where(
                SenderConfirmation.account_id == account_id,
                SenderConfirmation.address == address,
            )
        )
        if row is None or row.used_at is not None:
            raise NotFound(missing)
        pending_id, expected, tries, expires = row.id, row.code_hash, row.tries, row.expires_at
    if expires <= now:
        raise Invalid("the code has expired; ask for a new one", "code")
    dead = Invalid(f"{MAX_TRIES} wrong codes: this code no longer works; ask for a new one", "code")
    # Count the try first, in one statement: parallel guesses cannot pass MAX_TRIES.
    with engine.begin() as conn:
        counted = conn.execute(
            update(SenderConfirmation)
            .where(
                SenderConfirmation.id == pending_id,
                SenderConfirmation.tries < MAX_TRIES,
                SenderConfirmation.used_at.is_(None),
            )
            .values(tries=SenderConfirmation.tries + 1)
        ).rowcount
    if not counted:
        raise dead
    if not hmac.compare_digest(_digest(box, account_id, address, code), expected):
        left = MAX_TRIES - tries - 1
        if left <= 0:
            raise dead
        raise Invalid(f"wrong code; {left} {'try' if left == 1 else 'tries'} left", "code")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        used = (
            session.connection()
            .execute(
                update(SenderConfirmation)
                .where(SenderConfirmation.id == pending_id, SenderConfirmation.used_at.is_(None))
                .values(used_at=now)
            )
            .rowcount
        )
        if not used:  # the same code, answered twice at once: it works once
            raise NotFound(missing)
        sender = session.scalar(
            select(Sender).where(Sender.account_id == account_id, Sender.pattern == address)
        )
        if sender is None:
            sender = Sender(account_id=account_id, pattern=address)
            session.add(sender)
        sender.verified, sender.method, sender.verified_at = True, "confirmation", now
        sender.proof_account_id = None
    _resume_paused(engine, account_id)
    return sender
