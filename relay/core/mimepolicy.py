"""``email.policy.default`` with its parsed header fields remembered.

Under ``policy.default`` every read of a field (``msg["From"]``,
``get_content_type()``, ``get_filename()``...) parses the raw value again
through the header registry, and converting one message to a provider's JSON
reads Content-Type alone five or six times per part. Measured (py-spy,
bench/deliver.py by API): the registry was a fifth of the delivery's CPU.

A parsed field is a ``str`` subclass that nobody changes after it is made
(``EmailMessage`` replaces fields, it never edits them), and it depends only on
the policy, the field's name and its raw value: so the same (name, value) can
share one parsed object across reads, parts and messages. A campaign's
messages repeat most of their fields (From, Content-Type, MIME-Version...),
and the cache is bounded.
"""

from __future__ import annotations

from email.policy import EmailPolicy
from functools import lru_cache
from typing import Any

CACHED_FIELDS = 4096  # parsed fields kept; a few hundred bytes each
MAX_CACHED_VALUE = 2048  # characters: longer values are parsed each time, not kept


class CachedPolicy(EmailPolicy):
    """``policy.default`` whose fetched header fields come from a bounded cache."""

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if hasattr(value, "name") or not isinstance(value, str) or len(value) > MAX_CACHED_VALUE:
            return super().header_fetch_parse(name, value)
        return _parsed(self, name, value)


@lru_cache(maxsize=CACHED_FIELDS)
def _parsed(policy: CachedPolicy, name: str, value: str) -> Any:
    return EmailPolicy.header_fetch_parse(policy, name, value)


# As policy.default is: EmailPolicy with the standard header registry.
default = CachedPolicy()
