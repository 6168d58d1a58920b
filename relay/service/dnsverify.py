"""Domain ownership by DNS: the account publishes a TXT record with a token.

The record is ``_relay-verification.<domain> TXT "relay-verification=<token>"``
(a name of its own, as SendGrid and SparkPost do, so it never collides with
SPF). The look-up uses dnspython with the resolvers from config, or the
system's; tests point it at a DNS server of their own on loopback.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from relay.core.errors import Invalid

if TYPE_CHECKING:  # dnspython is loaded by the look-up only (commands start faster)
    import dns.resolver

PREFIX = "_relay-verification"
VALUE = "relay-verification="


def new_token() -> str:
    return secrets.token_urlsafe(24)


def record_name(domain: str) -> str:
    return f"{PREFIX}.{domain}"


def record_value(token: str) -> str:
    return f"{VALUE}{token}"


def make_resolver(
    nameservers: tuple[str, ...] = (), port: int = 53, timeout: float = 5.0
) -> dns.resolver.Resolver:
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = list(nameservers)
    resolver.port = port
    resolver.lifetime = timeout
    return resolver


def txt_has_token(resolver: dns.resolver.Resolver, domain: str, token: str) -> bool:
    """True if the domain's verification record carries the token."""
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(record_name(domain), "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return False
    except dns.exception.DNSException as exc:
        raise Invalid(f"DNS look-up of {record_name(domain)} failed: {exc}", "domain") from exc
    wanted = record_value(token)
    for rdata in answer:
        text = b"".join(rdata.strings).decode("utf-8", "replace")
        if text == wanted:
            return True
    return False
