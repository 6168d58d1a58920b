"""``parse`` keeps an index of the header fields by name: every read through it
gives what the compat32 ``Message`` it also builds gives (issue 15: intake asked
the ``Message`` seven times per message, each a scan of every field)."""

from __future__ import annotations

import pytest

from relay.core.message import parse, rewrite_headers

RAW = (
    b"Received: from a\r\n\tby b\r\n"
    b"From: Ann <ann@acme.test>\r\n"
    b"to: bob@example.org,\r\n carol@example.org\r\n"
    b"TO: dave@example.org\r\n"
    b"Cc: Friends: eve@example.org, <frank@example.org>;\r\n"
    b"X-Relay-Campaign:  spring \r\n"
    b"Subject: \xff\xfe\r\n"
    b"List-Unsubscribe:\r\n"
    b"\r\n"
    b"Body\r\n"
)
NAMES = ["From", "To", "to", "Cc", "Subject", "X-Relay-Campaign", "List-Unsubscribe", "Date", "Bcc"]


@pytest.mark.parametrize("name", NAMES)
def test_the_index_reads_what_the_message_reads(name: str) -> None:
    parsed = parse(RAW)
    message = parsed.headers
    assert parsed.get_all(name) == [str(v) for v in message.get_all(name, [])]
    got, want = parsed.get(name), message.get(name)
    assert (got is None, str(got)) == (want is None, str(want))
    assert parsed.has(name) == (message.get(name) is not None)


def test_the_addresses_and_the_rewrite_are_the_same_without_the_index() -> None:
    parsed = parse(RAW)
    bare = parse(RAW)
    bare.index = {}  # a ParsedMessage made elsewhere: read through the Message
    for name in ("To", "Cc", "From"):
        assert parsed.addresses(name) == bare.addresses(name) != []
    assert parsed.addresses("To") == ["bob@example.org", "carol@example.org", "dave@example.org"]
    kwargs = {"received": "Received: x\r\n", "hostname": "relay.test", "remove": ("bcc", "cc")}
    out, out_bare = rewrite_headers(parsed, **kwargs), rewrite_headers(bare, **kwargs)  # type: ignore[arg-type]
    # Message-ID and Date are made fresh each time: compare what is around them.
    assert out.split(b"Message-ID:")[0] == out_bare.split(b"Message-ID:")[0]
    assert b"\r\nCc:" not in out and b"Message-ID:" in out and b"Date:" in out
