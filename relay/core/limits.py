"""Sending limits: their names, windows and the ``N/unit`` spelling (pure).

An account or a credential may carry messages per minute and per hour,
recipients per hour and per day (the quota), and concurrent sessions. Rates
and quotas count in windows aligned on UTC (a minute, an hour, a UTC day), as
SendGrid's and Postal's daily quotas reset at midnight UTC: every process and
node agrees on a window without talking to the others.

The spelling on the command line and in the API is strict: ``100/min``,
``1000/hour``, ``50000/day``; ``off`` (or ``none``) clears every window of
its kind, ``off/hour`` one window.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from relay.core.errors import Invalid

MINUTE, HOUR, DAY = 60, 3600, 86400
UNITS = {"min": MINUTE, "hour": HOUR, "day": DAY}
MAX_VALUE = 1_000_000_000


@dataclass(frozen=True)
class LimitKind:
    """One limit: its name (column ``max_<name>``, metric label), what it counts, its window."""

    name: str
    counts: str  # "messages" | "recipients" | "sessions"
    seconds: int  # 0: not a window (concurrent sessions)
    unit: str  # "min" | "hour" | "day" | ""


MESSAGES_PER_MINUTE = LimitKind("messages_per_minute", "messages", MINUTE, "min")
MESSAGES_PER_HOUR = LimitKind("messages_per_hour", "messages", HOUR, "hour")
RECIPIENTS_PER_HOUR = LimitKind("recipients_per_hour", "recipients", HOUR, "hour")
RECIPIENTS_PER_DAY = LimitKind("recipients_per_day", "recipients", DAY, "day")
SESSIONS = LimitKind("sessions", "sessions", 0, "")

KINDS = (MESSAGES_PER_MINUTE, MESSAGES_PER_HOUR, RECIPIENTS_PER_HOUR, RECIPIENTS_PER_DAY, SESSIONS)
BY_NAME = {k.name: k for k in KINDS}
RATES = (MESSAGES_PER_MINUTE, MESSAGES_PER_HOUR, RECIPIENTS_PER_HOUR, RECIPIENTS_PER_DAY)
# The quotas (recipients), as against the rates (messages): the 80% alert watches these.
QUOTAS = (RECIPIENTS_PER_HOUR, RECIPIENTS_PER_DAY)

_SPEC = re.compile(r"^(?:(\d{1,10})|off|none)(?:/([a-z]+))?$")


def parse_spec(spec: str, counts: str) -> dict[str, int | None]:
    """``100/min`` -> {"messages_per_minute": 100}; ``off`` -> every window of ``counts``
    set to None. Raises Invalid naming the option and the allowed units."""
    option = f"--max-{counts}"
    windows = {k.unit: k for k in RATES if k.counts == counts}
    allowed = ", ".join(f"N/{u}" for u in windows)
    text = spec.strip().lower()
    match = _SPEC.match(text)
    if match is None or (match.group(1) is not None and match.group(2) is None):
        raise Invalid(f"{option} {spec!r}: give {allowed}, or off", f"max_{counts}")
    number, unit = match.groups()
    if unit is None:  # off / none
        return {k.name: None for k in windows.values()}
    if unit not in windows:
        raise Invalid(
            f"{option} {spec!r}: {counts} are limited per {' or per '.join(windows)} "
            f"({allowed}, or off)",
            f"max_{counts}",
        )
    if number is None:
        return {windows[unit].name: None}
    if not 1 <= int(number) <= MAX_VALUE:
        raise Invalid(f"{option} {spec!r}: N must be between 1 and {MAX_VALUE}", f"max_{counts}")
    return {windows[unit].name: int(number)}


def check_value(value: int | None, name: str) -> int | None:
    if value is not None and not 1 <= value <= MAX_VALUE:
        raise Invalid(f"{name} must be between 1 and {MAX_VALUE} (or off)", f"max_{name}")
    return value


def spell(kind: LimitKind, value: int | None) -> str:
    """How a limit reads: ``100/min``, ``5`` (sessions) or ``off``."""
    if value is None:
        return "off"
    return f"{value}/{kind.unit}" if kind.unit else str(value)


def window_start(now: float, seconds: int) -> int:
    """The UTC-aligned window ``now`` (epoch seconds) falls in, as its first second."""
    return int(now // seconds) * seconds


def iso(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
