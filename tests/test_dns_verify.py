"""Domain verification by DNS TXT, against a DNS server of our own on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from sqlalchemy import Engine, select

from relay.core.errors import NotFound
from relay.service import accounts, dnsverify
from relay.store.models import Sender
from tests.support import Tenant


class TinyDNS:
    """Answers TXT queries from a dict over UDP on 127.0.0.1 (NXDOMAIN otherwise)."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            reply = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().rstrip(".")
            if name in self.records and question.rdtype == dns.rdatatype.TXT:
                reply.answer.append(
                    dns.rrset.from_text_list(
                        question.name,
                        60,
                        dns.rdataclass.IN,
                        dns.rdatatype.TXT,
                        [f'"{v}"' for v in self.records[name]],
                    )
                )
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def dns_server() -> Iterator[TinyDNS]:
    server = TinyDNS()
    yield server
    server.close()


def test_txt_record_verifies_the_domain(
    dns_server: TinyDNS, engine: Engine, tenant: Tenant
) -> None:
    resolver = dnsverify.make_resolver(("127.0.0.1",), dns_server.port, timeout=2)
    first = accounts.verify_sender_dns(engine, "Brand.test", tenant.account, resolver)
    assert not first.verified
    assert first.record == "_relay-verification.brand.test"
    assert first.value.startswith("relay-verification=")
    # Publishing something else does not verify it.
    dns_server.records[first.record] = ["v=spf1 -all", "relay-verification=wrong"]
    again = accounts.verify_sender_dns(engine, "brand.test", tenant.account, resolver)
    assert not again.verified and again.value == first.value  # the token is stable
    dns_server.records[first.record].append(first.value)
    done = accounts.verify_sender_dns(engine, "brand.test", tenant.account, resolver)
    assert done.verified
    with engine.connect() as conn:
        row = conn.execute(select(Sender.verified).where(Sender.pattern == "brand.test"))
        assert row.scalar_one() is True


def test_unknown_account_and_bad_domain(
    dns_server: TinyDNS, engine: Engine, tenant: Tenant
) -> None:
    resolver = dnsverify.make_resolver(("127.0.0.1",), dns_server.port, timeout=2)
    with pytest.raises(NotFound):
        accounts.verify_sender_dns(engine, "brand.test", "nobody", resolver)


def test_cli_prints_the_record_then_verifies(
    dns_server: TinyDNS,
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from relay.cli import main

    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/dns.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", f"{tmp_path}/var")
    monkeypatch.setenv("RELAY_DNS_NAMESERVERS", "127.0.0.1")
    monkeypatch.setenv("RELAY_DNS_PORT", str(dns_server.port))
    monkeypatch.setenv("RELAY_DNS_TIMEOUT", "2")
    assert main(["account", "create", "shop"]) == 0
    assert main(["sender", "verify-dns", "shop.test", "--account", "shop"]) == 3
    out = capsys.readouterr().out
    record = out.split("publish this record, then run the command again:\n  ")[1]
    name, _, value = record.strip().partition(". TXT ")
    dns_server.records[name] = [value.strip('"')]
    assert main(["sender", "verify-dns", "shop.test", "--account", "shop"]) == 0
    assert "verified shop.test" in capsys.readouterr().out
