"""Crash benchmark: SIGKILL a delivering relay again and again under SMTP load.

A relay (``relay serve``, delivery workers on, the default queue settings:
300 s lease, default ``[server] node_id``) delivers to a SendGrid provider
aimed at the project's emulator, which answers every API request after
``--latency-ms``. Client threads submit mail over SMTP all along, and note
every message that got its 250 (acknowledged). The relay is killed with
SIGKILL ``--kills`` times, each time after a random 1.5-3 s of work, and
started again at once. Then the load stops and the queue drains.

Printed, per kill: the deliveries in flight (the claims the killed relay
held, read from the database before the restart), of those the API requests
the emulator had not answered yet, the messages acknowledged before the
kill, and the seconds from the restart (the relay greeting again) until
every one of them had reached the emulator. Then the totals: acknowledged,
delivered, lost (acknowledged and never delivered: must be 0), and
duplicates (messages the emulator accepted more than once: at most the
deliveries in flight at the kills, whose outcome the killed relay never
wrote).

Everything is on 127.0.0.1 and bounded in count and time. SQLite runs in a
temporary directory; PostgreSQL (``--postgres-url`` or RELAY_TEST_POSTGRES_URL)
gets a fresh database.

    .venv/bin/python bench/crashes.py                          # SQLite and, if set, PostgreSQL
    .venv/bin/python bench/crashes.py --databases sqlite --kills 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import smtplib
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    EMULATOR_API_KEY,
    LOOPBACK,
    RelayOptions,
    RelayServer,
    Tenant,
    _add_latency,
    add_emulated_provider,
    drop_postgres_database,
    fresh_postgres_database,
    seed_tenant,
)


class EmulatorThread:
    """The emulator on a thread of this process, so its requests can be inspected."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.emulator: Any = None
        self.ports: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        from relay.emulator import serve_emulator

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.emulator = await serve_emulator(api_key=EMULATOR_API_KEY)
        # A killed relay leaves requests half sent: the emulator's server logs each.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        _add_latency(self.emulator, self.latency)
        self.ports = {
            "sendgrid": self.emulator.sendgrid_port,
            "smtp": self.emulator.smtp_port,
        }
        self._ready.set()
        await self._stop.wait()
        await self.emulator.aclose()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the emulator did not start")

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def provider_options(self, kind: str) -> dict[str, Any]:
        return {
            "smtp_host": LOOPBACK,
            "smtp_port": self.ports["smtp"],
            "smtp_tls": "none",
            "smtp_user": "apikey",
            "api_url": f"http://{LOOPBACK}:{self.ports['sendgrid']}",
        }

    def in_flight(self) -> int:
        """API requests received and not answered yet."""
        return sum(1 for r in list(self.emulator.sendgrid.received) if r.status == 0)

    def accepted(self) -> Counter[str]:
        """Queue id -> how many times the API accepted it."""
        out: Counter[str] = Counter()
        for r in list(self.emulator.sendgrid.received):
            if 200 <= r.status < 300 and r.message_id and r.body:
                for p in r.body.get("personalizations", []):
                    out[str(p.get("custom_args", {}).get("relay_message_id"))] += 1
        return out


@dataclass
class Load:
    """SMTP clients submitting mail all along, reconnecting while the relay is down."""

    port: int
    tenant: Tenant
    clients: int = 2
    pause: float = 0.02
    acked: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def _client(self, index: int) -> None:
        t = self.tenant
        body = (
            f"From: <{t.sender}>\r\nTo: <{t.recipient}>\r\nSubject: crash test {index}\r\n"
            "\r\nHello.\r\n"
        ).encode()
        while not self._stop.is_set():
            try:
                with smtplib.SMTP(LOOPBACK, self.port, timeout=10) as client:
                    client.login(t.username, t.password)
                    while not self._stop.is_set():
                        client.mail(t.sender)
                        client.rcpt(t.recipient)
                        code, reply = client.data(body)
                        if code == 250:
                            self.acked.append(reply.decode().rsplit(" ", 1)[1])
                        time.sleep(self.pause)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the relay is down (killed): try again


def claims_held(url: str) -> int:
    """Messages still claimed (after a kill: what the killed relay held)."""
    from sqlalchemy import func, select

    from relay.store.engine import make_engine
    from relay.store.models import Message

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).select_from(Message).where(Message.locked_by.is_not(None))
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


@dataclass
class Kill:
    in_flight: int  # claims held by the killed relay
    unanswered: int  # of those, API requests the emulator had not answered yet
    acked_before: frozenset[str]
    restarted: float = 0.0
    recovered: float | None = None  # seconds from the restart until all were delivered


def run_case(database: str, url: str, kills: int, latency: float, limit: float) -> dict[str, Any]:
    started = time.monotonic()
    emulator = EmulatorThread(latency)
    emulator.start()
    options = RelayOptions(
        database_url=url, workers=True, argon2_time_cost=1, argon2_memory_kib=1024
    )
    server = RelayServer(options)
    load: Load | None = None
    history: list[Kill] = []
    try:
        tenant = seed_tenant(server.config_path)
        add_emulated_provider(server.config_path, tenant, emulator, "sendgrid")  # type: ignore[arg-type]
        server.start()
        load = Load(server.ports["alt"], tenant)
        load.start()
        rng = random.Random(10)
        for _ in range(kills):
            if time.monotonic() - started > limit:
                break
            time.sleep(rng.uniform(1.5, 3.0))
            acked_before = frozenset(load.acked)
            assert server.proc is not None
            server.proc.kill()  # SIGKILL
            server.proc.wait(10)
            kill = Kill(claims_held(server.database_url), emulator.in_flight(), acked_before)
            server.start()
            kill.restarted = time.monotonic()
            history.append(kill)
            _note_recoveries(history, emulator)
        load.stop()
        acked = set(load.acked)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _note_recoveries(history, emulator)
            if acked <= set(emulator.accepted()):
                break
            time.sleep(0.1)
        _note_recoveries(history, emulator)
    finally:
        if load is not None:
            load.stop()
        server.stop()
        server.__exit__()
        emulator.stop()
    accepted = emulator.accepted()
    delivered = set(accepted) & acked
    return {
        "database": database,
        "kills": len(history),
        "rows": history,
        "acknowledged": len(acked),
        "delivered": len(delivered),
        "lost": len(acked - delivered),
        "duplicates": sum(n - 1 for n in accepted.values() if n > 1),
        "in_flight": sum(k.in_flight for k in history),
        "max_recovery": max((k.recovered or float("inf") for k in history), default=0.0),
        "seconds": time.monotonic() - started,
    }


def _note_recoveries(history: list[Kill], emulator: EmulatorThread) -> None:
    now = time.monotonic()
    done = set(emulator.accepted())
    for kill in history:
        if kill.recovered is None and kill.acked_before <= done:
            kill.recovered = now - kill.restarted


def report(result: dict[str, Any]) -> None:
    print(f"\n== {result['database']}: {result['kills']} SIGKILLs in {result['seconds']:.0f} s")
    print(
        f"{'kill':>4} {'in flight':>9} {'unanswered':>10} {'acked before':>12} "
        f"{'all delivered after restart':>28}"
    )
    for i, kill in enumerate(result["rows"], 1):
        rec = "never" if kill.recovered is None else f"{kill.recovered:.1f} s"
        print(
            f"{i:>4} {kill.in_flight:>9} {kill.unanswered:>10} {len(kill.acked_before):>12} "
            f"{rec:>28}"
        )
    print(
        f"acknowledged {result['acknowledged']}, delivered {result['delivered']}, "
        f"lost {result['lost']}; duplicates {result['duplicates']} "
        f"(deliveries in flight at the kills: {result['in_flight']}); "
        f"slowest recovery {result['max_recovery']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=os.environ.get("RELAY_TEST_POSTGRES_URL", ""))
    parser.add_argument("--max-seconds", type=float, default=600.0, help="per database")
    args = parser.parse_args(argv)
    kills = max(1, min(args.kills, 100))
    failed = False
    for database in args.databases.split(","):
        if database == "postgres" and not args.postgres_url:
            print("postgres: skipped (no --postgres-url or RELAY_TEST_POSTGRES_URL)")
            continue
        url = fresh_postgres_database(args.postgres_url) if database == "postgres" else ""
        try:
            result = run_case(database, url, kills, args.latency_ms / 1000, args.max_seconds)
        finally:
            if url:
                with contextlib.suppress(Exception):
                    drop_postgres_database(url)
        report(result)
        failed |= result["lost"] > 0 or result["max_recovery"] > 30
        failed |= result["duplicates"] > result["in_flight"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
