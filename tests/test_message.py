"""Header reading on the hot path: recipient classes, smuggling, header edits."""

from __future__ import annotations

import pytest

from relay.core.message import (
    classify,
    has_smuggling,
    normalise_line_endings,
    parse,
    received_header,
    rewrite_headers,
)


def classes(head: str, rcpts: list[str]) -> dict[str, str]:
    parsed = parse((head + "\r\n\r\nbody\r\n").encode())
    return dict(classify(rcpts, parsed.addresses("To"), parsed.addresses("Cc")))


def test_classes_from_to_and_cc() -> None:
    head = "From: a@x.test\r\nTo: Bob <bob@example.org>\r\nCc: carol@example.org"
    assert classes(head, ["bob@example.org", "carol@example.org", "dave@example.org"]) == {
        "bob@example.org": "to",
        "carol@example.org": "cc",
        "dave@example.org": "bcc",
    }


def test_domain_is_case_insensitive_and_names_comments_ignored() -> None:
    head = 'To: "Bob, Jr." <bob@EXAMPLE.org> (work)\r\nCc: carol@example.org (Carol)'
    assert classes(head, ["bob@example.org", "carol@Example.ORG"]) == {
        "bob@example.org": "to",
        "carol@Example.ORG": "cc",
    }


def test_groups_and_encoded_words() -> None:
    head = (
        "To: Friends: a@example.org, =?utf-8?q?J=C3=B6rg?= <jorg@example.de>;\r\n"
        "Cc: undisclosed-recipients:;"
    )
    assert classes(head, ["a@example.org", "jorg@example.de", "z@example.org"]) == {
        "a@example.org": "to",
        "jorg@example.de": "to",
        "z@example.org": "bcc",
    }


def test_in_both_to_and_cc_counts_once_as_to_and_duplicates_once() -> None:
    head = "To: a@example.org\r\nCc: a@example.org, b@example.org"
    assert classify(
        ["a@example.org", "b@example.org", "A@EXAMPLE.ORG".lower()],
        ["a@example.org"],
        ["a@example.org", "b@example.org"],
    ) == [("a@example.org", "to"), ("b@example.org", "cc")]
    assert classes(head, ["a@example.org"]) == {"a@example.org": "to"}


def test_utf8_addresses_match_the_envelope() -> None:
    head = "To: José <josé@exämple.org>"
    assert classes(head, ["josé@exämple.org"]) == {"josé@exämple.org": "to"}


@pytest.mark.parametrize("data", [b"a\n.\r\nb", b"a\r\n.\nb", b"a\r.\rb", b"a\n.\nb"])
def test_smuggling_sequences(data: bytes) -> None:
    assert has_smuggling(data)


def test_a_stuffed_dot_line_is_not_smuggling() -> None:
    assert not has_smuggling(b"line\r\n.\r\nmore\r\n")  # a ".." line, unstuffed


def test_bare_line_endings_become_crlf() -> None:
    assert normalise_line_endings(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd"
    same = b"a\r\nb\r\n"
    assert normalise_line_endings(same) is same


def test_rewrite_removes_bcc_and_adds_what_is_missing() -> None:
    parsed = parse(
        b"From: a@x.test\r\nBcc: secret@example.org,\r\n\tother@example.org\r\n"
        b"Subject: s\r\n\r\nbody\r\n"
    )
    received = received_header(
        helo="h",
        peer="[127.0.0.1]",
        hostname="relay.test",
        queue_id="Q1",
        protocol="ESMTPSA",
        recipient=None,
    )
    out = rewrite_headers(parsed, received=received, hostname="relay.test")
    assert out.startswith(b"Received: from h ([127.0.0.1])")
    assert b"secret" not in out and b"other@" not in out
    assert b"\r\nMessage-ID: <" in out and b"\r\nDate: " in out
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_malformed_header_is_refused() -> None:
    from relay.core.message import MalformedMessage

    with pytest.raises(MalformedMessage):
        parse(b"not a header line\r\n\r\nbody")
