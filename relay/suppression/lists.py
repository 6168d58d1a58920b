"""One account's suppression list: look-ups, add, remove, list, CSV.

Addresses are stored and compared as ``relay.core.addresses`` does: the
domain case-insensitive, the local part as written (RFC 5321 2.4).

**Sharing.** An agency with ``share_suppressions`` lends its list to its
sub-accounts: a look-up for a sub-account reads its own rows and its
agency's. Rows are only ever written to one account.

**Expiry.** Soft-bounce rows carry ``expires_at`` and count only until then;
every other reason is permanent until removed.

**Add is idempotent.** An address already on the list keeps its row unless
the new reason is stronger (``STRENGTH``): what the recipient said
(``complaint``, then ``unsubscribe``) over what the mailbox said
(``hard_bounce``) over the operator's ``manual`` over a ``soft_bounce``,
which is the weakest because it expires. A stronger reason replaces reason,
source, detail and date and clears the expiry; the same ``soft_bounce``
again extends its expiry; anything else leaves the row as it was. An expired
soft bounce is replaced by whatever comes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from relay.core.addresses import normalise_username
from relay.core.errors import Invalid, NotFound
from relay.store.models import Suppression

HARD_BOUNCE, SOFT_BOUNCE, COMPLAINT, UNSUBSCRIBE, MANUAL = (
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "unsubscribe",
    "manual",
)
REASONS = (HARD_BOUNCE, SOFT_BOUNCE, COMPLAINT, UNSUBSCRIBE, MANUAL)
# Higher wins: see the module's docstring.
STRENGTH = {SOFT_BOUNCE: 0, MANUAL: 1, HARD_BOUNCE: 2, UNSUBSCRIBE: 3, COMPLAINT: 4}
SOURCES = ("event", "unsubscribe", "manual", "import", "sync")
CSV_COLUMNS = ("address", "reason", "created_at", "detail")
_COLUMNS = select(*Suppression.__table__.columns)
MAX_ADDRESS = 320


@dataclass(frozen=True)
class Entry:
    """One suppression as shown and exported."""

    address: str
    reason: str
    source: str
    created_at: dt.datetime
    detail: str | None = None
    expires_at: dt.datetime | None = None
    account_id: int = 0


def normalise(address: str) -> str:
    """The form an address is stored and compared in."""
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if (
        not (local and at and domain)
        or len(address) > MAX_ADDRESS
        or any(c in address for c in "\r\n\x00 ,;")
    ):
        raise Invalid(f"{address!r} is not an email address", "address")
    return normalise_username(address)


def check_reason(reason: str) -> str:
    if reason not in REASONS:
        raise Invalid(f"reason must be one of {', '.join(REASONS)}", "reason")
    return reason


# -- the hot path ---------------------------------------------------------------

# Standard SQL on both engines, prepared once (as policy's statements are): the
# account's own rows and, when its agency shares, the agency's; by the unique
# index (account_id, address).
_LOOKUP = text("""
SELECT s.address, s.reason, s.created_at, s.expires_at, s.account_id FROM suppressions s
WHERE s.address IN :addresses
  AND (s.account_id = :account_id OR s.account_id = (
       SELECT p.id FROM accounts a JOIN accounts p ON p.id = a.parent_id
       WHERE a.id = :account_id AND p.share_suppressions))
""").bindparams(bindparam("addresses", expanding=True))


def lookup(
    conn: Connection, account_id: int, addresses: Sequence[str], now: dt.datetime | None = None
) -> dict[str, Entry]:
    """The suppressed ones of ``addresses`` (as given) for ``account_id``: one query.

    Keys are the addresses as given; an address that is not an address is
    never suppressed (the front end vetted it).
    """
    wanted: dict[str, list[str]] = {}
    for address in addresses:
        try:
            wanted.setdefault(normalise(address), []).append(address)
        except Invalid:
            continue
    if not wanted:
        return {}
    now = now or dt.datetime.now(dt.UTC)
    rows = conn.execute(_LOOKUP, {"addresses": list(wanted), "account_id": account_id}).all()
    found: dict[str, Entry] = {}
    for address, reason, created_at, expires_at, owner in rows:
        expires_at = _aware(expires_at)
        if expires_at is not None and expires_at <= now:
            continue
        entry = Entry(address, reason, "", _aware(created_at) or now, None, expires_at, owner)
        # The account's own row wins over its agency's.
        for given in wanted.get(address, []):
            if given not in found or owner == account_id:
                found[given] = entry
    return found


def _aware(value: dt.datetime | str | None) -> dt.datetime | None:
    """A timestamp from raw SQL (SQLite gives text or naive values) as UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# -- changes --------------------------------------------------------------------


def add(
    engine: Engine,
    account_id: int,
    address: str,
    reason: str,
    source: str,
    detail: str | None = None,
    expires_at: dt.datetime | None = None,
    created_at: dt.datetime | None = None,
) -> tuple[Entry, bool]:
    """Put ``address`` on the list (idempotent, see the module); ``(entry, changed)``."""
    address, reason = normalise(address), check_reason(reason)
    now = dt.datetime.now(dt.UTC)
    values = {
        "account_id": account_id,
        "address": address,
        "reason": reason,
        "source": source,
        "detail": (detail or None) and detail[:2000],
        "created_at": created_at or now,
        "expires_at": expires_at if reason == SOFT_BOUNCE else None,
    }
    try:
        with engine.begin() as conn:
            conn.execute(insert(Suppression), values)
        return _entry(values), True
    except IntegrityError:
        pass  # already there (perhaps since a moment ago): compare reasons
    with engine.begin() as conn:
        row = conn.execute(
            _COLUMNS.where(Suppression.account_id == account_id, Suppression.address == address)
        ).one()
        current = _entry_of(row)
        expired = current.expires_at is not None and current.expires_at <= now
        if expired or STRENGTH[reason] > STRENGTH[current.reason]:
            new = values
        elif reason == current.reason == SOFT_BOUNCE and (
            expires_at and (current.expires_at is None or expires_at > current.expires_at)
        ):
            new = {**_values(current), "expires_at": expires_at}
        else:
            return current, False
        conn.execute(update(Suppression).where(Suppression.id == row.id).values(**new))
        return _entry(new), True


def remove(engine: Engine, account_id: int, address: str) -> None:
    address = normalise(address)
    with engine.begin() as conn:
        gone = conn.execute(
            delete(Suppression).where(
                Suppression.account_id == account_id, Suppression.address == address
            )
        ).rowcount
    if not gone:
        raise NotFound(f"{address} is not on the suppression list")


def entries(
    engine: Engine,
    account_id: int,
    reason: str | None = None,
    contains: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    include_expired: bool = False,
) -> tuple[list[Entry], int]:
    """The account's own rows by address, filtered and paged; and how many match."""
    where = [Suppression.account_id == account_id]
    if reason:
        where.append(Suppression.reason == check_reason(reason))
    if contains:
        where.append(Suppression.address.contains(contains.strip(), autoescape=True))
    if not include_expired:
        now = dt.datetime.now(dt.UTC)
        where.append(or_(Suppression.expires_at.is_(None), Suppression.expires_at > now))
    query = _COLUMNS.where(*where).order_by(Suppression.address)
    if limit is not None:
        query = query.limit(limit).offset(offset)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(Suppression).where(*where)).scalar()
        rows = [_entry_of(r) for r in conn.execute(query).all()]
    return rows, int(total or 0)


def has_any(engine: Engine, account_id: int) -> bool:
    with engine.connect() as conn:
        q = select(Suppression.id).where(Suppression.account_id == account_id).limit(1)
        return conn.execute(q).first() is not None


def _values(entry: Entry) -> dict[str, object]:
    return {
        "account_id": entry.account_id,
        "address": entry.address,
        "reason": entry.reason,
        "source": entry.source,
        "detail": entry.detail,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
    }


def _entry(values: dict[str, object]) -> Entry:
    return Entry(
        str(values["address"]),
        str(values["reason"]),
        str(values["source"]),
        values["created_at"],  # type: ignore[arg-type]
        values["detail"],  # type: ignore[arg-type]
        values["expires_at"],  # type: ignore[arg-type]
        int(values["account_id"]),  # type: ignore[call-overload]
    )


def _entry_of(row: Any) -> Entry:
    return Entry(
        row.address,
        row.reason,
        row.source,
        _aware(row.created_at) or dt.datetime.now(dt.UTC),
        row.detail,
        _aware(row.expires_at),
        row.account_id,
    )


# -- CSV ------------------------------------------------------------------------


def export_csv(items: Iterable[Entry]) -> str:
    """Columns ``address, reason, created_at, detail`` (ISO 8601 UTC), LF line ends."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in items:
        writer.writerow([e.address, e.reason, e.created_at.isoformat(), e.detail or ""])
    return out.getvalue()


@dataclass(frozen=True)
class ImportRow:
    address: str
    reason: str
    created_at: dt.datetime | None
    detail: str | None


def parse_csv(data: str, default_reason: str = MANUAL) -> list[ImportRow]:
    """Rows of an import: a header naming at least ``address``; ``reason``
    (default ``manual``), ``created_at`` (ISO 8601) and ``detail`` optional.
    Any bad row refuses the whole file, naming its line."""
    reader = csv.DictReader(io.StringIO(data))
    if not reader.fieldnames or "address" not in [f.strip() for f in reader.fieldnames]:
        raise Invalid("CSV must have a header row with an 'address' column", "csv")
    out = []
    for row in reader:
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        line = reader.line_num
        try:
            address = normalise(row.get("address", ""))
            reason = check_reason(row.get("reason") or default_reason)
            stamp = row.get("created_at") or ""
            created = _aware(dt.datetime.fromisoformat(stamp)) if stamp else None
        except (Invalid, ValueError) as exc:
            raise Invalid(f"CSV line {line}: {exc}", "csv") from exc
        out.append(ImportRow(address, reason, created, row.get("detail") or None))
    return out
