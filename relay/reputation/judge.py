"""Rates against ``[reputation]``: what an account is warned of, or suspended for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.core.settings import ReputationSettings
from relay.reputation.rates import Rates

WARN, SUSPEND = "warn", "suspend"
_NAMES = {"bounce": "hard-bounce rate", "complaint": "complaint rate"}


@dataclass(frozen=True)
class Breach:
    """A rate at or above a limit, in one window."""

    level: str  # warn | suspend
    metric: str  # bounce | complaint
    window: str
    rate: float
    limit: float
    delivered: int

    @property
    def name(self) -> str:
        return _NAMES[self.metric]

    def describe(self) -> str:
        """Names the rate, the window and the limit: the SMTP reply and the notice say it."""
        return (
            f"{self.name} {self.rate:.2%} over {self.window} "
            f"({self.delivered} delivered) reached the limit of {self.limit:.2%}"
        )


def judge(rates: Sequence[Rates], settings: ReputationSettings) -> list[Breach]:
    """Every breach, suspensions first; windows under ``min_volume`` are not judged."""
    found = []
    for r in rates:
        if not r.judged(settings.min_volume):
            continue
        for metric, rate in (("bounce", r.bounce_rate), ("complaint", r.complaint_rate)):
            warn = float(getattr(settings, f"{metric}_warn"))
            suspend = float(getattr(settings, f"{metric}_suspend"))
            if rate >= suspend:
                found.append(Breach(SUSPEND, metric, r.window, rate, suspend, r.delivered))
            elif rate >= warn:
                found.append(Breach(WARN, metric, r.window, rate, warn, r.delivered))
    return sorted(found, key=lambda b: b.level != SUSPEND)
