"""``parse`` keeps an index of the header fields by name: every read through it
gives what the compat32 ``Message`` it also builds gives (issue 15: intake asked
the ``Message`` seven times per message, each a scan of every field)."""

from __future__ import annotations

import email.utils
import random

import pytest

from relay.core.message import _PLAIN_LIST, parse, plain_addresses, rewrite_headers

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


def test_plain_lists_are_read_as_getaddresses_reads_them() -> None:
    # The regex fast path must give getaddresses' answer on anything it takes.
    rng = random.Random(7)
    atoms = ["a", "bob", "x.y", "_z", "a+b", "%q", "-k", "a..b", ".a", "a.", "ü", "O'Neil", '"q"']
    domains = ["ex.org", "a-b.c", "-x.org", "x-.org", "x..org", "ex", "[1.2.3.4]", "EX.ORG"]
    names = ["", "Ann", "Ann Lee", "Ann  B ", "John Q. Public", '"Q, R"', "=?utf-8?q?x?=", "A\tB"]

    def item() -> str:
        address = f"{rng.choice(atoms)}@{rng.choice(domains)}"
        name = rng.choice(names)
        return rng.choice([address, f"{name} <{address}>", f"<{address}>", f" {name}<{address}> "])

    fast = 0
    for _ in range(5000):
        value = ",".join(item() for _ in range(rng.randint(1, 3)))
        want = [a for _, a in email.utils.getaddresses([value]) if "@" in a]
        assert plain_addresses([value]) == want, value
        fast += bool(_PLAIN_LIST.fullmatch(value))
    assert fast > 500  # the fast path was taken, and agreed
