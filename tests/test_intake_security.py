"""Issue 10, the SMTP intake: client bytes never end a header Relay writes,
header names read as readers read them, one From and one Sender, NUL bytes,
bare LF at any size, and the header section's limits. Real sessions over
loopback TLS, the delivered bytes read from the outbox provider."""

from __future__ import annotations

import email
import smtplib
import time
from dataclasses import replace
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update

from relay.core.settings import Settings
from relay.store.models import Account, Message
from tests.support import RelayThread, Tenant, connect, message

OTHER = "ceo@other.test"


def count(engine: Engine, state: str | None = None) -> int:
    query = select(func.count()).select_from(Message)
    if state:
        query = query.where(Message.state == state)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def wait_delivered(relay: RelayThread, n: int = 1) -> list[bytes]:
    """The delivered messages (outbox files), without the outbox's envelope lines."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and count(relay.engine, "delivered") < n:
        time.sleep(0.05)
    assert count(relay.engine, "delivered") == n
    files = sorted(
        (relay.settings.var_path / "outbox").glob("*.eml"), key=lambda p: p.stat().st_mtime
    )
    return [_strip_envelope(p) for p in files]


def _strip_envelope(path: Path) -> bytes:
    data = path.read_bytes()
    while data.startswith(b"X-Relay-Envelope-"):
        data = data.split(b"\r\n", 1)[1]
    return data


def reject_unverified(engine: Engine, account: str = "acme") -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Account).where(Account.name == account).values(unverified_policy="reject")
        )


def command(client: smtplib.SMTP, line: bytes) -> tuple[int, bytes]:
    """One command line sent exactly as given (smtplib refuses CR in a command)."""
    client.send(line + b"\r\n")
    return client.getreply()


def send_data(
    client: smtplib.SMTP, sender: str, rcpts: list[str], data: bytes
) -> tuple[int, bytes]:
    assert client.docmd("MAIL", f"FROM:<{sender}>")[0] == 250
    for rcpt in rcpts:
        assert client.docmd("RCPT", f"TO:<{rcpt}>")[0] == 250
    assert client.docmd("DATA")[0] == 354
    client.send(data)
    return client.getreply()


def fields(data: bytes) -> list[bytes]:
    """The header section's fields as raw bytes, each with its continuation lines."""
    head = data.split(b"\r\n\r\n", 1)[0]
    out: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b"\r\n" + line
        else:
            out.append(line)
    return out


def assert_one_field(data: bytes, name: bytes) -> bytes:
    """Exactly one field called ``name`` and no line break in it but CRLF folding.

    Every CR in the field is followed by LF and then by white space, every LF
    follows a CR: no byte in it can start a new header line anywhere.
    """
    found = [f for f in fields(data) if f.split(b":", 1)[0].strip().lower() == name.lower()]
    assert len(found) == 1, (name, found)
    field = found[0]
    for i, byte in enumerate(field):
        if byte == 0x0D:
            assert field[i + 1 : i + 3] in (b"\n ", b"\n\t"), field
        if byte == 0x0A:
            assert field[i - 1 : i] == b"\r", field
        assert byte != 0, field
    return field


def assert_readers_see(data: bytes, sender: str) -> None:
    parsed = email.message_from_bytes(data, policy=policy.default)
    froms = parsed.get_all("From", [])
    assert [a.addr_spec for h in froms for a in h.addresses] == [sender]
    assert not parsed.get_all("Sender")
    for name in ("Received", "Message-ID", "Date"):
        assert len(parsed.get_all(name, [])) == 1, name


# -- finding 2: client bytes never start a header line ------------------------------

BAD_ARGUMENTS = [
    b"EHLO x\rFrom: ceo@other.test",
    b"HELO x\rFrom: ceo@other.test",
    b"EHLO x\x00y",
    b"MAIL FROM:<app@acme.test>\rFrom: ceo@other.test",
    b"MAIL FROM:<app@acme.test> BODY=8BITMIME\x00",
    b"RCPT TO:<bob@example.org>\rBcc: x@example.org",
    b"RCPT TO:<bob@example.org\x00>",
    b"AUTH PLAIN AGFwcEBh\rY21lLnRlc3QAeA==",
    b"AUTH PLAIN \x00",
    b"VRFY a\rb",
    b"NOOP a\rb",
    b"HELP DATA\r\x00",
]


@pytest.mark.parametrize("line", BAD_ARGUMENTS, ids=repr)
def test_cr_or_nul_in_any_command_argument_gets_501(
    relay: RelayThread, tenant: Tenant, line: bytes
) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        if line.startswith(b"RCPT"):
            assert client.docmd("MAIL", f"FROM:<{tenant.username}>")[0] == 250
        code, text = command(client, line)
        assert (code, text[:5]) == (501, b"5.5.2"), text
        assert b"CR, LF or NUL" in text
        assert client.noop()[0] == 250  # the session goes on
        client.rset()
        code, _ = send_data(
            client, tenant.username, ["bob@example.org"], message(tenant.username) + b".\r\n"
        )
        assert code == 250
    (data,) = wait_delivered(relay)
    assert OTHER.encode() not in data and b"x@example.org" not in data
    assert_readers_see(data, tenant.username)


def test_a_cr_in_an_auth_username_is_refused(relay: RelayThread, tenant: Tenant) -> None:
    import base64

    blob = base64.b64encode(
        b"\x00app@acme.test\r\nFrom: ceo@other.test\x00" + tenant.password.encode()
    )
    with connect(relay, "submission") as client:
        code, text = command(client, b"AUTH PLAIN " + blob)
        assert (code, text[:5]) == (501, b"5.5.2")
        client.login(tenant.username, tenant.password)


HOSTILE_HELO = [
    (b"h\xc3\xa9llo.test", "h?llo.test"),  # UTF-8: not an LDH domain
    (b"raw\xff\xfe", "raw??"),
    (b"comment(breaker)\\", "comment?breaker??"),
    (b"two words", "two words"),
    (b"[999.1.1.1]", "[999.1.1.1]"),
    (b"x" * 300, "x" * 100 + "..."),
]


@pytest.mark.parametrize(("helo", "shown"), HOSTILE_HELO, ids=repr)
def test_received_shows_a_bad_helo_only_as_a_harmless_comment(
    relay: RelayThread, tenant: Tenant, helo: bytes, shown: str
) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, _ = command(client, b"EHLO " + helo)
        assert code == 250
        code, _ = send_data(
            client, tenant.username, ["bob@example.org"], message(tenant.username) + b".\r\n"
        )
        assert code == 250
    (data,) = wait_delivered(relay)
    received = assert_one_field(data, b"Received")
    assert received.startswith(f"Received: from [127.0.0.1] (helo={shown})".encode()), received
    assert_readers_see(data, tenant.username)


@pytest.mark.parametrize(
    "helo", [b"client.test", b"[127.0.0.1]", b"[IPv6:::1]", b"mx-1.example.ORG."]
)
def test_a_valid_helo_is_written_as_given(relay: RelayThread, tenant: Tenant, helo: bytes) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        assert command(client, b"EHLO " + helo)[0] == 250
        send_data(client, tenant.username, ["bob@example.org"], message(tenant.username) + b".\r\n")
    (data,) = wait_delivered(relay)
    received = assert_one_field(data, b"Received")
    assert received.startswith(b"Received: from " + helo + b" ([127.0.0.1])")


@pytest.mark.parametrize(
    "rcpt",
    [b'"a>b"@example.org', b'"a\tb"@example.org', b"bob@example.org"],
    ids=repr,
)
def test_received_for_clause_never_carries_unsafe_bytes(
    relay: RelayThread, tenant: Tenant, rcpt: bytes
) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        assert client.docmd("MAIL", f"FROM:<{tenant.username}>")[0] == 250
        assert command(client, b"RCPT TO:<" + rcpt + b">")[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(message(tenant.username) + b".\r\n")
        assert client.getreply()[0] == 250
    (data,) = wait_delivered(relay)
    received = assert_one_field(data, b"Received")
    assert (b"for <" + rcpt + b">" in received) == (rcpt == b"bob@example.org")
    assert_readers_see(data, tenant.username)


def test_addresses_that_are_not_utf8_are_refused_at_mail_and_rcpt(
    relay: RelayThread, tenant: Tenant
) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, text = command(client, b"MAIL FROM:<app\xff@acme.test>")
        assert (code, text[:5]) == (553, b"5.1.7")
        assert client.docmd("MAIL", f"FROM:<{tenant.username}>")[0] == 250
        code, text = command(client, b"RCPT TO:<bob\xff@example.org>")
        assert (code, text[:5]) == (553, b"5.1.3")


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "Message-ID : <keep@acme.test>\r\nDate\t: Mon, 02 Nov 2026 10:00:00 +0000\r\n",
        "message-id: <keep@acme.test>\r\nDATE: Mon, 02 Nov 2026 10:00:00 +0000\r\n",
    ],
    ids=["absent", "obsolete-names", "any-case"],
)
def test_message_id_and_date_are_one_field_each(
    relay: RelayThread, tenant: Tenant, extra: str
) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, _ = send_data(
            client,
            tenant.username,
            ["bob@example.org"],
            message(tenant.username, extra=extra) + b".\r\n",
        )
        assert code == 250
    (data,) = wait_delivered(relay)
    message_id = assert_one_field(data, b"Message-ID")
    date = assert_one_field(data, b"Date")
    if extra:
        assert b"<keep@acme.test>" in message_id and b"02 Nov 2026" in date
    else:
        assert message_id.startswith(b"Message-ID: <") and message_id.endswith(b"@relay.test>")


# -- finding 3: header names as readers read them, one From, one Sender ----------------


@pytest.mark.parametrize(
    "head",
    [
        f"From : {OTHER}",
        f"FROM\t: {OTHER}",
        f"from: Boss <{OTHER}>",
        f"From: app@acme.test\r\nSender : {OTHER}",
        f"From: app@acme.test,\r\n {OTHER}\r\nSender: app@acme.test",
        f"From: =?utf-8?q?app=40acme=2Etest?= <{OTHER}>",
        f"From: (app@acme.test) {OTHER}",
        f"From: Team: app@acme.test, {OTHER};",
        f"From: app@acme.test\r\nSubject: hi\rSender: {OTHER}",  # bare CR: a line break
        f"From: app@acme.test\r\nSubject: hi\nSender: {OTHER}",  # bare LF likewise
        "From: ceo",  # no domain: a provider might add one
    ],
    ids=repr,
)
def test_every_from_and_sender_a_reader_sees_is_checked(
    relay: RelayThread, tenant: Tenant, head: str
) -> None:
    reject_unverified(relay.engine)
    data = f"{head}\r\nTo: bob@example.org\r\nSubject: s\r\n\r\nbody\r\n.\r\n".encode()
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, text = send_data(client, tenant.username, ["bob@example.org"], data)
    assert (code, text[:5]) == (550, b"5.7.1"), text
    assert (OTHER if "@" in head else "ceo").encode() in text
    assert count(relay.engine) == 0


@pytest.mark.parametrize(
    ("head", "name"),
    [
        ("From: app@acme.test\r\nFrom: app@acme.test", "From"),
        ("From: app@acme.test\r\nfrom : app@acme.test", "From"),
        ("From: app@acme.test\r\nSender: app@acme.test\r\nSENDER: app@acme.test", "Sender"),
    ],
)
def test_a_second_from_or_sender_is_refused(
    relay: RelayThread, tenant: Tenant, head: str, name: str
) -> None:
    data = f"{head}\r\nTo: bob@example.org\r\n\r\nbody\r\n.\r\n".encode()
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, text = send_data(client, tenant.username, ["bob@example.org"], data)
        assert (code, text[:5]) == (550, b"5.6.0"), text
        assert f"more than one {name} header field".encode() in text
    assert count(relay.engine) == 0


def test_a_line_that_is_not_a_field_ends_the_header_for_every_reader(
    relay: RelayThread, tenant: Tenant
) -> None:
    data = (
        b"From: app@acme.test\r\nTo: bob@example.org\r\nnot a header line\r\n"
        b"Subject: after\r\n\r\nbody\r\n.\r\n"
    )
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, _ = send_data(client, tenant.username, ["bob@example.org"], data)
        assert code == 250
    (delivered,) = wait_delivered(relay)
    head, body = delivered.split(b"\r\n\r\n", 1)
    assert b"Subject" not in head
    assert body == b"not a header line\r\nSubject: after\r\n\r\nbody\r\n"


# -- finding 8: NUL bytes, bare LF -------------------------------------------------------


@pytest.mark.parametrize(
    "sequence", [b"\r\n\n.\r\n", b"\r\n\n.\n", b"\r\n\r.\r\n", b"\n\n.\r\n"], ids=repr
)
def test_smuggling_after_an_empty_line_never_ends_data(
    relay: RelayThread, tenant: Tenant, sequence: bytes
) -> None:
    head = message(tenant.username, body="first part").rstrip(b"\r\n")
    smuggled = (
        head + sequence + b"MAIL FROM:<ceo@acme.test>\r\nRCPT TO:<x@example.org>\r\n"
        b"DATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n"
    )
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, text = send_data(client, tenant.username, ["bob@example.org"], smuggled)
        assert (code, text[:5]) == (550, b"5.5.2"), text
        assert client.noop()[0] == 250
    assert count(relay.engine) == 0


@pytest.mark.parametrize("where", ["header", "body"])
def test_nul_bytes_are_refused_by_name(relay: RelayThread, tenant: Tenant, where: str) -> None:
    if where == "header":
        data = message(tenant.username, subject="a\x00b")
    else:
        data = message(tenant.username, body="x\x00y\r\n")
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, text = send_data(client, tenant.username, ["bob@example.org"], data + b".\r\n")
        assert (code, text[:5]) == (550, b"5.6.0")
        assert b"NUL" in text
    assert count(relay.engine) == 0


def test_bare_lf_is_normalised_whatever_the_size(relay: RelayThread, tenant: Tenant) -> None:
    body = b"".join(b"line %05d of a long bare-LF message\n" % i for i in range(2000))
    data = b"From: app@acme.test\nTo: bob@example.org\nSubject: lf\n\n" + body
    assert len(data) > 50_000
    # Only CRLF.CRLF ends the data (a dot next to a bare LF is smuggling).
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, _ = send_data(client, tenant.username, ["bob@example.org"], data + b"end\r\n.\r\n")
        assert code == 250
    (delivered,) = wait_delivered(relay)
    assert delivered.split(b"\r\n\r\n", 1)[1] == body.replace(b"\n", b"\r\n") + b"end\r\n"


def test_bare_cr_is_normalised_in_a_big_message(relay: RelayThread, tenant: Tenant) -> None:
    body = (b"a\r" * 300 + b"\r\n") * 200  # 120 KB: 60000 bare CRs
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        data = message(tenant.username, body="") + body + b".\r\n"
        code, _ = send_data(client, tenant.username, ["bob@example.org"], data)
        assert code == 250
    (delivered,) = wait_delivered(relay)
    assert delivered.split(b"\r\n\r\n", 1)[1] == (b"a\r\n" * 300 + b"\r\n") * 200


def test_a_line_too_long_is_named_whatever_its_ending(relay: RelayThread, tenant: Tenant) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        for ending in (b"\n", b"\r\n"):
            data = message(tenant.username) + b"y" * 1200 + ending
            code, text = send_data(client, tenant.username, ["bob@example.org"], data + b".\r\n")
            assert (code, text[:5]) == (500, b"5.5.2"), text
            assert b"Line too long" in text
    assert count(relay.engine) == 0


# -- finding 7: the header section's limits ---------------------------------------------


def test_limits_default_to_one_mib_and_a_thousand_fields(settings: Settings) -> None:
    assert settings.limits.max_header_bytes == 1048576
    assert settings.limits.max_headers == 1000


@pytest.mark.parametrize(
    ("limits", "head", "named"),
    [
        ({"max_header_bytes": 20_000}, b"X-Pad: " + b"p" * 900 + b"\r\n", b"max_header_bytes"),
        ({"max_headers": 50}, b"X-Tiny: 1\r\n", b"max_headers"),
    ],
)
def test_header_limits_refuse_with_552_naming_the_limit(
    settings: Settings,
    engine: Engine,
    tenant: Tenant,
    limits: dict[str, int],
    head: bytes,
    named: bytes,
) -> None:
    settings = replace(settings, limits=replace(settings.limits, **limits))
    thread = RelayThread(settings, engine).start()
    try:
        with connect(thread, "submission", login=(tenant.username, tenant.password)) as client:
            data = message(tenant.username, extra=(head * 60).decode())
            code, text = send_data(client, tenant.username, ["bob@example.org"], data + b".\r\n")
            assert (code, text[:5]) == (552, b"5.3.4"), text
            assert named in text
            # Just under the limit is accepted, the session goes on.
            data = message(tenant.username, extra=(head * 20).decode())
            code, _ = send_data(client, tenant.username, ["bob@example.org"], data + b".\r\n")
            assert code == 250
        assert count(engine) == 1
    finally:
        thread.stop()


def test_the_worst_case_header_section_is_refused_before_parsing(
    relay: RelayThread, tenant: Tenant
) -> None:
    """The filed case (12.5 MB of tiny fields), at 2 MiB: refused by the limit.

    Only the outcome is asserted; how long the loop is held while this runs
    is measured by bench/stall.py.
    """
    head = b"A: b\r\n" * (2 * 1024 * 1024 // 6)
    data = b"From: app@acme.test\r\n" + head + b"\r\nbody\r\n.\r\n"
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        client.sock.settimeout(60)
        code, text = send_data(client, tenant.username, ["bob@example.org"], data)
        assert (code, text[:5]) == (552, b"5.3.4"), text
        assert client.sendmail(tenant.username, ["bob@example.org"], message(tenant.username)) == {}


def test_stall_bench_smoke() -> None:
    """bench/stall.py at a hundredth of its sizes: it runs, and each case gets its reply."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.run(
        [sys.executable, "bench/stall.py", "--json", "--scale", "0.01", "--quiet-seconds", "0.2"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    replies = {r["case"]: r["attacker_reply"][:9] for r in json.loads(proc.stdout)}
    assert replies == {
        "(quiet)": "-",
        "header": "552 5.3.4",
        "at-limit": "250 2.0.0",
        "small": "250 2.0.0",
        "body": "250 2.0.0",
        "bare-cr": "250 2.0.0",
    }
