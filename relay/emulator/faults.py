"""What an emulated API remembers, and how it is told to misbehave.

Each emulated API has one :class:`ApiState`: the requests it received (in
memory, never the API key itself: only the scheme of the Authorization header)
and a queue of faults. A fault applies to the next ``count`` requests:

* ``fail``: answer ``status`` (and the provider's error body, with ``code``:
  SparkPost's error code, or the ``field`` of SendGrid's error), optionally
  ``after`` letting some requests through first;
* ``stall``: sleep ``seconds`` before answering normally (a client timeout);
* ``rate_limit``: answer 429 with the provider's rate-limit headers.

The same controls are reachable over HTTP on every emulated API::

    POST /_emulator/fail        {"status": 500, "count": 2, "code": "1902", "after": 0}
    POST /_emulator/stall       {"seconds": 5, "count": 1}
    POST /_emulator/rate-limit  {"count": 1, "reset_in": 2, "after": 0}
    POST /_emulator/latency     {"seconds": 0.2}   (every message request; 0 ends it)
    POST /_emulator/suppress    {"addresses": ["a@example.com"]}   (SparkPost)
    POST /_emulator/reset       {}
    GET  /_emulator/requests    -> what was received (with arrival and answer times)
    GET  /_emulator/concurrency -> {"in_flight": n, "max_in_flight": n} message requests
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Received:
    """One request as the emulator saw it."""

    method: str
    path: str
    auth_scheme: str  # Bearer | Basic | bare | none
    body: Any  # the parsed JSON, or None
    size: int
    status: int = 0
    message_id: str | None = None
    # Wall-clock arrival and answer (epoch seconds): tests check a sender's
    # rate and pauses against them.
    at: float = field(default_factory=time.time)
    answered_at: float = 0.0
    # The sender's address and port: one per connection, so tests can count
    # how many connections a sender opened and whether it reused them.
    peer: str = ""


@dataclass
class Fault:
    kind: str  # fail | stall | rate_limit
    count: int
    status: int = 500
    code: str | None = None
    seconds: float = 0.0
    message: str = "emulated failure"
    after: int = 0  # requests to let through before the fault starts


@dataclass
class ApiState:
    api_key: str
    received: list[Received] = field(default_factory=list)
    suppressed: set[str] = field(default_factory=set)
    # The provider's own suppression lists, as its list endpoints show them
    # (SendGrid: "bounces", "spam_reports", "unsubscribes"; SparkPost:
    # "suppression-list"): seeded by tests with ``seed_list``.
    lists: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    # Requests being answered now, and the most seen at once (a sender's
    # connection ceiling); reset by ``reset``.
    in_flight: int = 0
    max_in_flight: int = 0
    # Seconds every message request takes before its answer (``latency``).
    delay: float = 0.0
    # Called with (request body, message id) for each accepted message: the
    # emulator posts its events from there (relay.emulator.events).
    on_accepted: Callable[[Any, str], None] | None = field(default=None, repr=False)
    _closing: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    # -- the Python API ------------------------------------------------------

    def fail(
        self,
        status: int = 500,
        count: int = 1,
        *,
        code: str | None = None,
        message: str = "emulated failure",
        after: int = 0,
    ) -> None:
        """Answer ``status`` to ``count`` requests, after letting ``after`` through.

        ``code`` is SparkPost's error code, or the ``field`` of SendGrid's error.
        """
        fault = Fault("fail", count, status=status, code=code, message=message, after=after)
        self.faults.append(fault)

    def stall(self, seconds: float, count: int = 1) -> None:
        self.faults.append(Fault("stall", count, seconds=seconds))

    def latency(self, seconds: float) -> None:
        """Make every message request take ``seconds`` (0: answer at once), so a
        sender's concurrent requests overlap here as they would at a provider."""
        self.delay = max(0.0, seconds)

    def rate_limit(self, count: int = 1, reset_in: float = 1.0, *, after: int = 0) -> None:
        """Answer 429 to ``count`` requests (after letting ``after`` through), asking
        for ``reset_in`` seconds in the provider's own headers."""
        self.faults.append(Fault("rate_limit", count, status=429, seconds=reset_in, after=after))

    def suppress(self, *addresses: str) -> None:
        self.suppressed.update(a.lower() for a in addresses)

    def seed_list(self, name: str, *entries: dict[str, Any]) -> None:
        """Add entries to one of the provider's suppression lists (its JSON shape)."""
        self.lists.setdefault(name, []).extend(entries)

    def arrive(self, seen: Received) -> None:
        """A message request came in (answered with ``answered``)."""
        self.received.append(seen)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def answered(self, seen: Received, status: int) -> None:
        seen.status = status
        seen.answered_at = time.time()
        self.in_flight -= 1

    def connections(self) -> int:
        """Connections the message requests came over (distinct sender ports)."""
        return len({seen.peer for seen in self.received if seen.peer})

    def reset(self) -> None:
        self.in_flight = self.max_in_flight = 0
        self.delay = 0.0
        self.received.clear()
        self.faults.clear()
        self.suppressed.clear()
        self.lists.clear()

    def accepted(self) -> list[Any]:
        """The bodies of the messages the API accepted (2xx), in order."""
        return [r.body for r in self.received if 200 <= r.status < 300 and r.message_id]

    # -- used by the apps ----------------------------------------------------

    def _take(self) -> Fault | None:
        while self.faults and self.faults[0].count <= 0:
            self.faults.pop(0)
        if not self.faults:
            return None
        fault = self.faults[0]
        if fault.after > 0:
            fault.after -= 1
            return None
        fault.count -= 1
        return dataclasses.replace(fault)

    async def misbehave(self) -> Fault | None:
        """Apply the latency and the next fault: sleep for a stall, or return a
        failure to answer with."""
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay)
        fault = self._take()
        while fault is not None and fault.kind == "stall":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
            fault = self._take()
        return fault

    def wake(self) -> None:
        """End every stall now (the emulator is closing)."""
        self._closing.set()


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def control_routes(state: ApiState) -> list[Route]:
    """The /_emulator/* endpoints that drive ``state`` over HTTP."""

    async def fail(request: Request) -> Response:
        data = await _json_body(request)
        state.fail(
            int(data.get("status", 500)),
            int(data.get("count", 1)),
            code=data.get("code"),
            message=str(data.get("message", "emulated failure")),
            after=int(data.get("after", 0)),
        )
        return JSONResponse({"ok": True})

    async def stall(request: Request) -> Response:
        data = await _json_body(request)
        state.stall(float(data.get("seconds", 5)), int(data.get("count", 1)))
        return JSONResponse({"ok": True})

    async def rate_limit(request: Request) -> Response:
        data = await _json_body(request)
        state.rate_limit(
            int(data.get("count", 1)),
            float(data.get("reset_in", 1)),
            after=int(data.get("after", 0)),
        )
        return JSONResponse({"ok": True})

    async def latency(request: Request) -> Response:
        data = await _json_body(request)
        state.latency(float(data.get("seconds", 0)))
        return JSONResponse({"ok": True})

    async def suppress(request: Request) -> Response:
        data = await _json_body(request)
        state.suppress(*[str(a) for a in data.get("addresses", [])])
        return JSONResponse({"ok": True})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def requests(request: Request) -> Response:
        return JSONResponse([dataclasses.asdict(r) for r in state.received])

    async def concurrency(request: Request) -> Response:
        return JSONResponse({"in_flight": state.in_flight, "max_in_flight": state.max_in_flight})

    return [
        Route("/_emulator/fail", fail, methods=["POST"]),
        Route("/_emulator/stall", stall, methods=["POST"]),
        Route("/_emulator/rate-limit", rate_limit, methods=["POST"]),
        Route("/_emulator/latency", latency, methods=["POST"]),
        Route("/_emulator/suppress", suppress, methods=["POST"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/requests", requests, methods=["GET"]),
        Route("/_emulator/concurrency", concurrency, methods=["GET"]),
    ]


def auth_scheme(header: str | None) -> str:
    if not header:
        return "none"
    first = header.split(" ", 1)[0]
    return first if first in ("Bearer", "Basic") and " " in header else "bare"
