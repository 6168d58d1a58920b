"""The usage report: ledger sums turned into invoice lines, and their formats.

Pure computation, no database: ``relay.service.usage`` runs the query and
hands the sums here, so the arithmetic is tested without SQL and the admin API
can reuse it.

What a line says, for one account over a period of UTC days:

- ``recipients``: accepted recipients, the billed quantity, split by class
  (``to``, ``cc``, ``bcc``);
- ``messages``: distinct messages with an ``accepted`` event;
- ``delivered``, ``dropped``, ``failed``: how those recipients ended;
- ``suppressed``: recipients not sent because they were on the account's
  suppression list; not among ``recipients``, so never charged (a message
  whose every recipient was suppressed is not among ``messages`` either);
- ``pending``: accepted minus ended: recipients of messages still queued,
  deferred or paused. Derived, never stored, so it cannot drift from the
  ledger. The ledger writes outcomes once, when a message ends, so a
  recipient delivered while others of its message are deferred stays pending
  until the message ends;
- ``cost``: ``recipients / 1000 x price``, in ``decimal.Decimal``, rounded
  half-up to 4 places (``COST_PLACES``). An agency total is computed from its
  total recipients, not by adding rounded lines, so it may differ from the sum
  of the lines in the last place.

Formats: ``table`` for people; ``csv`` (one row per line, a fixed header,
LF line ends) and ``json`` (fixed keys, counts as numbers; ``cost`` a string
with exactly 4 decimals and ``price_per_1000`` the configured decimal, as a
string, so no float ever rounds money) for programs. CSV columns are the JSON
keys, per-class ones flattened as ``<class>_<key>`` (``bcc_delivered``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from relay.core.errors import ConfigError, Invalid

CLASSES = ("to", "cc", "bcc")
OUTCOMES = ("delivered", "dropped", "failed")
FORMATS = ("table", "csv", "json")
COST_PLACES = 4
_QUANTUM = Decimal(1).scaleb(-COST_PLACES)  # 0.0001

# Line types: an agency's own sending, a sub-account, an agency with its sub-accounts.
AGENCY, SUB_ACCOUNT, AGENCY_TOTAL = "agency", "sub-account", "agency-total"


@dataclass(frozen=True)
class AccountRef:
    """The little the report needs of an account."""

    id: int
    name: str
    agency: str | None = None  # the parent's name; None for an agency


@dataclass(frozen=True)
class LedgerSums:
    """What the query returns: sums over the period, keyed by account id.

    ``recipients[(account_id, kind, event)]`` with event ``accepted`` or an
    outcome; ``messages[account_id]`` counts distinct accepted messages.
    """

    recipients: Mapping[tuple[int, str, str], int] = field(default_factory=dict)
    messages: Mapping[int, int] = field(default_factory=dict)


@dataclass
class ClassCounts:
    """Recipients of one class: accepted, and how they ended."""

    recipients: int = 0
    delivered: int = 0
    dropped: int = 0
    failed: int = 0
    suppressed: int = 0  # not accepted, not billed: apart from the sums above

    @property
    def pending(self) -> int:
        """Still queued, deferred or paused: accepted minus every ended outcome."""
        return self.recipients - self.delivered - self.dropped - self.failed

    def add(self, other: ClassCounts) -> None:
        self.recipients += other.recipients
        self.delivered += other.delivered
        self.dropped += other.dropped
        self.failed += other.failed
        self.suppressed += other.suppressed

    def as_dict(self) -> dict[str, int]:
        return {
            "recipients": self.recipients,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "failed": self.failed,
            "pending": self.pending,
            "suppressed": self.suppressed,
        }


@dataclass
class Line:
    """One line of the report: an account, or an agency's total."""

    account: str
    agency: str  # the agency this line belongs to (itself, for an agency)
    type: str  # AGENCY | SUB_ACCOUNT | AGENCY_TOTAL
    messages: int = 0
    classes: dict[str, ClassCounts] = field(
        default_factory=lambda: {kind: ClassCounts() for kind in CLASSES}
    )

    @property
    def totals(self) -> ClassCounts:
        out = ClassCounts()
        for counts in self.classes.values():
            out.add(counts)
        return out

    def add(self, other: Line) -> None:
        self.messages += other.messages
        for kind in CLASSES:
            self.classes[kind].add(other.classes[kind])


@dataclass(frozen=True)
class Report:
    first_day: dt.date | None  # None: from the first day in the ledger
    last_day: dt.date | None  # None: up to the last day in the ledger
    price_per_1000: Decimal
    lines: list[Line]

    def cost(self, line: Line) -> Decimal:
        return cost(line.totals.recipients, self.price_per_1000)


_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_day(value: str | dt.date | None, name: str) -> dt.date | None:
    """An inclusive UTC day from ``YYYY-MM-DD``; ``name`` is the option, for the error.

    Stricter than ``date.fromisoformat``, which since 3.11 also takes
    ``20240501`` and week dates: an invoice period should be unambiguous.
    """
    if value is None or isinstance(value, dt.date):
        return value
    text = value.strip()
    try:
        if not _ISO_DAY.match(text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{name} {value!r} is not a date: use YYYY-MM-DD", name) from None


def parse_period(
    first: str | dt.date | None, last: str | dt.date | None
) -> tuple[dt.date | None, dt.date | None]:
    first_day, last_day = parse_day(first, "--from"), parse_day(last, "--to")
    if first_day and last_day and first_day > last_day:
        raise Invalid(f"--from {first_day} is after --to {last_day}", "from")
    return first_day, last_day


def price(value: float | str | Decimal) -> Decimal:
    """The configured price as a Decimal.

    A float goes through ``str`` first: ``Decimal(0.675)`` is
    0.67500000000000004440892..., ``Decimal("0.675")`` is what the operator wrote.
    """
    try:
        out = Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(f"[billing] price_per_1000: {value!r} is not a number") from exc
    if not out.is_finite() or out < 0:
        raise ConfigError(f"[billing] price_per_1000: {value!r} must be zero or more")
    return out


def cost(recipients: int, price_per_1000: Decimal) -> Decimal:
    """``recipients / 1000 x price``, rounded half-up to ``COST_PLACES`` places."""
    exact = Decimal(recipients) * price_per_1000 / 1000
    return exact.quantize(_QUANTUM, rounding=ROUND_HALF_UP)


# -- building -------------------------------------------------------------------


def build_report(
    accounts: Iterable[AccountRef],
    sums: LedgerSums,
    price_per_1000: Decimal,
    first_day: dt.date | None = None,
    last_day: dt.date | None = None,
) -> Report:
    """Lines for ``accounts``, by name: each agency in the list, then its
    sub-accounts in the list, then its total (an invoice goes to the agency).
    A sub-account whose agency is not in the list (``--account SUB``) stands
    alone, without a total."""
    subs: dict[str, list[AccountRef]] = {}
    for account in accounts:
        subs.setdefault(account.agency or "", []).append(account)
    lines: list[Line] = []
    for agency in sorted(subs.pop("", []), key=lambda a: a.name):
        mine = sorted(subs.pop(agency.name, []), key=lambda a: a.name)
        lines.extend(_agency_lines(agency, mine, sums))
    for alone in sorted((a for group in subs.values() for a in group), key=lambda a: a.name):
        lines.append(_line(alone, sums, SUB_ACCOUNT))
    return Report(first_day, last_day, price_per_1000, lines)


def _agency_lines(agency: AccountRef, subs: list[AccountRef], sums: LedgerSums) -> list[Line]:
    lines = [_line(agency, sums, AGENCY)] + [_line(sub, sums, SUB_ACCOUNT) for sub in subs]
    total = Line(agency.name, agency.name, AGENCY_TOTAL)
    for line in lines:
        total.add(line)
    return [*lines, total]


def _line(account: AccountRef, sums: LedgerSums, type_: str) -> Line:
    agency = account.agency or account.name
    line = Line(account.name, agency, type_, sums.messages.get(account.id, 0))
    for kind in CLASSES:
        counts = line.classes[kind]
        counts.recipients = sums.recipients.get((account.id, kind, "accepted"), 0)
        counts.delivered = sums.recipients.get((account.id, kind, "delivered"), 0)
        counts.dropped = sums.recipients.get((account.id, kind, "dropped"), 0)
        counts.failed = sums.recipients.get((account.id, kind, "failed"), 0)
        counts.suppressed = sums.recipients.get((account.id, kind, "suppressed"), 0)
    return line


# -- formats --------------------------------------------------------------------


def render(report: Report, fmt: str) -> str:
    """The report as text in ``fmt`` (one of ``FORMATS``), ending with a newline."""
    renderers = {"table": render_table, "csv": render_csv, "json": render_json}
    if fmt not in renderers:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}", "format")
    return renderers[fmt](report)


def line_dict(report: Report, line: Line) -> dict[str, Any]:
    """One line with stable keys: the shape of the JSON and, flattened, the CSV."""
    totals = line.totals
    return {
        "account": line.account,
        "agency": line.agency,
        "type": line.type,
        "messages": line.messages,
        **totals.as_dict(),
        "cost": str(report.cost(line)),
        "classes": {kind: line.classes[kind].as_dict() for kind in CLASSES},
    }


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "first_day": _iso(report.first_day),
        "last_day": _iso(report.last_day),
        "price_per_1000": str(report.price_per_1000),
        "cost_rounding": f"half-up to {COST_PLACES} decimal places",
        "lines": [line_dict(report, line) for line in report.lines],
    }


def render_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2) + "\n"


CSV_COLUMNS = (
    ["account", "agency", "type", "first_day", "last_day", "messages"]
    + ["recipients", *OUTCOMES, "pending", "cost", "suppressed"]
    + [
        f"{kind}_{key}"
        for kind in CLASSES
        for key in ("recipients", *OUTCOMES, "pending", "suppressed")
    ]
)


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    period = {"first_day": _iso(report.first_day) or "", "last_day": _iso(report.last_day) or ""}
    for line in report.lines:
        row = line_dict(report, line)
        classes = row.pop("classes")
        flat = {f"{kind}_{key}": n for kind, d in classes.items() for key, n in d.items()}
        writer.writerow({**row, **period, **flat})
    return out.getvalue()


_TABLE_COLUMNS = ("MESSAGES", "TO", "CC", "BCC", "RECIPIENTS", "DELIVERED", "DROPPED", "FAILED")


def render_table(report: Report) -> str:
    header = ("ACCOUNT", *_TABLE_COLUMNS, "PENDING", "COST", "SUPPRESSED")
    # Sub-accounts are indented under their agency; one shown alone is not.
    agencies = {line.account for line in report.lines if line.type == AGENCY}
    rows = [header] + [_table_row(report, line, agencies) for line in report.lines]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    text = [_caption(report)]
    for row in rows:
        # Names left, figures right, so digits line up.
        cells = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        text.append("  ".join(cells).rstrip())
    if not report.lines:
        text.append("(no accounts)")
    text += ["", _legend()]
    return "\n".join(text) + "\n"


def _table_row(report: Report, line: Line, agencies: set[str]) -> tuple[str, ...]:
    t = line.totals
    label = line.account
    if line.type == AGENCY_TOTAL:
        label = f"{line.account} total"
    elif line.type == SUB_ACCOUNT and line.agency in agencies:
        label = f"  {line.account}"
    by_class = [line.classes[kind].recipients for kind in CLASSES]
    counts = [line.messages, *by_class, t.recipients, t.delivered, t.dropped, t.failed, t.pending]
    return (label, *map(str, counts), str(report.cost(line)), str(t.suppressed))


def _caption(report: Report) -> str:
    return (
        f"Usage {_period(report)} (UTC days, inclusive), "
        f"at {report.price_per_1000} per 1000 recipients"
    )


def _legend() -> str:
    return (
        "TO, CC, BCC: accepted recipients by class; RECIPIENTS: their sum, billed.\n"
        "PENDING: still queued, deferred or paused. "
        "SUPPRESSED: on the suppression list, not sent, not billed. "
        f"COST: RECIPIENTS / 1000 x price, rounded half-up to {COST_PLACES} places."
    )


def _period(report: Report) -> str:
    first, last = _iso(report.first_day), _iso(report.last_day)
    if first and last:
        return f"from {first} to {last}"
    if first:
        return f"from {first} on"
    return f"up to {last}" if last else "on every day in the ledger"


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None
