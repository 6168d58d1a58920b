"""The actor of the current call and the accounts it sees (``relay.service.scope``).

Apart from ``scope`` so that the command line can make the operator the actor
without loading SQLAlchemy, which ``scope``'s look-ups need: a quick listing
(``relay.service.quick``) never loads it (``relay --help`` and listings start
in a fraction of a second).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """The accounts an actor may see; ``accounts=None`` is every account."""

    accounts: frozenset[int] | None = None

    @property
    def everything(self) -> bool:
        return self.accounts is None

    def sees(self, account_id: int | None) -> bool:
        return self.accounts is None or (account_id is not None and account_id in self.accounts)


EVERYTHING = Scope()


@dataclass(frozen=True)
class Actor:
    """Who asked: ``operator`` or ``token:<id>``, by which way (cli, api, local)."""

    name: str
    via: str
    scope: Scope = EVERYTHING
    account_id: int | None = None  # the token's own account


LOCAL_OPERATOR = Actor("operator", "local")
_current: ContextVar[Actor] = ContextVar("relay_actor", default=LOCAL_OPERATOR)


def current() -> Actor:
    return _current.get()


@contextlib.contextmanager
def acting(actor: Actor) -> Iterator[Actor]:
    """Make ``actor`` the one the service guards and the audit log see."""
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)
