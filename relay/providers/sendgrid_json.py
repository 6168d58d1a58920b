"""MIME to SendGrid v3 ``/v3/mail/send`` JSON.

SendGrid takes no raw MIME: it rebuilds the message from JSON, so this module
decides what survives. The rules, with the limits SendGrid documents for
mail/send ("Limitations" and the request schema):

* ``from``: the one From address, with its display name. More than one (RFC
  5322 allows it with Sender) cannot be said in JSON.
* ``reply_to`` for one Reply-To address, ``reply_to_list`` for several.
* ``subject``: decoded from RFC 2047 encoded words, unfolded.
* ``content``: the first inline text/plain part, then the first inline
  text/html part (SendGrid's order), found through any nesting of
  multipart/alternative, mixed and related.
* ``attachments``: every other leaf part, base64, with its bare MIME type and
  its filename (made up from the type when it has none, as SendGrid requires
  one); a part with a Content-ID is ``inline`` with that ``content_id``. An
  attached message/rfc822 is one attachment, not opened.
* ``headers``: the top-level fields as written (unfolded, not decoded), except
  those SendGrid refuses (:data:`RESERVED_HEADERS`), the MIME structure fields
  that the JSON replaces, the fields Postfix drops by default
  (``message_drop_headers``: bcc, content-length, resent-bcc, return-path) and
  our own ``X-Relay-Category``. JSON cannot repeat a key: the first (topmost)
  occurrence of a repeated field is kept.
* ``categories``: the comma-separated values of ``X-Relay-Category``.
* ``ip_pool_name``: the message's IP pool.
* ``personalizations``: see :func:`personalizations` (how Bcc stays blind).

A message the JSON cannot carry faithfully (no From, several From, no
subject, no text body, an undecodable charset, an empty attachment) raises
:class:`~relay.core.errors.PayloadRejected`, so the chain sends it by
SMTP, untouched. A request over SendGrid's limits that SMTP would not cure
(30 MB, 10 categories) raises a plain ``PermanentError``.

Top-level ``custom_args`` is not used: the published OpenAPI description types
it as a string while the API wants an object, so no value of it is valid for
both. Relay's ids go in ``personalizations[].custom_args``, an object in both,
and SendGrid returns them as top-level keys of every event of that
personalization's recipients: ``relay_message_id`` (the queue id) always, and
``relay_recipient_id`` (the recipient row) when the personalization has one
recipient. One personalization per recipient would change what recipients see
(each copy's To and Cc are written from its personalization), so a shared one
carries only the message id and the webhook matches the event's ``email``
within that message.

``tracking_settings``: ``open_tracking.enable`` and ``click_tracking.enable``
from the account's settings; absent when the account leaves them to the
SendGrid account's own default.
"""

from __future__ import annotations

import base64
import email.utils
import mimetypes
import re
from collections.abc import Iterator, Sequence
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

import orjson

from relay.core import mimepolicy
from relay.core.errors import PayloadRejected, PermanentError
from relay.core.message import OutboundMessage

MAX_RECIPIENTS = 1000  # to + cc + bcc across all personalizations of one request
MAX_BYTES = 30 * 1024 * 1024  # "The total size of your email ... must be less than 30MB"
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
CATEGORY_HEADER = "x-relay-category"

# personalizations[].headers and headers: "You may not override the following headers".
RESERVED_HEADERS = frozenset({
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
})  # fmt: skip
_DROPPED_HEADERS = RESERVED_HEADERS | {
    "mime-version", "content-disposition", "content-id", "content-description",
    "content-length", "resent-bcc", "return-path", CATEGORY_HEADER,
}  # fmt: skip
# SendGrid misreads a recipient name containing these as several addresses and
# drops the mail (sendgrid/sendgrid-python#291; "Limitations": to.name, cc.name
# and bcc.name may not contain commas or semicolons).
_BAD_NAME = re.compile(r"[,;]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")

Json = dict[str, Any]


def convert(message: OutboundMessage) -> list[Json]:
    """The request bodies (one or more) that deliver ``message`` through SendGrid."""
    mime = _parse(message.data)
    base = _message_fields(mime, message)
    names = _display_names(mime)
    groups = _requests(personalizations(message.recipients, names, message))
    return [{"personalizations": group, **base} for group in groups]


def tracking_settings(message: OutboundMessage) -> Json:
    """mail/send ``tracking_settings`` for what the account set (empty: SendGrid's default)."""
    out: Json = {}
    if message.open_tracking is not None:
        out["open_tracking"] = {"enable": message.open_tracking}
    if message.click_tracking is not None:
        out["click_tracking"] = {"enable": message.click_tracking}
    return out


def encode(payload: Json) -> bytes:
    """The JSON body as sent (compact UTF-8, by orjson: one C call, no ``str`` to
    encode after); too big for SendGrid is a permanent failure."""
    body = orjson.dumps(payload)
    if len(body) > MAX_BYTES:
        raise PermanentError(
            f"message too large for SendGrid: {len(body)} bytes of JSON, limit {MAX_BYTES}",
            413,
            transport="api",
        )
    return body


def _parse(data: bytes) -> EmailMessage:
    # policy.default, its parsed fields cached: each part's Content-Type is read
    # several times below, and a campaign's messages share most of their fields.
    mime = BytesParser(policy=mimepolicy.default).parsebytes(data)
    assert isinstance(mime, EmailMessage)  # an EmailPolicy makes EmailMessage
    return mime


def _text(value: str) -> str:
    """Header text as Unicode: raw UTF-8 (RFC 6532) comes back surrogate-escaped."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _message_fields(mime: EmailMessage, message: OutboundMessage) -> Json:
    body, attachments = _walk(mime)
    fields: Json = {"from": _from(mime), "subject": _subject(mime), "content": body}
    fields.update(_reply_to(mime))
    if attachments:
        fields["attachments"] = attachments
    headers = _headers(mime)
    if headers:
        fields["headers"] = headers
    found = categories(mime)
    if found:
        fields["categories"] = found
    if message.ip_pool:
        fields["ip_pool_name"] = message.ip_pool
    tracking = tracking_settings(message)
    if tracking:
        fields["tracking_settings"] = tracking
    return fields


# -- addresses ---------------------------------------------------------------


def _addresses(mime: EmailMessage, name: str) -> list[tuple[str, str]]:
    """(display name, address) of every address in the fields called ``name``."""
    out: list[tuple[str, str]] = []
    for value in mime.get_all(name, []):
        try:
            pairs = [(a.display_name, a.addr_spec) for a in value.addresses]
        except (AttributeError, IndexError, ValueError):
            pairs = email.utils.getaddresses([str(value)])
        out.extend((_text(n), _text(a)) for n, a in pairs if a and a != "<>")
    return out


def _email(name: str, address: str) -> Json:
    return {"email": address, "name": name} if name else {"email": address}


def _from(mime: EmailMessage) -> Json:
    found = _addresses(mime, "from")
    if len(found) != 1:
        raise PayloadRejected(
            f"SendGrid needs exactly one From address, the message has {len(found)}",
            transport="api",
        )
    return _email(*found[0])


def _reply_to(mime: EmailMessage) -> Json:
    found = _distinct(_addresses(mime, "reply-to"))  # reply_to_list items are unique
    if len(found) == 1:
        return {"reply_to": _email(*found[0])}
    if found:
        return {"reply_to_list": [_email(n, a) for n, a in found]}
    return {}


def _distinct(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for name, address in pairs:
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append((name, address))
    return out


def _display_names(mime: EmailMessage) -> dict[str, str]:
    """Recipient display names from To and Cc, without the ones SendGrid misreads."""
    names: dict[str, str] = {}
    for name, address in _addresses(mime, "to") + _addresses(mime, "cc"):
        if name and not _BAD_NAME.search(name):
            names.setdefault(address.lower(), name)
    return names


def _subject(mime: EmailMessage) -> str:
    subject = _text(" ".join(str(mime.get("subject", "")).split()))
    if not subject:
        raise PayloadRejected("SendGrid needs a subject; the message has none", transport="api")
    return subject


# -- body and attachments ----------------------------------------------------


def _leaves(part: EmailMessage) -> Iterator[EmailMessage]:
    """The leaf parts, depth first; message/rfc822 is a leaf (an attached message)."""
    if part.is_multipart() and part.get_content_maintype() == "multipart":
        for sub in part.iter_parts():
            assert isinstance(sub, EmailMessage)
            yield from _leaves(sub)
    else:
        yield part


def _is_body(part: EmailMessage, found: dict[str, str]) -> bool:
    kind = part.get_content_type()
    return (
        kind in ("text/plain", "text/html")
        and kind not in found
        and part.get_content_disposition() != "attachment"
        and part.get_filename() is None
    )


def _walk(mime: EmailMessage) -> tuple[list[Json], list[Json]]:
    found: dict[str, str] = {}
    attachments: list[Json] = []
    for index, part in enumerate(_leaves(mime)):
        if _is_body(part, found):
            found[part.get_content_type()] = _decoded_text(part)
        else:
            attachments.append(_attachment(part, index))
    content = [{"type": t, "value": found[t]} for t in ("text/plain", "text/html") if found.get(t)]
    if not content:
        raise PayloadRejected(
            "SendGrid needs a text or HTML body; the message has none", transport="api"
        )
    return content, attachments


def _decoded_text(part: EmailMessage) -> str:
    try:
        text = part.get_content()
    except (LookupError, UnicodeError) as exc:
        raise PayloadRejected(f"body in an unknown charset: {exc}", transport="api") from exc
    assert isinstance(text, str)
    return text


def _payload_bytes(part: EmailMessage) -> bytes:
    if part.get_content_type() == "message/rfc822" or part.is_multipart():
        inner = part.get_payload(0) if part.is_multipart() else part.get_payload()
        if isinstance(inner, EmailMessage):
            return inner.as_bytes(policy=policy.SMTPUTF8)
    raw = part.get_payload(decode=True)
    return raw if isinstance(raw, bytes) else b""


def _attachment(part: EmailMessage, index: int) -> Json:
    data = _payload_bytes(part)
    if not data:
        raise PayloadRejected("SendGrid refuses an empty attachment", transport="api")
    kind = part.get_content_type()
    item: Json = {
        "content": base64.b64encode(data).decode("ascii"),
        "type": kind,
        "filename": _filename(part, kind, index),
        "disposition": "attachment",
    }
    content_id = part.get("content-id")
    if content_id:
        item["disposition"] = "inline"
        item["content_id"] = _text(str(content_id)).strip().strip("<>")
    return item


def _filename(part: EmailMessage, kind: str, index: int) -> str:
    name = part.get_filename()
    if name:
        return _text(name)
    extension = ".eml" if kind == "message/rfc822" else mimetypes.guess_extension(kind) or ".bin"
    return f"part{index + 1}{extension}"


# -- headers and categories --------------------------------------------------


def _headers(mime: EmailMessage) -> dict[str, str]:
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in mime.raw_items():
        key = name.lower()
        if key in _DROPPED_HEADERS or key in seen:
            continue
        seen.add(key)
        headers[name] = _text(_FOLD.sub("", str(value))).strip()
    return headers


def categories(mime: Message) -> list[str]:
    """The X-Relay-Category values, split at commas, each once, in order."""
    values = [_text(str(v)) for v in mime.get_all(CATEGORY_HEADER, [])]
    found = list(dict.fromkeys(c.strip() for v in values for c in v.split(",") if c.strip()))
    if len(found) > MAX_CATEGORIES:
        raise PermanentError(
            f"{len(found)} categories in X-Relay-Category; SendGrid allows {MAX_CATEGORIES}",
            transport="api",
        )
    too_long = [c for c in found if len(c) > MAX_CATEGORY_LENGTH]
    if too_long:
        raise PermanentError(
            f"category longer than {MAX_CATEGORY_LENGTH} characters: {too_long[0][:40]}...",
            transport="api",
        )
    return found


# -- personalizations --------------------------------------------------------


def personalizations(
    recipients: Sequence[tuple[str, str]],
    names: dict[str, str],
    message: OutboundMessage | None = None,
) -> list[Json]:
    """The envelopes of a message, each a personalization SendGrid accepts.

    SendGrid writes the To and Cc headers of each copy from the personalization
    (and refuses To or Cc in ``headers``), and requires a non-empty ``to``. So:

    * to-recipients present: one personalization ``{to, cc, bcc}``. Bcc stays
      blind: SendGrid writes no Bcc header.
    * no to-recipient, some cc: the cc recipients become ``to`` (they were
      visible anyway; only the header they appear in changes), bcc stays bcc.
    * only bcc: one personalization per recipient, each its own ``to``. A copy
      shows its own recipient's address and nobody else's: no Bcc recipient
      is ever visible to another, at the price of the written To (often
      "undisclosed-recipients:;") not being reproduced, which SendGrid cannot do.

    An address appears once across to, cc and bcc (SendGrid refuses repeats,
    compared case-insensitively). More than :data:`MAX_RECIPIENTS` are cut in
    slices, each following the rules above.

    With ``message``, each personalization carries its ids in ``custom_args``
    (:meth:`~relay.core.message.OutboundMessage.delivery_ids`).
    """
    unique = _unique(recipients)
    out: list[Json] = []
    for start in range(0, len(unique), MAX_RECIPIENTS):
        out.extend(_envelopes(unique[start : start + MAX_RECIPIENTS], names))
    if message is not None:
        for item in out:
            item["custom_args"] = message.delivery_ids(_addresses_of(item))
    return out


def _addresses_of(personalization: Json) -> list[str]:
    return [e["email"] for kind in ("to", "cc", "bcc") for e in personalization.get(kind, [])]


def _unique(recipients: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for address, kind in recipients:
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append((address, kind))
    return out


def _envelopes(chunk: list[tuple[str, str]], names: dict[str, str]) -> list[Json]:
    by_kind: dict[str, list[Json]] = {"to": [], "cc": [], "bcc": []}
    for address, kind in chunk:
        name = names.get(address.lower(), "") if kind != "bcc" else ""
        by_kind.get(kind, by_kind["bcc"]).append(_email(name, address))
    to, cc, bcc = by_kind["to"], by_kind["cc"], by_kind["bcc"]
    if not to and not cc:
        return [{"to": [item]} for item in bcc]
    if not to:
        to, cc = cc, []
    envelope: Json = {"to": to}
    if cc:
        envelope["cc"] = cc
    if bcc:
        envelope["bcc"] = bcc
    return [envelope]


def recipient_count(personalization: Json) -> int:
    return sum(len(personalization.get(k, [])) for k in ("to", "cc", "bcc"))


def _requests(items: list[Json]) -> list[list[Json]]:
    """Pack personalizations into requests of at most MAX_RECIPIENTS recipients."""
    groups: list[list[Json]] = []
    count = MAX_RECIPIENTS + 1
    for item in items:
        size = recipient_count(item)
        if count + size > MAX_RECIPIENTS:
            groups.append([])
            count = 0
        groups[-1].append(item)
        count += size
    return groups


def recipients_of(payload: Json) -> list[str]:
    """Every envelope address a request body delivers to."""
    return [
        entry["email"]
        for item in payload["personalizations"]
        for kind in ("to", "cc", "bcc")
        for entry in item.get(kind, [])
    ]
