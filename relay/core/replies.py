"""SMTP replies as named constants, each with its enhanced status code.

Basic codes are RFC 5321 section 4.2; enhanced codes are RFC 3463 (and RFC
4954 for AUTH, RFC 3207 for STARTTLS). Every reply says which rule applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.status, text)

    @property
    def is_success(self) -> bool:
        return self.code < 400


OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")

# RFC 4954 section 6: one answer for a bad password and an unknown user.
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_LOCKED = Reply(454, "4.7.0", "Too many failed logins; try again later")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")
STARTTLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)

# RFC 1870: SIZE. 552 with 5.3.4 "message too big for system".
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
# RFC 5321 4.5.3.1.10: 452 for too many recipients, the client sends the rest later.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
BAD_SENDER_ADDRESS = Reply(553, "5.1.7", "Malformed sender address")
BAD_RECIPIENT_ADDRESS = Reply(553, "5.1.3", "Malformed recipient address")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address")
SERVER_BUSY = Reply(421, "4.3.2", "Service busy, try again later")
SMUGGLING = Reply(
    550, "5.5.2", "Bare <CR> or <LF> before '.' in message data (SMTP smuggling); message refused"
)
MALFORMED_MESSAGE = Reply(550, "5.6.0", "Message has no valid header section")
# RFC 5321 4.1.1 / 2.3.8: CR and LF only as the line ending, NUL never; a bare
# CR in an argument would end a header line wherever the argument is copied.
BAD_COMMAND_BYTES = Reply(501, "5.5.2", "Syntax error: CR, LF or NUL in command argument")
# RFC 5322 3.6: at most one From and one Sender. {} is the field's name.
DUPLICATE_ORIGINATOR = Reply(550, "5.6.0", "Message has more than one {} header field")
# RFC 5322 2.3 and RFC 5321 2.3.8 do not allow NUL in a message.
NUL_BYTES = Reply(550, "5.6.0", "Message contains NUL bytes (not allowed in mail); refused")
# The header section is read whole before anything is decided: 552 with 5.3.4
# "message too big for system", as for SIZE, and the text names the limit.
HEADER_SECTION_TOO_BIG = Reply(552, "5.3.4", "Message header section too big")
TOO_MANY_HEADERS = Reply(552, "5.3.4", "Message has too many header fields")
SPOOL_UNAVAILABLE = Reply(451, "4.3.0", "Queue unavailable, message not accepted; try again later")
INTERNAL_ERROR = Reply(451, "4.3.0", "Temporary server error; try again later")
SENDER_NOT_VERIFIED = Reply(550, "5.7.1", "Sender not verified for this account")
CROSS_TENANT = Reply(550, "5.7.1", "Sender domain belongs to another account")
# RFC 3463 5.7.1 "delivery not authorized": the account is suspended for its
# bounce or complaint rate (relay.reputation); the text names the rate and limit.
ACCOUNT_SUSPENDED = Reply(550, "5.7.1", "Account suspended")


def account_suspended(reason: str | None) -> Reply:
    """``550 5.7.1`` naming the rate, the window and the limit (the stored reason)."""
    return ACCOUNT_SUSPENDED.with_text(
        f"Account suspended: {reason or 'by the operator'}; contact your provider"
    )


# RFC 3463 5.1.1 "bad destination mailbox address": the account's suppression
# list says so (a hard bounce, a complaint, an unsubscribe ...), with
# ``[suppression] at_rcpt``. The text names the reason and the day.
SUPPRESSED_RECIPIENT = Reply(550, "5.1.1", "Recipient <{}> is on this account's suppression list")


def suppressed_recipient(address: str, reason: str, since: str) -> Reply:
    text = SUPPRESSED_RECIPIENT.text.format(address)
    return SUPPRESSED_RECIPIENT.with_text(f"{text} ({reason} since {since})")


# Sending limits (relay.limits). RFC 3463 4.7.1 "delivery not authorized",
# temporary: the client keeps the message and tries again (RFC 5321 4.2.5), as
# Postfix's and SendGrid's rate replies do. The text names the limit, whose it
# is, and when to try again (a rate) or when the quota resets (a quota).
RATE_LIMITED = Reply(451, "4.7.1", "Rate limit {} for {} reached; try again in {} s")
QUOTA_REACHED = Reply(451, "4.7.1", "{} recipient quota {} for {} reached; resets at {}")
# At AUTH: RFC 4954 6's temporary authentication failure. The session stays
# open (421 would close it) and the client may log in again later.
TOO_MANY_SESSIONS = Reply(454, "4.7.0", "Too many concurrent sessions ({} at most) for {}")


def rate_limited(limit: str, subject: str, retry_in: int) -> Reply:
    return RATE_LIMITED.with_text(RATE_LIMITED.text.format(limit, subject, max(retry_in, 1)))


def quota_reached(window: str, limit: int, subject: str, resets_at: str) -> Reply:
    return QUOTA_REACHED.with_text(QUOTA_REACHED.text.format(window, limit, subject, resets_at))


def too_many_sessions(limit: int, subject: str) -> Reply:
    text = TOO_MANY_SESSIONS.text.format(limit, subject)
    return TOO_MANY_SESSIONS.with_text(f"{text}; try again later")


def queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def header_section_too_big(limit: int) -> Reply:
    return HEADER_SECTION_TOO_BIG.with_text(
        f"{HEADER_SECTION_TOO_BIG.text} ({limit} bytes, max_header_bytes)"
    )


def too_many_headers(limit: int) -> Reply:
    return TOO_MANY_HEADERS.with_text(f"{TOO_MANY_HEADERS.text} ({limit}, max_headers)")


_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
# Enhanced codes for aiosmtpd's stock replies, which carry only the basic code.
# RFC 3463: X.5.x protocol errors, X.3.4 too big, X.7.x security.
_DEFAULT_STATUS = {
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.4.2",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_REWRITE = {
    "552 Error: Too much mail data": str(MESSAGE_TOO_BIG),
    "552 Error: message size exceeds fixed maximum message size": str(MESSAGE_TOO_BIG),
    "530 Must issue a STARTTLS command first": str(STARTTLS_REQUIRED),
    "530 5.7.0 Authentication required": str(AUTH_REQUIRED),
}


def with_enhanced_code(line: str) -> str:
    """Give a stock reply line an enhanced status code (RFC 2034 section 3).

    aiosmtpd writes most replies without one, but once ENHANCEDSTATUSCODES is
    advertised every reply after EHLO must carry one.
    """
    if line in _REWRITE:
        return _REWRITE[line]
    if _ENHANCED.match(line) or len(line) < 4 or line[3] not in " -":
        return line
    status = _DEFAULT_STATUS.get(line[:3])
    if status is None:
        return line
    return f"{line[:4]}{status} {line[4:]}"
