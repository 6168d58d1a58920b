"""Addresses, domains and sender patterns: the rules every layer reads the same way.

A username is ``local@domain`` (the domain compared in lower case, RFC 5321
2.4); a verified sender is an address, a domain, or ``*@domain`` (the same
as the domain). SMTP login (``relay.auth``), policy (``relay.routing``) and
the service layer all check and match them here, so that what the operator
verified is what policy matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from relay.core.errors import Invalid

# RFC 1035 labels; at least two of them for a sending domain.
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
# RFC 5321 4.1.2 dot-string local part, a practical subset.
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")


def normalise_username(username: str) -> str:
    local, _, domain = username.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if local else username.strip()


def check_domain(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    if not _DOMAIN.match(name):
        raise Invalid(f"{name!r} is not a valid domain name", "domain")
    return name


def split_username(username: str) -> tuple[str, str]:
    username = normalise_username(username)
    local, at, domain = username.rpartition("@")
    if not at or not _LOCAL.match(local) or local.startswith(".") or ".." in local:
        raise Invalid(f"{username!r} is not a valid username: use local@domain", "username")
    return local, check_domain(domain)


def check_sender(pattern: str) -> str:
    """An address ``user@domain``, a domain, or ``*@domain`` (the same as the domain)."""
    pattern = pattern.strip().lower()
    if pattern.startswith("*@"):
        pattern = pattern[2:]
    if "@" in pattern:
        local, _, domain = pattern.rpartition("@")
        if not local or not _LOCAL.match(local):
            raise Invalid(f"{pattern!r} is not a valid address", "sender")
        return f"{local}@{check_domain(domain)}"
    return check_domain(pattern)


def sender_matches(address: str, patterns: Iterable[str]) -> bool:
    """True if ``address`` is a verified address or in a verified domain."""
    address = address.strip().lower()
    domain = address.rpartition("@")[2]
    for pattern in patterns:
        p = pattern.lower()
        if p in (address, domain) or (p.startswith("*@") and p[2:] == domain):
            return True
    return False
