"""Acceptance: limits, header hygiene, smuggling, durable queueing, delivery to
the outbox, and the process lifecycle (SIGKILL after 250, SIGTERM, bind errors)."""

from __future__ import annotations

import email
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy import text as sql

from relay.core.settings import Settings
from relay.store.models import Message, Recipient, Usage
from tests.support import PASSWORD, RelayThread, Tenant, connect, message, seed_tenant


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def count(engine: Engine, state: str | None = None) -> int:
    query = select(func.count()).select_from(Message)
    if state:
        query = query.where(Message.state == state)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def send_raw(client: object, sender: str, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
    """MAIL, RCPT, DATA with the data bytes sent exactly as given."""
    import smtplib

    assert isinstance(client, smtplib.SMTP)
    assert client.docmd("MAIL", f"FROM:<{sender}>")[0] == 250
    for rcpt in rcpts:
        assert client.docmd("RCPT", f"TO:<{rcpt}>")[0] == 250
    assert client.docmd("DATA")[0] == 354
    client.send(data)
    return client.getreply()


def test_message_is_queued_delivered_and_cleaned(relay: RelayThread, tenant: Tenant) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        rcpts = ["bob@example.org", "carol@example.org", "dave@example.org"]
        data = message(
            tenant.username,
            to="Bob <bob@example.org>",
            cc="carol@example.org",
            bcc="dave@example.org",
        )
        assert client.docmd("MAIL", f"FROM:<{tenant.username}>")[0] == 250
        for r in rcpts:
            client.docmd("RCPT", f"TO:<{r}>")
        code, reply = client.data(data)
    assert code == 250
    queue_id = reply.decode().rsplit(" ", 1)[1]
    assert reply.decode() == f"2.0.0 Ok: queued as {queue_id}"
    wait_for(lambda: count(relay.engine, "delivered") == 1)
    eml = relay.settings.var_path / "outbox" / f"{queue_id}.eml"
    parsed = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    # The outbox notes the envelope (X-Relay-Envelope-To); the message itself hides dave.
    headers = [(k, v) for k, v in parsed.items() if not k.startswith("X-Relay-Envelope")]
    assert "Bcc" not in parsed and not any("dave" in str(v) for _, v in headers)
    assert parsed["Message-ID"] and parsed["Date"]
    assert parsed["Received"].startswith("from client.test ([127.0.0.1])")
    assert f"id {queue_id}" in parsed["Received"] and "ESMTPSA" in parsed["Received"]
    with relay.engine.connect() as conn:
        kinds = dict(conn.execute(select(Recipient.address, Recipient.kind)).all())
        usage = {
            (k, e): n
            for k, e, n in conn.execute(select(Usage.kind, Usage.event, Usage.recipients)).all()
        }
    assert kinds == {"bob@example.org": "to", "carol@example.org": "cc", "dave@example.org": "bcc"}
    assert usage == {
        ("to", "accepted"): 1,
        ("cc", "accepted"): 1,
        ("bcc", "accepted"): 1,
        ("to", "delivered"): 1,
        ("cc", "delivered"): 1,
        ("bcc", "delivered"): 1,
    }


def test_existing_message_id_and_date_are_kept(relay: RelayThread, tenant: Tenant) -> None:
    extra = "Message-ID: <keep@acme.test>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        client.sendmail(tenant.username, ["bob@example.org"], message(tenant.username, extra=extra))
    wait_for(lambda: count(relay.engine, "delivered") == 1)
    eml = next((relay.settings.var_path / "outbox").glob("*.eml")).read_bytes()
    assert eml.count(b"Message-ID:") == 1 and b"<keep@acme.test>" in eml
    assert eml.count(b"\r\nDate:") == 1


def test_size_limit_declared_and_actual(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    settings = replace(settings, limits=replace(settings.limits, max_message_size=10_000))
    thread = RelayThread(settings, engine).start()
    try:
        with connect(thread, "submission", login=(tenant.username, tenant.password)) as client:
            assert "10000" in client.esmtp_features["size"]
            code, text = client.docmd("MAIL", f"FROM:<{tenant.username}> SIZE=20000")
            assert (code, text[:5]) == (552, b"5.3.4")
            # A client that lies in SIZE= is stopped by the byte count.
            big = message(tenant.username, body="x" * 998 + "\r\n") * 1
            big = big + (b"y" * 998 + b"\r\n") * 15
            code, text = send_raw(client, tenant.username, ["b@example.org"], big + b".\r\n")
            assert (code, text[:5]) == (552, b"5.3.4")
        assert count(engine) == 0
    finally:
        thread.stop()


def test_recipient_limit(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    settings = replace(settings, limits=replace(settings.limits, max_recipients=3))
    thread = RelayThread(settings, engine).start()
    try:
        with connect(thread, "submission", login=(tenant.username, tenant.password)) as client:
            client.docmd("MAIL", f"FROM:<{tenant.username}>")
            for i in range(3):
                assert client.docmd("RCPT", f"TO:<r{i}@example.org>")[0] == 250
            assert client.docmd("RCPT", "TO:<r3@example.org>") == (
                452,
                b"4.5.3 Too many recipients",
            )
            code, _ = client.data(message(tenant.username))
            assert code == 250
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Recipient)).scalar_one() == 3
    finally:
        thread.stop()


SMUGGLED = [
    b"\n.\r\n",  # bare LF before the dot
    b"\r\n.\n",  # bare LF after it
    b"\n.\n",
    b"\r.\r\n",  # bare CR
    b"\r\n.\r",
]


@pytest.mark.parametrize("sequence", SMUGGLED, ids=lambda s: repr(s))
def test_smuggling_sequences_never_end_data(
    relay: RelayThread, tenant: Tenant, sequence: bytes
) -> None:
    head = message(tenant.username, body="first part\r\n").rstrip(b"\r\n")
    smuggled = (
        head + sequence + b"MAIL FROM:<ceo@acme.test>\r\nRCPT TO:<x@example.org>\r\n"
        b"DATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n"
    )
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, text = send_raw(client, tenant.username, ["bob@example.org"], smuggled)
        assert (code, text[:5]) == (550, b"5.5.2")
        assert client.noop()[0] == 250  # the session goes on, nothing else was run
    assert count(relay.engine) == 0


def test_bare_lf_elsewhere_is_normalised(relay: RelayThread, tenant: Tenant) -> None:
    data = b"From: app@acme.test\nTo: bob@example.org\nSubject: lf\n\nline one\nline two\r\n.\r\n"
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, _ = send_raw(client, tenant.username, ["bob@example.org"], data)
        assert code == 250
    wait_for(lambda: count(relay.engine, "delivered") == 1)
    eml = next((relay.settings.var_path / "outbox").glob("*.eml")).read_bytes()
    body = eml.split(b"\r\n\r\n", 1)[1]
    assert body == b"line one\r\nline two\r\n"


def test_malformed_message_gets_a_clear_reply(relay: RelayThread, tenant: Tenant) -> None:
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        code, text = send_raw(
            client,
            tenant.username,
            ["bob@example.org"],
            b"this is not a header\r\n\r\nbody\r\n.\r\n",
        )
        assert (code, text[:5]) == (550, b"5.6.0")
        assert client.sendmail(tenant.username, ["bob@example.org"], message(tenant.username)) == {}


def test_storage_failure_answers_451_never_250(relay: RelayThread, tenant: Tenant) -> None:
    with relay.engine.begin() as conn:
        conn.execute(sql("DROP TABLE message_contents"))
    with connect(relay, "submission", login=(tenant.username, tenant.password)) as client:
        assert client.docmd("MAIL", f"FROM:<{tenant.username}>")[0] == 250
        client.docmd("RCPT", "TO:<bob@example.org>")
        code, text = client.data(message(tenant.username))
    assert (code, text[:5]) == (451, b"4.3.0")
    assert count(relay.engine) == 0


def test_connection_limit_per_address(settings: Settings, engine: Engine, tenant: Tenant) -> None:
    settings = replace(settings, limits=replace(settings.limits, max_connections_per_ip=2))
    thread = RelayThread(settings, engine).start()
    try:
        with (
            connect(thread, "smtp", tls=False),
            connect(thread, "smtp", tls=False),
            socket.create_connection(("127.0.0.1", thread.port("smtp")), 5) as sock,
        ):
            assert sock.recv(200).startswith(b"421 4.7.0")
    finally:
        thread.stop()


# -- the process: SIGKILL, SIGTERM, bind errors --------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(var: Path, db_url: str, ports: dict[str, int], workers: bool = True) -> Path:
    listeners = "\n".join(f'{name} = "127.0.0.1:{port}"' for name, port in ports.items())
    path = var / "relay.toml"
    var.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""
[database]
url = "{db_url}"
[listeners]
{listeners}
[admin]
listen = "127.0.0.1:{free_port()}"
[server]
var_dir = "{var}"
processes = 1  # one node, one process, as written (the default is one per core)
[auth]
argon2_time_cost = 1
argon2_memory_kib = 1024
[queue]
workers = {"true" if workers else "false"}
poll_interval = 0.2
""")
    return path


def start_relay(config: Path) -> subprocess.Popen[bytes]:
    log = open(config.with_suffix(".log"), "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "--config", str(config), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"relay exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


@pytest.mark.slow
def test_sigkill_after_250_loses_nothing(
    settings: Settings, engine: Engine, tenant: Tenant, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(settings.var_path, settings.database.url, {"alt": port}, workers=False)
    proc = start_relay(config)
    try:
        wait_port(port, proc)
        import smtplib

        from tests.support import client_context

        client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        client.starttls(context=client_context())
        client.login(tenant.username, PASSWORD)
        ids = []
        for i in range(5):
            client.docmd("MAIL", f"FROM:<{tenant.username}>")
            client.docmd("RCPT", f"TO:<r{i}@example.org>")
            code, reply = client.data(message(tenant.username, subject=f"n{i}"))
            assert code == 250
            ids.append(reply.decode().rsplit(" ", 1)[1])
        proc.send_signal(signal.SIGKILL)  # right after the last 250
        proc.wait(10)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert count(engine, "queued") == 5
    config = write_config(settings.var_path, settings.database.url, {"alt": port})
    proc = start_relay(config)
    try:
        wait_port(port, proc)
        wait_for(lambda: count(engine, "delivered") == 5, timeout=20)
        outbox = settings.var_path / "outbox"
        assert sorted(p.stem for p in outbox.glob("*.eml")) == sorted(ids)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


@pytest.mark.slow
def test_sigterm_lets_the_open_transaction_finish(
    settings: Settings, engine: Engine, tenant: Tenant
) -> None:
    import smtplib

    from tests.support import client_context

    port = free_port()
    proc = start_relay(write_config(settings.var_path, settings.database.url, {"alt": port}))
    try:
        wait_port(port, proc)
        client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        client.starttls(context=client_context())
        client.login(tenant.username, PASSWORD)
        client.docmd("MAIL", f"FROM:<{tenant.username}>")
        client.docmd("RCPT", "TO:<bob@example.org>")
        idle = socket.create_connection(("127.0.0.1", port), 5)
        assert idle.recv(200).startswith(b"220 ")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no new connections
            socket.create_connection(("127.0.0.1", port), 1).close()
        code, _ = client.data(message(tenant.username))
        assert code == 250  # the transaction in flight completed
        client.close()
        idle.settimeout(5)
        assert idle.recv(200).startswith(b"421 4.3.2")  # the idle session was told
        idle.close()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert count(engine) == 1


def test_bind_failure_says_why_and_exits_nonzero(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "var2", f"sqlite:///{tmp_path}/b.db", {"smtp": port})
        result = subprocess.run(
            [sys.executable, "-m", "relay", "--config", str(config), "serve"],
            capture_output=True,
            timeout=30,
        )
    assert result.returncode != 0
    assert b"listener smtp cannot bind" in result.stderr
    assert b"address already in use" in result.stderr


def swaks_with_tls() -> bool:
    if shutil.which("swaks") is None:
        return False
    probe = subprocess.run(["swaks", "--support"], capture_output=True, timeout=30)
    return b"=== TLS supported" in probe.stdout + probe.stderr


@pytest.mark.skipif(not swaks_with_tls(), reason="swaks with TLS support not installed")
def test_swaks(relay: RelayThread, tenant: Tenant) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{relay.port('submission')}",
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            tenant.username,
            "--auth-password",
            tenant.password,
            "--from",
            tenant.username,
            "--to",
            "bob@example.org",
            "--header",
            "Subject: swaks test",
        ],
        capture_output=True,
        timeout=30,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stdout.decode()[-2000:]
    assert b"250 2.0.0 Ok: queued as" in result.stdout


def test_two_tenants_share_nothing(relay: RelayThread, settings: Settings, engine: Engine) -> None:
    other = seed_tenant(settings, engine, name="globex", domain="globex.test")
    with connect(relay, "submission", login=(other.username, other.password)) as client:
        client.sendmail(other.username, ["x@example.org"], message(other.username))
    with engine.connect() as conn:
        owner = conn.execute(select(Message.account_id)).scalar_one()
        usage_accounts = set(conn.execute(select(Usage.account_id)).scalars())
    assert usage_accounts == {owner}
