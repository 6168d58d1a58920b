"""The message as the relay sees it: raw bytes, a parsed header, recipient classes.

Only the header section is parsed on the hot path; the body is carried as the
client sent it. Header edits (Bcc removed, Received, Message-ID and Date
added) work on the raw lines so nothing else in the message changes.

The header section is split into fields by one scanner that reads names the
way mail readers and providers do (RFC 5322 4.5: obsolete syntax allows
white space before the colon; names are case-insensitive), so what the
sender check sees is what a reader of the delivered message sees. A line in
the header section that is neither a field nor a continuation ends the
header there, and the blank line is made explicit in the queued bytes
(readers would end the header there too; a lenient one must not read on).
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import Message
from email.policy import compat32
from typing import Any

RECIPIENT_KINDS = ("to", "cc", "bcc")

_HEADER_END = re.compile(rb"\r\n\r\n|\n\n")
# A dot alone on a "line" whose ending is a bare CR or bare LF on either side:
# the sequences that let a sender smuggle a second message past a server that
# takes them for end-of-data (CVE-2023-51764 and friends). A proper CRLF.CRLF
# inside the data is legitimate: it is a dot-stuffed ".." line, unstuffed.
# Every pairing of line endings around a lone dot except CRLF.CRLF, written
# out so that one C-level search finds the first (linear in the size).
_BAD_DOT_LINE = re.compile(rb"\r\.[\r\n]|\n\.\r(?!\n)|\n\.\n|(?<!\r)\n\.\r\n")
# RFC 5322 3.6.8 field-name, then the obsolete WSP before the colon (4.5).
_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# A From or Sender value that every parser reads the same way: an address
# alone or after a plain display name. Anything else is read twice (below).
_SIMPLE_ORIGINATOR = re.compile(
    r"[ \t]*(?:[A-Za-z0-9 ._'-]*<[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+>"
    r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+)[ \t]*"
)
# A list of plain addresses, each alone or after a display name of letters,
# digits and spaces (what campaign engines write): read by one regex, with the
# very answer ``getaddresses`` gives (tests/test_header_index.py compares).
_PLAIN_ADDRESS = r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ITEM = rf"[ \t]*(?:[A-Za-z0-9 \t]*<({_PLAIN_ADDRESS})>|({_PLAIN_ADDRESS}))[ \t]*"
_PLAIN_LIST = re.compile(rf"{_PLAIN_ITEM}(?:,{_PLAIN_ITEM})*")
_PLAIN_ITEMS = re.compile(_PLAIN_ITEM)
ORIGINATOR_FIELDS = ("from", "sender")
_LINE_BREAKS = re.compile(r"[\r\n]")
# RFC 5321 4.1.2 Domain, and 4.1.3 address literals.
_DOMAIN = re.compile(
    r"(?=.{1,255}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class MalformedMessage(ValueError):
    pass


class UnreadableOriginator(MalformedMessage):
    """A From or Sender value the mail readers' own parser fails on."""


class DuplicateOriginator(MalformedMessage):
    """More than one From or Sender field (RFC 5322 3.6 allows one of each)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"more than one {name} field")
        self.name = name


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
    fields: int = 0  # header fields in the section
    # Lower-case name -> raw values, in order: what ``parse`` read, so that a
    # field is found without a scan of ``headers`` (each ``Message.get_all``
    # lowers every name; intake asks for seven fields per message).
    index: dict[str, list[str]] = field(default_factory=dict)

    def get_all(self, name: str) -> list[str]:
        values = self.index.get(name.lower())
        if values is None:
            return [] if self.index else [str(v) for v in self.headers.get_all(name, [])]
        if all(v.isascii() for v in values):
            return values
        # Undecodable bytes: compat32 hands them back as Header objects; as before.
        return [str(v) for v in self.headers.get_all(name, [])]

    def get(self, name: str) -> Any:
        """The first ``name`` field's value, or None (as ``Message.get``)."""
        values = self.index.get(name.lower())
        if values is None:
            return None if self.index else self.headers.get(name)
        return values[0] if values[0].isascii() else self.headers.get(name)

    def has(self, name: str) -> bool:
        return name.lower() in self.index if self.index else name in self.headers

    def addresses(self, name: str) -> list[str]:
        return plain_addresses(self.get_all(name))

    def originators(self) -> list[str]:
        """Every address a reader shows as From or Sender (see ``originator_addresses``)."""
        values = [v for name in ORIGINATOR_FIELDS for v in self.get_all(name)]
        return originator_addresses(values)


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
    # address -> recipient row id, sent to the provider so its events name
    # the recipient (:func:`delivery_ids`); empty outside the queue.
    recipient_ids: dict[str, int] = field(default_factory=dict)
    open_tracking: bool | None = None  # None: the provider's default
    click_tracking: bool | None = None

    def delivery_ids(self, recipients: Sequence[str] = ()) -> dict[str, str]:
        """The ids a provider carries back in its events for these recipients.

        Always :data:`MESSAGE_ID_KEY` (the queue id); :data:`RECIPIENT_ID_KEY`
        only when ``recipients`` is one address with a row id: where a
        provider groups several recipients under one set of values (a
        SendGrid personalization, an SMTP leg's header), the receiver
        matches the event's address within the message instead. Strings,
        as SendGrid's ``custom_args`` require.
        """
        ids = {MESSAGE_ID_KEY: self.queue_id}
        if len(recipients) == 1:
            rid = self.recipient_ids.get(recipients[0])
            if rid is not None:
                ids[RECIPIENT_ID_KEY] = str(rid)
        return ids


# The keys under which a delivery carries Relay's ids to the provider
# (SendGrid custom_args / unique_args, SparkPost metadata); the webhook reads
# them back from each event.
MESSAGE_ID_KEY = "relay_message_id"
RECIPIENT_ID_KEY = "relay_recipient_id"


def has_smuggling(data: bytes) -> bool:
    if b"\r." not in data and b"\n." not in data:
        return False
    return _BAD_DOT_LINE.search(data) is not None


def normalise_line_endings(data: bytes) -> bytes:
    """Turn bare CR and bare LF into CRLF, as Postfix does in its normal mode.

    Three ``bytes.replace`` passes, not a regex substitution: linear at C
    speed whatever the count (a 20 MB body of bare CRs took 11 s the other
    way, holding the GIL, and so the event loop, all along).
    """
    bare = data.replace(b"\r\n", b"")
    if b"\r" not in bare and b"\n" not in bare:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """Header section (with its final CRLF) and the rest (from the blank line)."""
    m = _HEADER_END.search(data)
    if m is None:
        return data, b""
    cut = m.start() + (2 if data[m.start() : m.start() + 2] == b"\r\n" else 1)
    return data[:cut], data[cut:]


def parse(data: bytes) -> ParsedMessage:
    """Parse the header section of ``data`` (CRLF line endings); the body is not read.

    One pass over the lines into a compat32 ``Message`` (the cheap container
    the rest of the code reads; the header registry costs five times as
    much), names as RFC 5322 4.5 reads them. RFC 6532 addresses come out as
    the same text the client gave in RCPT. The first line that is neither a
    field nor a continuation ends the header section; if it is not the blank
    line, one is inserted before it so that every later reader ends the
    header section at the same place. Raises ``DuplicateOriginator`` for a
    second From or Sender.
    """
    head, _ = split_header(data)
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    msg = Message(policy=compat32)
    index: dict[str, list[str]] = {}
    key = ""
    name: str | None = None
    value: list[str] = []
    seen: set[str] = set()
    count = 0
    end = len(head)
    offset = 0
    for line in lines:
        if line[:1] in (" ", "\t") and name is not None:
            value.append(line)
            offset += len(line.encode("utf-8", "surrogateescape")) + 2
            continue
        m = _FIELD.match(line)
        if m is None:
            end = offset  # not a field: the body starts here
            break
        if name is not None:
            joined = "\r\n".join(value)
            msg.set_raw(name, joined)
            index.setdefault(key, []).append(joined)
        name = m.group(1)
        key = name.lower()
        if key in ORIGINATOR_FIELDS:
            if key in seen:
                raise DuplicateOriginator("From" if key == "from" else "Sender")
            seen.add(key)
        value = [line[m.end() :].lstrip(" \t")]
        count += 1
        offset += len(line.encode("utf-8", "surrogateescape")) + 2
    if name is None:
        raise MalformedMessage("no header section")
    joined = "\r\n".join(value)
    msg.set_raw(name, joined)
    index.setdefault(name.lower(), []).append(joined)
    if end < len(head):
        data = data[:end] + b"\r\n" + data[end:]
    return ParsedMessage(data, msg, end, count, index)


def header_addresses(msg: Message, name: str) -> list[str]:
    """Every address in the headers called ``name``.

    ``getaddresses`` handles group syntax (``Friends: a@b, c@d;``), comments
    and quoted display names; encoded words only occur in display names
    (RFC 2047 section 5), which are not compared.
    """
    values = [str(v) for v in msg.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if "@" in addr]


def plain_addresses(values: Sequence[str]) -> list[str]:
    """Every address in these header values (``getaddresses``, with "@"); a value
    that is a plain list (``_PLAIN_LIST``) is read by a regex instead, five
    times cheaper, to the same answer."""
    found: list[str] = []
    for value in values:
        if _PLAIN_LIST.fullmatch(value):
            found += [a or b for a, b in _PLAIN_ITEMS.findall(value)]
        else:
            found += [a for _, a in email.utils.getaddresses([value]) if "@" in a]
    return found


def originator_addresses(values: Sequence[str]) -> list[str]:
    """Every address in these From or Sender values, as any reader would show it.

    ``getaddresses`` (cheap) and the header registry that mail readers use
    (``email.policy.default``, five times the cost) disagree on odd input:
    encoded words, comments, quoting, groups. A simple value is read once;
    any other is read by both and every address either finds is returned,
    so the sender check covers what a reader displays.
    """
    found: list[str] = []
    for folded in values:
        value = _LINE_BREAKS.sub("", folded)  # unfolded as the registry's readers do
        found += plain_addresses([value])
        if _SIMPLE_ORIGINATOR.fullmatch(value):
            continue
        try:
            header = email_policy.default.header_factory("from", value)
            # Every address the reader shows, even one without a domain.
            found += [a.addr_spec for a in header.addresses if a.addr_spec not in ("", "<>")]
        except Exception as exc:  # the stdlib parser raises odd types on odd input
            raise UnreadableOriginator("From or Sender field cannot be read") from exc
    return list(dict.fromkeys(found))


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
    parsed: ParsedMessage,
    *,
    received: str,
    hostname: str,
    remove: Sequence[str] = ("bcc",),
    add: str = "",
) -> bytes:
    """The message as it is queued: Received on top, Bcc gone, Message-ID and Date present.

    ``add``: whole fields of the relay's own making, each ending in CRLF
    (``list_unsubscribe_fields``), put at the end of the header section.

    The body is copied once, by the final join (a 20 MB message was copied
    three times, holding the GIL each time).
    """
    head = parsed.data[: parsed.header_end]
    body = memoryview(parsed.data)[parsed.header_end :]
    names = {n.lower().encode() for n in remove}
    present = set(parsed.index) if parsed.index else {k.lower() for k in parsed.headers}
    if names & {n.encode() for n in present}:
        head = _drop_headers(head, names)
    extra = b""
    if "message-id" not in present:
        extra += f"Message-ID: {make_message_id(hostname)}\r\n".encode()
    if "date" not in present:
        extra += f"Date: {email.utils.formatdate(localtime=False)}\r\n".encode()
    extra += add.encode("ascii")
    head = head.rstrip(b"\r\n") + b"\r\n" + extra
    return b"".join((received.encode("utf-8"), head, body))


UNSUBSCRIBE_FIELDS = ("list-unsubscribe", "list-unsubscribe-post")
# A URL that can stand between angle brackets in a field as it is: printable
# ASCII, no space, no bracket or quote that would end it (RFC 2369 2).
_HEADER_URL = re.compile(r"https?://[\x21-\x7e]+")
_MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


def list_unsubscribe_fields(url: str) -> str | None:
    """``List-Unsubscribe`` (RFC 2369 3.2) and ``List-Unsubscribe-Post`` (RFC 8058 3.1)
    for a one-click ``url``, or None if ``url`` could break the header.

    The URL is the relay's public URL and a base64url token: no client byte
    reaches it as written, and it is refused whole (never cleaned) if it
    holds anything that could end the field or start a new line.
    """
    if not _HEADER_URL.fullmatch(url) or any(c in url for c in '<>"'):
        return None
    line = f"List-Unsubscribe: <{url}>"
    if len(line) > _MAX_LINE:
        return None
    return f"{line}\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"


def is_helo_name(name: str) -> bool:
    """A domain or an address literal ([192.0.2.1], [IPv6:2001:db8::1]), RFC 5321 4.1.3."""
    if name.startswith("[") and name.endswith("]"):
        inner = name[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inner[5:])
            else:
                ipaddress.IPv4Address(inner)
        except ValueError:
            return False
        return True
    return _DOMAIN.fullmatch(name) is not None


def header_comment(text: str, limit: int = 100) -> str:
    """``text`` as the inside of an RFC 5322 comment that cannot end the field.

    Printable ASCII only: controls (CR, LF, NUL among them), 8-bit bytes and
    the comment's own delimiters and quote become "?", and it is cut short.
    """
    out = "".join(c if " " <= c <= "~" and c not in "()\\" else "?" for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


_UNSAFE_IN_HEADER = re.compile(r"[\x00-\x1f\x7f<>\udc80-\udcff]")


def _safe_address(address: str) -> bool:
    """An envelope address fit to copy into a header: no controls, no raw 8-bit bytes."""
    return _UNSAFE_IN_HEADER.search(address) is None


def received_header(
    *, helo: str, peer: str, hostname: str, queue_id: str, protocol: str, recipient: str | None
) -> str:
    """A Received field as RFC 5321 4.4 describes (protocol per RFC 3848).

    Client bytes never end the field: the EHLO name goes in as written only
    if it is a domain or an address literal, otherwise as a sanitised
    comment after the peer's address; the recipient only if it is clean text.
    """
    source = f"{helo} ({peer})" if is_helo_name(helo) else f"{peer} (helo={header_comment(helo)})"
    for_clause = f"\r\n\tfor <{recipient}>" if recipient and _safe_address(recipient) else ""
    return (
        f"Received: from {source}\r\n\tby {hostname} (Relay) "
        f"with {protocol} id {queue_id}{for_clause};\r\n"
        f"\t{email.utils.formatdate(localtime=False)}\r\n"
    )
