"""MIME to SendGrid JSON, field by field, and every payload against SendGrid's schema."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from relay.core.errors import PayloadRejected, PermanentError
from relay.providers import sendgrid_json

from . import corpus
from .corpus import outbound

Validate = Callable[[dict[str, Any]], None]

CORPUS = {
    "plain": corpus.plain,
    "alternative": corpus.alternative,
    "html_first": corpus.html_first,
    "attachment": corpus.with_attachment,
    "inline_image": corpus.inline_image,
    "international": corpus.international,
    "quoted_printable": corpus.quoted_printable_latin1,
    "eight_bit": corpus.eight_bit_latin1,
    "smtputf8": corpus.smtputf8,
    "nested": corpus.nested,
    "legacy": corpus.legacy_mixed,
}


def convert_one(msg: Any, recipients: list[tuple[str, str]] | None = None, **kw: Any) -> Any:
    payloads = sendgrid_json.convert(outbound(msg, recipients, **kw))
    assert len(payloads) == 1
    return payloads[0]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_corpus_message_converts_to_a_valid_payload(name: str, sendgrid_schema: Validate):
    payload = convert_one(CORPUS[name]())
    sendgrid_schema(payload)
    types = [c["type"] for c in payload["content"]]
    assert types in (["text/plain"], ["text/plain", "text/html"], ["text/html"])


def test_plain_text_field_by_field():
    payload = convert_one(corpus.plain("Hi there.\n", X_Mailer="Tests 1.0"))
    assert payload["from"] == {"email": "sender@example.com", "name": "Sender Name"}
    assert payload["subject"] == "Hello"
    assert payload["content"] == [{"type": "text/plain", "value": "Hi there.\r\n"}]
    assert payload["headers"] == {"Message-ID": "<m1@example.com>", "X-Mailer": "Tests 1.0"}
    assert "attachments" not in payload and "reply_to" not in payload
    assert payload["personalizations"] == [
        {"to": [{"email": "to@example.org"}], "custom_args": {"relay_message_id": "Q1"}}
    ]


def test_text_comes_before_html_whatever_the_order_in_the_message():
    payload = convert_one(corpus.html_first())
    assert payload["content"] == [
        {"type": "text/plain", "value": "text\r\n"},
        {"type": "text/html", "value": "<b>html</b>\r\n"},
    ]


def test_attachment_is_base64_with_bare_type_and_filename():
    payload = convert_one(corpus.with_attachment(b"%PDF-1.4 data", "Q3 report.pdf"))
    [attachment] = payload["attachments"]
    assert attachment == {
        "content": base64.b64encode(b"%PDF-1.4 data").decode(),
        "type": "application/pdf",
        "filename": "Q3 report.pdf",
        "disposition": "attachment",
    }


def test_inline_image_keeps_its_content_id_through_nested_multiparts():
    payload = convert_one(corpus.inline_image())
    assert [c["type"] for c in payload["content"]] == ["text/plain", "text/html"]
    assert "cid:logo@example.com" in payload["content"][1]["value"]
    logo, terms = payload["attachments"]
    assert logo["disposition"] == "inline" and logo["content_id"] == "logo@example.com"
    assert logo["type"] == "image/png" and base64.b64decode(logo["content"]) == corpus.PNG
    assert terms["disposition"] == "attachment" and "content_id" not in terms


def test_non_ascii_subject_names_and_body_are_decoded():
    payload = convert_one(corpus.international(), [("zoe@example.org", "to")])
    assert payload["subject"] == "Grüße aus Köln — 東京"
    assert payload["from"] == {"email": "joerg@example.com", "name": "Jörg Müller"}
    assert payload["personalizations"][0]["to"] == [
        {"email": "zoe@example.org", "name": "Zoë Ångström"}
    ]
    assert payload["content"][0]["value"] == "Schöne Grüße, 東京から\r\n"


def test_quoted_printable_and_8bit_latin1_bodies_are_decoded():
    qp = convert_one(corpus.quoted_printable_latin1())
    assert qp["subject"] == "Café"
    assert qp["content"][0]["value"] == "Un café crème, s'il vous plaît.\r\n"
    eight = convert_one(corpus.eight_bit_latin1())
    assert eight["content"][0]["value"] == "Café crème\r\n"


def test_smtputf8_addresses_and_raw_utf8_headers(sendgrid_schema: Validate):
    payload = convert_one(corpus.smtputf8(), [("用户@例子.广告", "to")])
    sendgrid_schema(payload)
    assert payload["from"] == {"email": "jörg@exämple.de", "name": "Jörg"}
    assert payload["subject"] == "Ünïcödé"
    assert payload["personalizations"][0]["to"] == [{"email": "用户@例子.广告", "name": "用户"}]


def test_attached_message_is_one_attachment_not_opened():
    payload = convert_one(corpus.nested())
    assert payload["content"][0]["value"] == "outer text\r\n"
    image, attached = payload["attachments"]
    assert image["content_id"] == "pic" and image["filename"].endswith(".png")
    assert attached["type"] == "message/rfc822" and attached["filename"].endswith(".eml")
    assert b"forwarded body" in base64.b64decode(attached["content"])


def test_part_without_a_name_gets_one():
    payload = convert_one(corpus.legacy_mixed())
    [blob] = payload["attachments"]
    assert blob["type"] == "application/octet-stream" and blob["filename"]


def test_reply_to_one_or_many():
    one = convert_one(corpus.plain(Reply_To="Help <help@example.com>"))
    assert one["reply_to"] == {"email": "help@example.com", "name": "Help"}
    many = convert_one(corpus.plain(Reply_To="a@example.com, B <b@example.com>, A@example.com"))
    assert "reply_to" not in many
    assert many["reply_to_list"] == [
        {"email": "a@example.com"},
        {"email": "b@example.com", "name": "B"},
    ]


def test_headers_sendgrid_refuses_are_left_out_and_values_stay_strings():
    msg = corpus.plain(
        Received="from a by b; Mon, 1 Jan 2024 00:00:00 +0000",
        DKIM_Signature="v=1; a=rsa-sha256; d=example.com",
        X_SG_ID="nope",
        Cc="cc@example.org",
        List_Unsubscribe="<mailto:unsub@example.com>",
        X_Priority="1",
    )
    msg["X-Long"] = "a " * 60  # folded when serialised
    headers = convert_one(msg)["headers"]
    lowered = {k.lower() for k in headers}
    assert lowered.isdisjoint(sendgrid_json.RESERVED_HEADERS)
    assert "mime-version" not in lowered and "content-type" not in lowered
    assert headers["List-Unsubscribe"] == "<mailto:unsub@example.com>"
    assert headers["X-Priority"] == "1"
    assert headers["X-Long"] == ("a " * 60).strip()
    assert all(isinstance(v, str) for v in headers.values())


def test_categories_come_from_x_relay_category_which_is_not_sent(sendgrid_schema: Validate):
    payload = convert_one(corpus.plain(X_Relay_Category=" news , weekly,news"))
    sendgrid_schema(payload)
    assert payload["categories"] == ["news", "weekly"]
    assert "X-Relay-Category" not in payload["headers"]


def test_eleven_categories_is_a_clear_permanent_error():
    msg = corpus.plain(X_Relay_Category=",".join(f"c{i}" for i in range(11)))
    with pytest.raises(PermanentError, match="11 categories") as info:
        sendgrid_json.convert(outbound(msg))
    assert not isinstance(info.value, PayloadRejected)


def test_ip_pool_name_from_the_message():
    assert convert_one(corpus.plain(), ip_pool="transactional")["ip_pool_name"] == "transactional"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (corpus.plain(subject=""), "subject"),
        (b"From: a@example.com, b@example.com\r\nSubject: x\r\n\r\nbody\r\n", "one From"),
        (b"To: to@example.org\r\nSubject: x\r\n\r\nbody\r\n", "one From"),
        (b"From: a@example.com\r\nSubject: x\r\nContent-Type: application/pdf\r\n\r\nxx", "body"),
        (b"From: a@example.com\r\nSubject: empty\r\n\r\n", "body"),
    ],
)
def test_what_json_cannot_carry_goes_by_smtp(data: Any, reason: str):
    with pytest.raises(PayloadRejected, match=reason):
        sendgrid_json.convert(outbound(data))


# -- personalizations --------------------------------------------------------


def test_to_cc_bcc_in_one_personalization(sendgrid_schema: Validate):
    msg = corpus.plain(to="A <a@example.org>", Cc="C <c@example.org>")
    payload = convert_one(
        msg, [("a@example.org", "to"), ("c@example.org", "cc"), ("b@example.org", "bcc")]
    )
    sendgrid_schema(payload)
    [p] = payload["personalizations"]
    assert p["to"] == [{"email": "a@example.org", "name": "A"}]
    assert p["cc"] == [{"email": "c@example.org", "name": "C"}]
    assert p["bcc"] == [{"email": "b@example.org"}]


def test_an_address_appears_once_across_to_cc_and_bcc():
    payload = convert_one(
        corpus.plain(),
        [
            ("a@example.org", "to"),
            ("A@Example.org", "cc"),
            ("a@EXAMPLE.org", "bcc"),
            ("b@example.org", "bcc"),
        ],
    )
    [p] = payload["personalizations"]
    assert sendgrid_json.recipients_of(payload) == ["a@example.org", "b@example.org"]
    assert "cc" not in p


def test_bcc_only_gets_one_personalization_each_so_nobody_is_revealed(
    sendgrid_schema: Validate,
):
    msg = corpus.plain(to="undisclosed-recipients:;")
    payload = convert_one(msg, [("x@example.org", "bcc"), ("y@example.org", "bcc")])
    sendgrid_schema(payload)
    assert [p["to"] for p in payload["personalizations"]] == [
        [{"email": "x@example.org"}],
        [{"email": "y@example.org"}],
    ]
    assert all("bcc" not in p and "cc" not in p for p in payload["personalizations"])


def test_cc_without_to_becomes_to_and_bcc_stays_blind():
    payload = convert_one(
        corpus.plain(Cc="c@example.org"), [("c@example.org", "cc"), ("b@example.org", "bcc")]
    )
    [p] = payload["personalizations"]
    assert p["to"] == [{"email": "c@example.org"}] and p["bcc"] == [{"email": "b@example.org"}]


def test_names_sendgrid_would_misread_are_dropped():
    payload = convert_one(
        corpus.plain(to='"Doe, Jane" <jane@example.org>'), [("jane@example.org", "to")]
    )
    assert payload["personalizations"][0]["to"] == [{"email": "jane@example.org"}]


def test_more_than_1000_recipients_are_split_into_requests(sendgrid_schema: Validate):
    recipients = [(f"r{i}@example.org", "to" if i < 1200 else "bcc") for i in range(2500)]
    payloads = sendgrid_json.convert(outbound(corpus.plain(), recipients))
    assert len(payloads) == 3
    counts = [
        sum(sendgrid_json.recipient_count(p) for p in r["personalizations"]) for r in payloads
    ]
    assert counts == [1000, 1000, 500]
    seen = [a for payload in payloads for a in sendgrid_json.recipients_of(payload)]
    assert seen == [a for a, _ in recipients]
    for payload in payloads:
        sendgrid_schema(payload)
        assert all(p["to"] for p in payload["personalizations"])
