"""Pages of long listings (the queue, the audit log) and their opaque cursors.

A cursor is the sort key of the last row a page showed, as base64url JSON:
the next page starts strictly after it, so rows that arrive meanwhile never
shift a page nor repeat a row (keyset pagination, not OFFSET). Clients must
treat it as opaque; a cursor this module did not make is refused as Invalid.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from relay.core.errors import Invalid

T = TypeVar("T")

MAX_LIMIT = 500


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None  # None: this is the last page


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be 1 to {MAX_LIMIT}", "limit")
    return limit


def encode_cursor(*key: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *types: type[str] | type[int]) -> tuple[Any, ...]:
    """The key an ``encode_cursor`` made, checked against the expected types."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError):
        key = None
    if not isinstance(key, list) or len(key) != len(types):
        raise Invalid("cursor is not one this listing gave", "cursor")
    for value, kind in zip(key, types, strict=True):
        # Bounded so that no engine meets an integer wider than its columns.
        if type(value) is not kind or (isinstance(value, int) and not 0 <= value < 2**62):
            raise Invalid("cursor is not one this listing gave", "cursor")
    return tuple(key)
