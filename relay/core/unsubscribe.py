"""One-click unsubscribe tokens (RFC 8058): checked with no database look-up.

The token in ``List-Unsubscribe: <https://PUBLIC/u/TOKEN>`` carries what it
stands for, (account id, recipient, campaign), and an HMAC-SHA256 over it
with a key of its own derived from ``RELAY_SECRET_KEY``
(``relay.core.crypto.derive_key``, label ``UNSUBSCRIBE_LABEL``). Checking
one is a MAC and a constant-time compare: a forged or altered token is
refused before anything is read or written, and no row is kept per message.

Layout, base64url without padding (RFC 4648 5), so it is safe in a URL path
and in a header field as it stands::

    version (1 byte) | account id, recipient, campaign (UTF-8, NUL-separated) | tag (16 bytes)

The tag is the HMAC cut to 128 bits (RFC 2104 5 allows a truncated output of
at least half the hash). The recipient is readable by whoever holds the
token: that is the person it was mailed to, who knows their own address. A
token is at most ``MAX_TOKEN_LENGTH`` characters: the recipient is one
RFC 5321 path at most (4.5.3.1.3), the campaign is cut to
``MAX_CAMPAIGN_BYTES`` (it is only the suppression's note, never part of
the decision). Tokens do not expire: an unsubscribe link must work as long as
the mail that carries it can be read (RFC 8058 3.1 asks the sender to honour
it for a long time).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import NamedTuple

UNSUBSCRIBE_LABEL = "unsubscribe token"
_VERSION = b"\x01"
_TAG_BYTES = 16
MAX_RECIPIENT_BYTES = 254  # RFC 5321 4.5.3.1.3: a path of 256 octets with its brackets
MAX_CAMPAIGN_BYTES = 64
_MAX_ID_DIGITS = 19  # a signed 64-bit id
_MAX_RAW = 1 + _MAX_ID_DIGITS + 1 + MAX_RECIPIENT_BYTES + 1 + MAX_CAMPAIGN_BYTES + _TAG_BYTES
MAX_TOKEN_LENGTH = (_MAX_RAW * 4 + 2) // 3
# The decoder skips characters outside the alphabet and ignores the unused
# bits of the last one: a token is checked against the alphabet, and against
# its own re-encoding, so that one token has exactly one spelling.
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


class Unsubscribe(NamedTuple):
    """What a good token stands for."""

    account_id: int
    recipient: str
    campaign: str | None


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:_TAG_BYTES]


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def make_token(key: bytes, account_id: int, recipient: str, campaign: str | None) -> str | None:
    """The token for ``recipient`` of ``account_id``; None when the address cannot
    be carried (longer than a path may be, a NUL, an unpaired surrogate from
    undecodable client bytes): such mail simply gets no unsubscribe header."""
    if account_id < 0 or len(str(account_id)) > _MAX_ID_DIGITS:
        return None
    try:
        address = recipient.encode("utf-8")
    except UnicodeEncodeError:
        return None
    name = _cut(campaign or "", MAX_CAMPAIGN_BYTES).encode("utf-8")
    if not address or len(address) > MAX_RECIPIENT_BYTES or b"\0" in address or b"\0" in name:
        return None
    payload = _VERSION + b"\0".join((str(account_id).encode(), address, name))
    raw = payload + _tag(key, payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_token(key: bytes, token: str) -> Unsubscribe | None:
    """What ``token`` stands for, or None if it is not one this key made.

    Refused before the MAC: too long, a character outside base64url. The tag is compared in
    constant time (``hmac.compare_digest``) so a forger learns nothing from
    how long a refusal takes.
    """
    if len(token) > MAX_TOKEN_LENGTH or not _ALPHABET.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != token.encode("ascii"):
        return None  # stray bits in the last character: another spelling of a token
    payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if len(payload) < 2 or not hmac.compare_digest(tag, _tag(key, payload)):
        return None
    if payload[:1] != _VERSION:
        return None
    parts = payload[1:].split(b"\0")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1]:
        return None
    # Made by this key: the fields are as make_token wrote them.
    account, address, name = (p.decode("utf-8") for p in parts)
    return Unsubscribe(int(account), address, name or None)
