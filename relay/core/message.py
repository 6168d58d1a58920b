"""The message as the relay sees it: raw bytes, a parsed header, recipient classes.

Only the header section is parsed on the hot path; the body is carried as the
client sent it. Header edits (Bcc removed, Received, Message-ID and Date
added) work on the raw lines so nothing else in the message changes.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

RECIPIENT_KINDS = ("to", "cc", "bcc")

_HEADER_END = re.compile(rb"\r\n\r\n|\n\n")
# A dot alone on a "line" whose ending is a bare CR or bare LF on either side:
# the sequences that let a sender smuggle a second message past a server that
# takes them for end-of-data (CVE-2023-51764 and friends). A proper CRLF.CRLF
# inside the data is legitimate: it is a dot-stuffed ".." line, unstuffed.
_DOT_LINE = re.compile(rb"(?:\r\n|\r|\n)\.(?:\r\n|\r|\n)")
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class MalformedMessage(ValueError):
    pass


@dataclass
class Envelope:
    """What the client said in MAIL and RCPT."""

    mail_from: str
    rcpt_tos: list[str]
    smtputf8: bool = False


@dataclass
class ParsedMessage:
    """The accepted message: raw bytes plus what we read from its header."""

    data: bytes
    headers: Message
    header_end: int

    def get_all(self, name: str) -> list[str]:
        return [str(v) for v in self.headers.get_all(name, [])]

    def addresses(self, name: str) -> list[str]:
        return header_addresses(self.headers, name)


@dataclass
class OutboundMessage:
    """What a provider needs to deliver one message (the providers' input)."""

    queue_id: str
    mail_from: str
    recipients: list[tuple[str, str]]  # (address, kind) still to deliver
    data: bytes
    ip_pool: str | None = None
    campaign: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def has_smuggling(data: bytes) -> bool:
    if b"\r." not in data and b"\n." not in data:
        return False
    return any(m.group() != b"\r\n.\r\n" for m in _DOT_LINE.finditer(data))


def normalise_line_endings(data: bytes) -> bytes:
    """Turn bare CR and bare LF into CRLF, as Postfix does in its normal mode."""
    if b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b""):
        return data
    return _BARE.sub(b"\r\n", data)


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """Header section (with its final CRLF) and the rest (from the blank line)."""
    m = _HEADER_END.search(data)
    if m is None:
        return data, b""
    cut = m.start() + (2 if data[m.start() : m.start() + 2] == b"\r\n" else 1)
    return data[:cut], data[cut:]


def parse(data: bytes) -> ParsedMessage:
    """Parse the header section of ``data``; the body is not read.

    The lenient compat32 parser over the UTF-8 text: a tenth of the cost of
    the header registry (measured: 40 us against 230 us for a small
    header), and RFC 6532 addresses come out as the same text the client
    gave in RCPT.
    """
    head, _ = split_header(data)
    if not head.strip() or not re.match(rb"^[\x21-\x39\x3b-\x7e]+:", head):
        raise MalformedMessage("no header section")
    text = head.decode("utf-8", "surrogateescape")
    return ParsedMessage(data, HeaderParser(policy=compat32).parsestr(text), len(head))


def header_addresses(msg: Message, name: str) -> list[str]:
    """Every address in the headers called ``name``.

    ``getaddresses`` handles group syntax (``Friends: a@b, c@d;``), comments
    and quoted display names; encoded words only occur in display names
    (RFC 2047 section 5), which are not compared.
    """
    values = [str(v) for v in msg.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if "@" in addr]


def address_key(address: str) -> str:
    """Compare addresses as RFC 5321 says: the domain is case-insensitive.

    The local part is, strictly, the receiver's business (RFC 5321 2.4); we keep
    it as written.
    """
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{local}@{domain.lower()}"


def classify(
    rcpt_tos: Iterable[str], to: Iterable[str], cc: Iterable[str]
) -> list[tuple[str, str]]:
    """Each envelope recipient with its class: to, cc (if in Cc), else bcc.

    A recipient in both To and Cc is ``to``. A recipient given twice in the
    envelope is counted once.
    """
    to_keys = {address_key(a) for a in to}
    cc_keys = {address_key(a) for a in cc}
    seen: set[str] = set()
    out = []
    for rcpt in rcpt_tos:
        key = address_key(rcpt)
        if key in seen:
            continue
        seen.add(key)
        kind = "to" if key in to_keys else "cc" if key in cc_keys else "bcc"
        out.append((rcpt, kind))
    return out


def make_message_id(hostname: str) -> str:
    return f"<{time.strftime('%Y%m%d%H%M%S')}.{secrets.token_hex(8)}@{hostname}>"


def _drop_headers(head: bytes, names: set[bytes]) -> bytes:
    """Remove every field named in ``names`` (lower-case), continuation lines too."""
    lines = head.split(b"\r\n") if b"\r\n" in head else head.split(b"\n")
    out: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name in names
        if not dropping:
            out.append(line)
    return b"\r\n".join(out)


def rewrite_headers(
    parsed: ParsedMessage, *, received: str, hostname: str, remove: Sequence[str] = ("bcc",)
) -> bytes:
    """The message as it is queued: Received on top, Bcc gone, Message-ID and Date present."""
    head, body = split_header(parsed.data)
    names = {n.lower().encode() for n in remove}
    present = {k.lower() for k in parsed.headers}
    if names & {n.encode() for n in present}:
        head = _drop_headers(head, names)
    extra = b""
    if "message-id" not in present:
        extra += f"Message-ID: {make_message_id(hostname)}\r\n".encode()
    if "date" not in present:
        extra += f"Date: {email.utils.formatdate(localtime=False)}\r\n".encode()
    head = head.rstrip(b"\r\n") + b"\r\n" + extra
    return received.encode("utf-8") + head + body


def received_header(
    *, helo: str, peer: str, hostname: str, queue_id: str, protocol: str, recipient: str | None
) -> str:
    """A Received field as RFC 5321 4.4 describes (protocol per RFC 3848)."""
    for_clause = f"\r\n\tfor <{recipient}>" if recipient else ""
    return (
        f"Received: from {helo} ({peer})\r\n\tby {hostname} (Relay) "
        f"with {protocol} id {queue_id}{for_clause};\r\n"
        f"\t{email.utils.formatdate(localtime=False)}\r\n"
    )
