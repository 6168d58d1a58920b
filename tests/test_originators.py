"""Property: whenever Relay would deliver, every address a mail reader shows as
From or Sender in the bytes it delivers is verified for the account.

Header sections are generated with folding, obsolete syntax (white space
before the colon, any case), encoded words, comments, groups, duplicates,
lines that are not fields and bare CR or LF. Each goes through the work DATA
does (``read_message``: the checks, the parse, the addresses) and the sender
check policy applies (``sender_matches`` over the account's verified
patterns); if it would be queued, the header rewrite produces the bytes a
provider receives, and ``email.policy.default`` reads them as a reader would.
"""

from __future__ import annotations

import email
from email import policy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.addresses import sender_matches
from relay.core.message import has_smuggling, received_header, rewrite_headers
from relay.intake import CAMPAIGN_HEADER, read_message
from relay.smtp.protocol import DataScan

PATTERNS = ["acme.test", "ok@partner.test"]
MAIL_FROM = "app@acme.test"
VERIFIED = ["app@acme.test", "News@ACME.test", "ok@partner.test"]
UNVERIFIED = ["ceo@other.test", "ceo@acme.test.other.test", "x@partner.test", "other.test"]

address = st.sampled_from(VERIFIED + UNVERIFIED)
display = st.sampled_from(["", "Acme", '"Acme, Inc."', "=?utf-8?q?J=C3=BCrgen?=", "app@acme.test"])


@st.composite
def mailbox(draw: st.DrawFn) -> str:
    addr = draw(address)
    form = draw(st.integers(0, 6))
    name = draw(display)
    if form == 0:
        return addr
    if form == 1:
        return f"{name} <{addr}>".strip()
    if form == 2:
        return f"{addr} ({draw(address)})"  # a comment that looks like an address
    if form == 3:
        return f"({draw(address)}) {addr}"
    if form == 4:  # an encoded word where the address would be
        local, _, domain = addr.partition("@")
        return f"=?utf-8?q?{local}?=@{domain}" if domain else f"=?utf-8?q?{addr}?="
    if form == 5:
        return f"=?utf-8?q?{addr.replace('@', '=40')}?= <{draw(address)}>"
    return f"{name}<{addr}>"


@st.composite
def address_list(draw: st.DrawFn) -> str:
    boxes = draw(st.lists(mailbox(), min_size=1, max_size=3))
    form = draw(st.integers(0, 3))
    if form == 0:
        return ", ".join(boxes)
    if form == 1:
        return f"Team: {', '.join(boxes)};"
    if form == 2:
        return "undisclosed-recipients:;"
    return ",\r\n\t".join(boxes)  # folded


@st.composite
def field(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["From", "Sender", "To", "Subject", "Reply-To", "junk", "bare"]))
    if kind == "junk":
        return draw(st.sampled_from(["not a field", f"From {draw(address)}", " "]))
    if kind == "bare":  # a bare CR or LF inside a value: a line break downstream
        sep = draw(st.sampled_from(["\r", "\n"]))
        return f"Subject: hi{sep}{draw(st.sampled_from(['From', 'Sender']))}: {draw(address)}"
    name = kind
    if kind in ("From", "Sender"):
        name = draw(st.sampled_from([kind, kind.lower(), kind.upper()]))
        name += draw(st.sampled_from(["", "", " ", "\t", "  "]))  # obsolete: WSP before colon
        value = draw(address_list())
    else:
        value = draw(st.sampled_from(["bob@example.org", "hello", "x:y"]))
    fold = draw(st.booleans())
    return f"{name}:{' ' if not fold else chr(13) + chr(10) + ' '}{value}"


def deliverable(raw: bytes) -> bytes | None:
    """The bytes Relay would hand a provider, or None if it would not deliver."""
    reading = read_message(raw, ["bob@example.org"], 1024 * 1024, 1000)
    if reading.refusal is not None or reading.parsed is None:
        return None
    senders = [MAIL_FROM, *reading.originators]
    if not all(sender_matches(s, PATTERNS) for s in senders):
        return None  # reject, drop or pause: not delivered as it stands
    received = received_header(
        helo="client.test",
        peer="[127.0.0.1]",
        hostname="relay.test",
        queue_id="Q1",
        protocol="ESMTPSA",
        recipient="bob@example.org",
    )
    return rewrite_headers(
        reading.parsed, received=received, hostname="relay.test", remove=("bcc", CAMPAIGN_HEADER)
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(field(), min_size=1, max_size=6), st.sampled_from(["\r\n", "\n"]))
def test_what_readers_show_as_from_or_sender_is_verified(fields: list[str], eol: str) -> None:
    raw = (eol.join(fields) + "\r\n\r\nbody\r\n").encode()
    delivered = deliverable(raw)
    if delivered is None:
        return
    reader = email.message_from_bytes(delivered, policy=policy.default)
    for name in ("From", "Sender"):
        headers = reader.get_all(name, [])
        assert len(headers) <= 1, (name, delivered)
        for header in headers:
            for shown in header.addresses:
                assert sender_matches(shown.addr_spec, PATTERNS), (shown.addr_spec, delivered)


def test_the_generator_reaches_delivery() -> None:
    """A check that the property is not vacuous: plain verified mail is delivered."""
    assert deliverable(b"From: Acme <app@acme.test>\r\nTo: bob@example.org\r\n\r\nbody\r\n")
    assert deliverable(b"FROM : app@acme.test\r\nsender: ok@partner.test\r\n\r\nbody\r\n")
    assert deliverable(b"From: ceo@other.test\r\n\r\nbody\r\n") is None
    assert deliverable(b"From: (app@acme.test) ceo@other.test\r\n\r\nbody\r\n") is None
    assert deliverable(b"From: =?utf-8?q?ceo=40other.test?=\r\n\r\nbody\r\n") is None


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b".."]), max_size=12))
def test_the_line_reader_finds_smuggling_as_the_whole_message_search_does(
    pieces: list[bytes],
) -> None:
    """DATA's line reader (``DataScan``) replaced a search over the whole message
    (``has_smuggling``) on the hot path: both must find the same sequences."""
    stream = b"".join(pieces) + b"\r\n.\r\n"
    if (b"\r\n" + stream).find(b"\r\n.\r\n") != len(stream) - 3:
        return  # an undotted end of data inside: the client's own message ends there
    scan = DataScan(1 << 20, 1000)
    lines = [line + b"\n" for line in stream.split(b"\n")[:-1]]
    ended_at = next((i for i, line in enumerate(lines) if scan.line(line) == b".\r\n"), None)
    assert ended_at == len(lines) - 1  # only the real CRLF.CRLF ends the data
    assert scan.smuggling == has_smuggling(b"\r\n" + stream), stream
