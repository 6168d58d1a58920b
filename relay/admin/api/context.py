"""What the admin API works with, handed over by the composition root (``relay.app``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import dns.resolver
from sqlalchemy import Engine

from relay.accounting.report import price
from relay.auth.limiter import FailureLimiter
from relay.auth.passwords import Hasher
from relay.core.crypto import SecretBox
from relay.core.settings import Settings
from relay.service.dnsverify import make_resolver


@dataclass
class ApiContext:
    engine: Engine
    settings: Settings
    hasher: Hasher
    box: SecretBox
    # The relay's readiness: database reachable, spool writable, listeners up.
    ready: Callable[[], Awaitable[dict[str, bool]]]
    # Live provider operations (check, test) the relay offers, if any.
    providers: Any = None
    # The relay's Notify (``relay.service.notifications.Notifier.notify``), if any.
    notify: Any = None
    limiter: FailureLimiter = field(init=False)

    def __post_init__(self) -> None:
        # Failed token checks are limited per client address with the same
        # thresholds as failed SMTP logins ([auth] in the configuration).
        auth = self.settings.auth
        self.limiter = FailureLimiter(auth.max_failures_per_ip, auth.failure_window, auth.lockout)

    @property
    def price_per_1000(self) -> Decimal:
        return price(self.settings.billing.price_per_1000)

    def resolver(self) -> dns.resolver.Resolver:
        dns_ = self.settings.dns
        return make_resolver(dns_.nameservers, dns_.port, dns_.timeout)
