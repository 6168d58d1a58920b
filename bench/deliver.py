"""Delivery benchmark: messages per second from a full queue to the provider emulator.

For each case a fresh ``relay serve`` (delivery workers on) gets a queue of N
messages written with the spool's own ``write_batch``, routed to a provider
aimed at the emulator, which runs in a process of its own:

* ``api``: a SendGrid provider, so each message is converted to v3 JSON and
  POSTed through the shared httpx client;
* ``smtp``: a custom SMTP provider, so each message goes as received over the
  relay's pooled aiosmtplib connections to the emulator's SMTP sink.

The messages are held (due in a year) while the relay starts, then released
all at once, so start-up is not in the figures. Latency is injected by the
emulator on every API request and every DATA (0 ms and 50 ms by default).
SQLite runs in a temporary directory; PostgreSQL (RELAY_TEST_POSTGRES_URL or
``--postgres-url``; ``scripts/pg`` provides one) gets a fresh database per case.

Printed per case: delivered messages per second from the first delivery to
the last, seconds from the release until the queue is empty, relay CPU per
message and peak RSS, the emulator's and PostgreSQL's CPU per message (they
share this machine's cores), and errors (messages not delivered, and attempts
that did not deliver).

    .venv/bin/python bench/deliver.py                       # the full matrix, 3000 messages each
    scripts/pg .venv/bin/python bench/deliver.py --json     # with PostgreSQL
    .venv/bin/python bench/deliver.py --transports api --latency-ms 0 --databases sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    DeliveryStats,
    EmulatorProcess,
    PySpy,
    QueueWatch,
    RelayOptions,
    RelayServer,
    TreeMonitor,
    TreeUsage,
    add_emulated_provider,
    database_version,
    drop_postgres_database,
    fill_queue,
    format_table,
    fresh_postgres_database,
    machine_busy_seconds,
    mib,
    pid_listening_on,
    postgres_port,
    relay_revision,
    release_queue,
    seed_tenant,
    stage,
    stage_shares,
    to_jsonable,
)

KINDS = {"api": "sendgrid", "smtp": "smtp"}  # transport -> provider kind


@dataclass(frozen=True)
class Case:
    transport: str  # api | smtp
    latency_ms: int
    database: str  # sqlite | postgres

    @property
    def name(self) -> str:
        return f"{self.transport}/{self.latency_ms}ms/{self.database}"


@dataclass
class CaseResult:
    case: Case
    messages: int
    emptied: bool
    released_at: float  # epoch seconds
    emptied_at: float
    stats: DeliveryStats
    relay: TreeUsage
    emulator: TreeUsage
    database: TreeUsage | None  # PostgreSQL's server processes; None for SQLite
    emulator_counts: dict[str, int]
    fill_seconds: float
    server_exit: int | None
    skipped: str = ""
    other_cpu_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        """Messages not delivered, plus attempts that did not deliver."""
        undelivered = self.messages - self.stats.delivered
        failed_attempts = sum(
            n for key, n in self.stats.attempts.items() if not key.endswith(":delivered")
        )
        return undelivered + failed_attempts

    @property
    def empty_after(self) -> float:
        return self.emptied_at - self.released_at

    def per_message_ms(self, usage: TreeUsage | None) -> float:
        if usage is None:
            return float("nan")
        return usage.cpu_seconds * 1000 / max(self.stats.delivered, 1)

    def row(self) -> dict[str, Any]:
        first = self.stats.first_finished
        return {
            "case": self.case.name,
            "delivered": f"{self.stats.delivered}/{self.messages}",
            "rate": self.stats.rate,
            "first": (first - self.released_at) if first else float("nan"),
            "empty": self.empty_after if self.emptied else f">{self.empty_after:.0f}",
            "relay_ms": self.per_message_ms(self.relay),
            "relay_util": 100 * self.relay.cpu_seconds / self.relay.wall_seconds,
            "relay_thread": 100 * self.relay.busiest_thread_share,
            "rss": mib(self.relay.peak_rss_bytes),
            "emu_ms": self.per_message_ms(self.emulator),
            "emu_util": 100 * self.emulator.cpu_seconds / self.emulator.wall_seconds,
            "db_ms": self.per_message_ms(self.database),
            "other": 100 * max(self.other_cpu_seconds, 0.0) / self.relay.wall_seconds,
            "errors": self.errors,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "transport": self.case.transport,
            "latency_ms": self.case.latency_ms,
            "database": self.case.database,
            "messages": self.messages,
            "delivered": self.stats.delivered,
            "delivered_per_second": self.stats.rate,
            "first_delivery_after_release_s": (
                self.stats.first_finished - self.released_at if self.stats.first_finished else None
            ),
            "queue_empty": self.emptied,
            "queue_empty_after_s": self.empty_after,
            "states": self.stats.states,
            "attempts": self.stats.attempts,
            "errors": self.errors,
            "relay_cpu_seconds": self.relay.cpu_seconds,
            "relay_cpu_ms_per_message": self.per_message_ms(self.relay),
            "relay_busiest_thread_share": self.relay.busiest_thread_share,
            "relay_peak_rss_bytes": self.relay.peak_rss_bytes,
            "emulator_cpu_seconds": self.emulator.cpu_seconds,
            "emulator_counts": self.emulator_counts,
            "database_cpu_seconds": None if self.database is None else self.database.cpu_seconds,
            "other_cpu_seconds": self.other_cpu_seconds,
            "fill_seconds": self.fill_seconds,
            "server_exit_status": self.server_exit,
            "problems": self.problems,
        }


COLUMNS = [
    ("case", "transport/latency/db"),
    ("delivered", "delivered"),
    ("rate", "msg/s"),
    ("first", "1st after s"),
    ("empty", "empty after s"),
    ("relay_ms", "relay CPU ms/msg"),
    ("relay_util", "relay CPU %"),
    ("relay_thread", "busiest thread %"),
    ("rss", "relay peak RSS MiB"),
    ("emu_ms", "emu CPU ms/msg"),
    ("emu_util", "emu CPU %"),
    ("db_ms", "pg CPU ms/msg"),
    ("other", "other CPU %"),
    ("errors", "errors"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=3000, help="queued messages per case (3000)")
    p.add_argument("--size", type=int, default=2048, help="message size in bytes (2048)")
    p.add_argument("--transports", nargs="+", choices=tuple(KINDS), default=list(KINDS))
    p.add_argument("--latency-ms", type=int, nargs="+", default=[0, 50], metavar="MS")
    p.add_argument(
        "--databases", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"]
    )
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("RELAY_TEST_POSTGRES_URL", ""),
        help="a PostgreSQL server (default: $RELAY_TEST_POSTGRES_URL); a database is made per case",
    )
    p.add_argument(
        "--time-limit", type=float, default=90.0, help="seconds a case may take to empty (90)"
    )
    p.add_argument("--server-processes", type=int, default=1, help="relay serve --processes (1)")
    p.add_argument("--concurrency", type=int, help="[queue] concurrency (relay default 50)")
    p.add_argument(
        "--provider-concurrency", type=int, help="[queue] provider_concurrency (relay default 20)"
    )
    p.add_argument("--batch-size", type=int, help="[queue] batch_size (relay default 100)")
    p.add_argument(
        "--smtp-pool-size", type=int, help="the SMTP provider's smtp_pool_size (relay default 2)"
    )
    p.add_argument(
        "--max-rate", type=float, help="the provider's max_rate, messages a second (none)"
    )
    p.add_argument("--max-connections", type=int, help="the provider's max_connections (none)")
    p.add_argument("--log-level", default="INFO", help="the relay's log level (INFO)")
    p.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the relay: DIR/deliver-CASE.txt"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary var dirs")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.messages < 2 or args.size < 300:
        p.error("--messages must be at least 2 and --size at least 300")
    return args


def cases(args: argparse.Namespace) -> list[Case]:
    return [
        Case(t, ms, db) for db in args.databases for t in args.transports for ms in args.latency_ms
    ]


def relay_options(args: argparse.Namespace, database_url: str) -> RelayOptions:
    queue = {
        key: value
        for key, value in (
            ("concurrency", args.concurrency),
            ("provider_concurrency", args.provider_concurrency),
            ("batch_size", args.batch_size),
        )
        if value is not None
    }
    return RelayOptions(
        database_url=database_url,
        processes=args.server_processes,
        workers=True,
        log_level=args.log_level,
        queue=queue,
    )


@contextlib.contextmanager
def database_for(args: argparse.Namespace, case: Case) -> Iterator[str]:
    """'' (the relay's SQLite in its temp dir) or a fresh PostgreSQL database, dropped after."""
    if case.database == "sqlite":
        yield ""
        return
    url = fresh_postgres_database(args.postgres_url)
    try:
        yield url
    finally:
        drop_postgres_database(url)


def provider_extra(args: argparse.Namespace, case: Case) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if case.transport == "smtp" and args.smtp_pool_size:
        extra["smtp_pool_size"] = args.smtp_pool_size
    if args.max_rate:  # the shared token bucket's cost (relay.delivery.throttle)
        extra["max_rate"] = args.max_rate
    if args.max_connections:
        extra["max_connections"] = args.max_connections
    return extra


def run_case(args: argparse.Namespace, case: Case) -> CaseResult:
    """Emulator, relay, a held full queue, release, wait until empty, read the tables."""
    quiet = args.quiet
    with (
        database_for(args, case) as url,
        EmulatorProcess(case.latency_ms / 1000) as emulator,
        RelayServer(relay_options(args, url), keep=args.keep) as server,
    ):
        with stage(f"{case.name}: seeding and filling the queue ({args.messages})", quiet):
            tenant = seed_tenant(server.config_path)
            extra = provider_extra(args, case)
            provider = add_emulated_provider(
                server.config_path, tenant, emulator, KINDS[case.transport], **extra
            )
            filled = fill_queue(server.database_url, tenant, provider, args.messages, args.size)
        with stage(f"{case.name}: starting relay serve ({server.var_dir})", quiet):
            server.start()
        watch = QueueWatch(server.database_url, tenant.account)
        try:
            result = deliver(args, case, server, emulator, watch, url)
        finally:
            watch.close()
        result.fill_seconds = filled
        result.server_exit = server.stop()
        result.emulator_counts = emulator.stop()
    result.problems = check(result)
    return result


def deliver(
    args: argparse.Namespace,
    case: Case,
    server: RelayServer,
    emulator: EmulatorProcess,
    watch: QueueWatch,
    database_url: str,
) -> CaseResult:
    monitors = [TreeMonitor(server.pid), TreeMonitor(emulator.pid)]
    pg_pid = pid_listening_on(postgres_port(database_url)) if database_url else None
    if pg_pid is not None:
        monitors.append(TreeMonitor(pg_pid))
    profiler = start_profiler(args.profile, server.pid, case)
    for monitor in monitors:
        monitor.start()
    busy0 = machine_busy_seconds()
    try:
        with stage(f"{case.name}: delivering", args.quiet):
            released = release_queue(server.database_url, watch.account)
            emptied, emptied_at = watch.wait_empty(args.time_limit)
    finally:
        usage = [m.stop() for m in monitors]
        busy = machine_busy_seconds() - busy0
        if profiler is not None:
            profiler.stop()
    result = CaseResult(
        case,
        args.messages,
        emptied,
        released,
        emptied_at,
        watch.stats(),
        usage[0],
        usage[1],
        usage[2] if pg_pid is not None else None,
        {},
        0.0,
        None,
    )
    # Whatever else used the machine meanwhile (this script's polling, other jobs).
    result.other_cpu_seconds = busy - sum(u.cpu_seconds for u in usage)
    return result


def start_profiler(directory: Path | None, pid: int, case: Case) -> PySpy | None:
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    name = case.name.replace("/", "-")
    # GIL holders only: one process's Python work is what the GIL serialises.
    profiler = PySpy(pid, directory / f"deliver-{name}.txt", rate=250, gil_only=True)
    profiler.cmd.append("--threads")
    profiler.start()
    time.sleep(1)  # let py-spy attach before the release
    return profiler


def check(result: CaseResult) -> list[str]:
    """What makes a case's figures untrustworthy (a slow case that timed out is not)."""
    problems = []
    if result.stats.delivered == 0:
        problems.append(f"nothing was delivered: states {result.stats.states}")
    wrong = {s: n for s, n in result.stats.states.items() if s in ("failed", "paused")}
    if wrong:
        problems.append(f"messages in unexpected states: {wrong}")
    if result.server_exit not in (0, None):
        problems.append(f"relay exited with status {result.server_exit}")
    return problems


def skipped(case: Case, why: str) -> CaseResult:
    idle = TreeUsage(1.0, 0.0, 0.0, 0.0, 0, 0, 0)
    empty = DeliveryStats({}, {}, None, None, None)
    return CaseResult(case, 0, False, 0.0, 0.0, empty, idle, idle, None, {}, 0.0, None, why)


def describe(args: argparse.Namespace, versions: dict[str, str]) -> list[str]:
    knobs = {
        "concurrency": args.concurrency,
        "provider_concurrency": args.provider_concurrency,
        "batch_size": args.batch_size,
        "smtp_pool_size": args.smtp_pool_size,
    }
    changed = ", ".join(f"{k}={v}" for k, v in knobs.items() if v is not None) or "none"
    return [
        f"{args.messages} queued messages of {args.size} bytes, 1 recipient each, per case; "
        f"relay serve --processes {args.server_processes}, log level {args.log_level}; "
        f"queue/provider settings changed from the relay's defaults: {changed}",
        "emulator in its own process (uvloop); latency added to every API request and DATA; "
        "msg/s counts from the first delivery to the last (finished_at in the messages table); "
        "'other CPU %' is the rest of the machine meanwhile (100 = one core): other jobs",
        f"machine: {platform.python_implementation()} {platform.python_version()}, "
        f"{len(os.sched_getaffinity(0))} CPUs shared by relay, emulator and PostgreSQL; "
        + "; ".join(f"{k}: {v}" for k, v in versions.items()),
    ]


def versions(args: argparse.Namespace) -> dict[str, str]:
    out = {"relay": relay_revision()}
    if "postgres" in args.databases and args.postgres_url:
        with contextlib.suppress(Exception):
            out["postgres"] = database_version(args.postgres_url)
    out["sqlite"] = f"SQLite {sqlite3.sqlite_version}"
    return out


def report(args: argparse.Namespace, results: list[CaseResult]) -> None:
    info = versions(args)
    if args.json:
        doc = {
            "settings": vars(args),
            "setup": describe(args, info),
            "cases": [r.as_json() | {"skipped": r.skipped} for r in results],
        }
        print(json.dumps(to_jsonable(doc), indent=2, default=str))
        return
    print("\n".join(describe(args, info)))
    print()
    ran = [r for r in results if not r.skipped]
    print(format_table([r.row() for r in ran], COLUMNS))
    for r in results:
        if r.skipped:
            print(f"{r.case.name}: skipped: {r.skipped}")
        elif not r.emptied:
            print(f"{r.case.name}: queue not empty after {args.time_limit:.0f}s: {r.stats.states}")
        if r.stats.attempts and any(not k.endswith(":delivered") for k in r.stats.attempts):
            print(f"{r.case.name}: attempts {r.stats.attempts}")
    if args.profile:
        print_profiles(args.profile, ran)


# See common.stage_shares: the innermost frame with a marker decides.
# First, costs hidden inside httpcore calls, whatever they call in turn.
HTTPCORE_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("httpcore: failed 'import sniffio' per request (importlib)", ("(<frozen importlib",)),
    ("httpcore: pool scan, has_expired per pooled connection", ("has_expired",)),
]
DELIVERY_STAGES: list[tuple[str, tuple[str, ...]]] = [
    (
        "HTTP client: httpx/httpcore/h11/anyio, relay/providers/http.py and aio.py",
        (
            "(httpx/",
            "(httpcore/",
            "(h11/",
            "(anyio/",
            "(relay/providers/http.py)",
            "(relay/providers/aio.py)",
        ),
    ),
    (
        "SendGrid: MIME to v3 JSON (relay/providers/sendgrid_json.py)",
        ("(relay/providers/sendgrid_json.py)",),
    ),
    ("SendGrid provider: request and response", ("(relay/providers/sendgrid.py)",)),
    ("SMTP upstream: aiosmtplib + relay/providers/smtp.py", ("(aiosmtplib/", "providers/smtp.py")),
    ("claim + load_claimed: SQL (to_thread)", ("claim (relay/queue/store.py)",)),
    (
        "record outcome: UPDATE, attempts, usage rows (writer thread)",
        (
            "record (relay/queue/store.py)",
            "record_many",
            "_write_recipients",
            "write_outcome",
        ),
    ),
    ("provider pool, chain, worker", ("(relay/delivery/", "(relay/providers/")),
    ("logging: one INFO line per message", ("(logging/",)),
    ("metrics: Prometheus counters", ("(prometheus_client/", "count_outcome")),
    (
        "thread hand-offs: to_thread, futures",
        ("(concurrent/", "(asyncio/futures.py)", "(asyncio/threads.py)", "(threading.py)"),
    ),
    ("uvloop C: epoll, socket I/O, callbacks", ("(asyncio/runners.py)", "(uvloop/")),
    ("asyncio: tasks, streams, locks", ("(asyncio/",)),
]
FALLBACK_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("SQLAlchemy, caller not sampled", ("(sqlalchemy/",)),
    ("email package, caller not sampled", ("(email/",)),
]


def print_profiles(directory: Path, results: list[CaseResult]) -> None:
    """Where the relay's GIL time went in each case, by delivery stage."""
    for r in results:
        path = directory / f"deliver-{r.case.name.replace('/', '-')}.txt"
        if not path.exists():
            continue
        tables = (HTTPCORE_STAGES, DELIVERY_STAGES, FALLBACK_STAGES)
        shares, threads, total = stage_shares(path, *tables)
        print(f"\n{r.case.name}: {total} relay samples holding the GIL ({path})")
        print("  by thread: " + ", ".join(f"{k} {v:.0f}%" for k, v in sorted(threads.items())))
        for name, share in shares:
            print(f"  {share:5.1f}%  {name}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for case in cases(args):
        if case.database == "postgres" and not args.postgres_url:
            why = "no RELAY_TEST_POSTGRES_URL (run under scripts/pg, or pass --postgres-url)"
            results.append(skipped(case, why))
            continue
        results.append(run_case(args, case))
    report(args, results)
    failed = [(r.case.name, p) for r in results for p in r.problems]
    for name, problem in failed:
        print(f"FAILED ({name}): {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
