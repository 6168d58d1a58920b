"""The MIME corpus, built with the stdlib email package, and message helpers."""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP, SMTPUTF8

from relay.core.message import OutboundMessage

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


def outbound(
    msg: EmailMessage | bytes,
    recipients: list[tuple[str, str]] | None = None,
    *,
    mail_from: str = "sender@example.com",
    ip_pool: str | None = None,
    campaign: str | None = None,
    queue_id: str = "Q1",
) -> OutboundMessage:
    data = msg if isinstance(msg, bytes) else msg.as_bytes(policy=SMTP)
    rcpts = recipients or [("to@example.org", "to")]
    return OutboundMessage(queue_id, mail_from, rcpts, data, ip_pool=ip_pool, campaign=campaign)


def base(subject: str = "Hello", to: str = "to@example.org", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = Address("Sender Name", addr_spec="sender@example.com")
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<m1@example.com>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    return msg


def plain(body: str = "Just text.\n", **kw: str) -> EmailMessage:
    msg = base(**kw)
    msg.set_content(body)
    return msg


def alternative(text: str = "Text part\n", html: str = "<p>HTML part</p>\n") -> EmailMessage:
    msg = base()
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


def html_first() -> EmailMessage:
    """HTML written before the text part: SendGrid still wants text/plain first."""
    msg = base()
    msg.set_content("<b>html</b>\n", subtype="html")
    msg.add_alternative("text\n", subtype="plain")
    return msg


def with_attachment(data: bytes = b"%PDF-1.4 test\n", name: str = "report.pdf") -> EmailMessage:
    msg = alternative()
    msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return msg


def inline_image() -> EmailMessage:
    """mixed( related( alternative(text, html), image with Content-ID ), pdf )."""
    msg = base()
    msg.set_content("See the logo.\n")
    msg.add_alternative('<p>Logo: <img src="cid:logo@example.com"></p>\n', subtype="html")
    html = msg.get_payload()[1]
    html.add_related(
        PNG, maintype="image", subtype="png", cid="<logo@example.com>", filename="logo.png"
    )
    msg.add_attachment(b"%PDF-1.4\n", maintype="application", subtype="pdf", filename="terms.pdf")
    return msg


def international() -> EmailMessage:
    """Non-ASCII subject, display names and body (RFC 2047 and 8-bit UTF-8)."""
    msg = EmailMessage()
    msg["From"] = Address("Jörg Müller", addr_spec="joerg@example.com")
    msg["To"] = Address("Zoë Ångström", addr_spec="zoe@example.org")
    msg["Subject"] = "Grüße aus Köln — 東京"
    msg.set_content("Schöne Grüße, 東京から\n", cte="8bit")
    return msg


def quoted_printable_latin1() -> EmailMessage:
    msg = base(subject="=?iso-8859-1?q?Caf=E9?=")
    msg.set_content(
        "Un café crème, s'il vous plaît.\n", charset="iso-8859-1", cte="quoted-printable"
    )
    return msg


def eight_bit_latin1() -> bytes:
    """8-bit body in ISO-8859-1: valid MIME, but not UTF-8."""
    return (
        b"From: sender@example.com\r\nTo: to@example.org\r\nSubject: latin\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nCaf\xe9 cr\xe8me\r\n"
    )


def smtputf8() -> bytes:
    """RFC 6532: raw UTF-8 in addresses and headers."""
    msg = EmailMessage(policy=SMTPUTF8)
    msg["From"] = "Jörg <jörg@exämple.de>"
    msg["To"] = "用户 <用户@例子.广告>"
    msg["Subject"] = "Ünïcödé"
    msg.set_content("Grüße\n", cte="8bit")
    return msg.as_bytes(policy=SMTPUTF8)


def nested() -> EmailMessage:
    """mixed( alternative( text, related( html, image ) ), attached message )."""
    inner = plain("forwarded body\n", subject="Inner")
    msg = base(subject="Nested")
    msg.set_content("outer text\n")
    msg.add_alternative('<p>outer <img src="cid:pic"></p>', subtype="html")
    msg.get_payload()[1].add_related(PNG, maintype="image", subtype="png", cid="<pic>")
    msg.add_attachment(inner)
    return msg


def legacy_mixed() -> bytes:
    """Built with the legacy MIME classes: text, then an octet-stream without a name."""
    msg = MIMEMultipart("mixed")
    msg["From"] = "sender@example.com"
    msg["To"] = "to@example.org"
    msg["Subject"] = "Legacy"
    msg.attach(MIMEText("legacy text", "plain", "utf-8"))
    msg.attach(MIMEApplication(b"\x00\x01\x02"))
    return msg.as_bytes()
