"""Header fields the relay adds for a provider's SMTP API (``X-SMTPAPI``, ``X-MSYS-API``,
``X-Mailgun-Variables``), and the Bcc fields it takes out for the providers that
take the MIME as it is (SparkPost, Mailgun).

Both carry JSON in one field, so the value must fold without change
(RFC 5322 2.2.3), and a client's own field of the same name wins, so we ask
whether the message already has one.
"""

from __future__ import annotations

import re

from relay.core.message import split_header

_BCC = re.compile(rb"(?im)^(?:resent-)?bcc[ \t]*:.*(?:\r?\n[ \t].*)*\r?\n")


def header_field(name: str, value: str, width: int = 76) -> bytes:
    """``Name: value`` folded at spaces (RFC 5322 2.2.3) so no line passes ``width``.

    Unfolding removes only the CRLF, so the value (JSON, say) reads back unchanged.
    ``value`` must be ASCII and hold no line break.
    """
    lines: list[str] = []
    line = f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > width and line.strip():
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def has_field(data: bytes, name: str) -> bool:
    head, _ = split_header(data)
    return re.search(rb"(?im)^" + re.escape(name.encode()) + rb"[ \t]*:", head) is not None


def without_bcc(data: bytes) -> bytes:
    """The message with its Bcc (and Resent-Bcc) fields removed, continuations too.

    A provider that sends the MIME as given would show them to every
    recipient (RFC 5322 3.6.3: how Bcc stays blind is the sender's business).
    """
    head, body = split_header(data)
    return _BCC.sub(b"", head) + body
