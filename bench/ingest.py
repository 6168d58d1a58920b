"""Ingest benchmark: many SMTP clients submitting to ``relay serve``.

Each client session does EHLO, STARTTLS, EHLO, AUTH PLAIN, then MAIL, RCPT,
DATA for K messages. Two modes by default: one message per connection (the
website that connects per mail: TLS and AUTH on every message) and 100 per
connection (a campaign engine holding its session). For each mode a fresh
relay starts on free loopback ports with its own temporary SQLite database,
delivery workers off so that only acceptance is measured.

Printed per mode: accepted messages per second, the time from the final
"." to the 250 reply (p50/p99/max), server CPU per message and its peak RSS,
client CPU, and errors. Afterwards the relay's database must hold exactly as
many new messages as the clients got 250 replies.

    .venv/bin/python bench/ingest.py                     # both modes, 5000 messages each
    .venv/bin/python bench/ingest.py --per-connection 1 --messages 2000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    LOOPBACK,
    LoadResult,
    LoadSpec,
    PySpy,
    RelayOptions,
    RelayServer,
    Tenant,
    TreeMonitor,
    TreeUsage,
    count_messages,
    format_table,
    histogram_mean,
    hot_spots,
    mib,
    run_load,
    seed_tenant,
    stage,
    to_jsonable,
    warm_up,
)

# Below this share of 250 replies the figures describe failures, not throughput.
MIN_SUCCESS = 0.5


@dataclass
class ModeResult:
    """One mode's figures, ready for the table and the JSON."""

    per_connection: int
    load: LoadResult
    server: TreeUsage
    db_before: dict[str, int]
    db_after: dict[str, int]
    server_accept_mean_ms: float | None
    server_exit: int | None
    problems: list[str] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return sum(self.db_after.values()) - sum(self.db_before.values())

    def row(self) -> dict[str, Any]:
        load, n = self.load, max(self.load.accepted, 1)
        lat = load.latency
        return {
            "mode": f"{self.per_connection}/conn",
            "messages": f"{load.accepted}/{load.spec.messages}",
            "conc": load.spec.concurrency,
            "rate": load.rate,
            "p50": lat.p50,
            "p99": lat.p99,
            "max": lat.max,
            "srv_ms": self.server.cpu_seconds * 1000 / n,
            "srv_util": 100 * self.server.cpu_seconds / self.server.wall_seconds,
            "srv_thread": 100 * self.server.busiest_thread_share,
            "rss": mib(self.server.peak_rss_bytes),
            "cli_ms": load.client_cpu_seconds * 1000 / n,
            "cli_busiest": 100 * load.client_busiest,
            "errors": load.errors,
            "db": "ok" if self.queued == load.accepted else f"{self.queued}!",
        }

    def as_json(self) -> dict[str, Any]:
        load = self.load
        return {
            "per_connection": self.per_connection,
            "messages": load.spec.messages,
            "attempted": load.attempted,
            "accepted": load.accepted,
            "concurrency": load.spec.concurrency,
            "size": load.spec.size,
            "client_processes": load.processes,
            "wall_seconds": load.wall_seconds,
            "accepted_per_second": load.rate,
            "accept_latency_ms": to_jsonable(load.latency),
            "session_setup_ms": to_jsonable(load.setup),
            "server_accept_mean_ms": self.server_accept_mean_ms,
            "server_cpu_seconds": self.server.cpu_seconds,
            "server_user_seconds": self.server.user_seconds,
            "server_system_seconds": self.server.system_seconds,
            "server_busiest_thread_share": self.server.busiest_thread_share,
            "server_cpu_ms_per_message": self.server.cpu_seconds * 1000 / max(load.accepted, 1),
            "server_peak_rss_bytes": self.server.peak_rss_bytes,
            "server_peak_hwm_bytes": self.server.peak_hwm_bytes,
            "server_processes_seen": self.server.processes,
            "client_cpu_seconds": load.client_cpu_seconds,
            "client_busiest_share": load.client_busiest,
            "errors": load.errors,
            "error_kinds": dict(load.error_kinds),
            "timed_out": any(w.timed_out for w in load.workers),
            "db_new_messages": self.queued,
            "db_states_after": self.db_after,
            "server_exit_status": self.server_exit,
            "problems": self.problems,
        }


COLUMNS = [
    ("mode", "mode"),
    ("messages", "accepted"),
    ("conc", "conc"),
    ("rate", "msg/s"),
    ("p50", "p50 ms"),
    ("p99", "p99 ms"),
    ("max", "max ms"),
    ("srv_ms", "srv CPU ms/msg"),
    ("srv_util", "srv CPU %"),
    ("srv_thread", "srv busiest thread %"),
    ("rss", "srv peak RSS MiB"),
    ("cli_ms", "cli CPU ms/msg"),
    ("cli_busiest", "busiest cli %"),
    ("errors", "errors"),
    ("db", "db count"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=5000, help="messages per mode (5000)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent sessions (50)")
    p.add_argument(
        "--per-connection",
        type=int,
        nargs="+",
        default=[1, 100],
        metavar="K",
        help="messages per connection; one mode per value (1 100)",
    )
    p.add_argument("--size", type=int, default=2048, help="message size in bytes (2048)")
    p.add_argument("--processes", type=int, default=2, help="client processes (2)")
    p.add_argument("--server-processes", type=int, default=1, help="relay serve --processes (1)")
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no STARTTLS: AUTH in clear on a listener that allows it",
    )
    p.add_argument(
        "--database-url", default="", help="relay database (default: SQLite in a temp dir)"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="seconds per mode after which no new message starts (60)",
    )
    p.add_argument(
        "--client",
        choices=("raw", "aiosmtplib"),
        default="raw",
        help="raw: a minimal asyncio SMTP client (default, cheaper); aiosmtplib",
    )
    p.add_argument(
        "--workers", action="store_true", help="run delivery workers too (outbox provider)"
    )
    p.add_argument("--log-level", default="INFO", help="the relay's log level (INFO)")
    p.add_argument(
        "--fast-argon2",
        action="store_true",
        help="lower the argon2 cost (t=1, 8 MiB); said so in the output",
    )
    p.add_argument("--warmup", type=int, default=8, help="warm-up sessions per server process")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the relay during each mode: DIR/ingest-K.txt (collapsed stacks)",
    )
    p.add_argument(
        "--limits",
        action="store_true",
        help="give the agency, account and credential every sending limit, too high to refuse "
        "anything: measures what checking them costs",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary var dirs")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    for name in ("messages", "concurrency", "processes", "server_processes", "size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.per_connection) < 1:
        p.error("--per-connection must be at least 1")
    return args


def relay_options(args: argparse.Namespace) -> RelayOptions:
    return RelayOptions(
        database_url=args.database_url,
        processes=args.server_processes,
        workers=args.workers,
        log_level=args.log_level,
        argon2_time_cost=1 if args.fast_argon2 else None,
        argon2_memory_kib=8192 if args.fast_argon2 else None,
    )


def load_spec(args: argparse.Namespace, server: RelayServer, tenant: Tenant, k: int) -> LoadSpec:
    return LoadSpec(
        host=LOOPBACK,
        port=server.ports["alt" if args.plaintext else "submission"],
        username=tenant.username,
        password=tenant.password,
        sender=tenant.sender,
        recipient=tenant.recipient,
        messages=args.messages,
        concurrency=args.concurrency,
        per_connection=k,
        size=args.size,
        starttls=not args.plaintext,
        client=args.client,
        time_limit=args.time_limit,
    )


def start_profiler(directory: Path | None, pid: int, k: int) -> PySpy | None:
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    profiler = PySpy(pid, directory / f"ingest-{k}.txt", gil_only=True)
    profiler.start()
    time.sleep(1)  # let py-spy attach before the load starts
    return profiler


def accept_mean_ms(server: RelayServer) -> float | None:
    """The relay's own DATA-handling time (first process only), for comparison."""
    try:
        total, count = histogram_mean(server.metrics(), "relay_accept_duration_seconds")
    except OSError:
        return None
    return 1000 * total / count if count else None


def run_mode(args: argparse.Namespace, k: int) -> ModeResult:
    """A fresh relay, a tenant, a warm-up, the measured load, then the database count."""
    with RelayServer(relay_options(args), keep=args.keep) as server:
        spec, tenant = prepare(args, server, k)
        before = count_messages(server.database_url, tenant.account)
        load, usage = measure(args, server, spec)
        accept_ms = accept_mean_ms(server)
        status = server.stop()
        after = count_messages(server.database_url, tenant.account)
        result = ModeResult(k, load, usage, dict(before), dict(after), accept_ms, status)
        result.problems = check(result, server)
    return result


def prepare(args: argparse.Namespace, server: RelayServer, k: int) -> tuple[LoadSpec, Tenant]:
    quiet = args.quiet
    with stage(f"{k}/conn: seeding a tenant", quiet):
        tenant = seed_tenant(server.config_path)
    if args.limits:
        with stage(f"{k}/conn: setting limits", quiet):
            set_limits(server.config_path, tenant)
    with stage(f"{k}/conn: starting relay serve ({server.var_dir})", quiet):
        server.start()
    spec = load_spec(args, server, tenant, k)
    with stage(f"{k}/conn: warm-up", quiet):
        warm = warm_up(spec, args.warmup * args.server_processes)
    if warm.errors or set(warm.replies) - {"250"}:
        raise SystemExit(
            f"warm-up failed: replies {dict(warm.replies)} errors {dict(warm.errors)}\n"
            f"relay log:\n{server.log_tail()}"
        )
    return spec, tenant


def set_limits(config_path: Path, tenant: Tenant) -> None:
    """Every limit on the tenant's agency, account and credential, none ever reached."""
    from sqlalchemy import text

    from relay.core.settings import load_settings
    from relay.service import limits
    from relay.store.engine import make_engine

    settings = load_settings(config_path, env={})
    engine = make_engine(settings.database.url)
    high = limits.parse_changes(
        ["100000000/min", "100000000/hour"], ["100000000/hour", "100000000/day"], "100000"
    )
    try:
        with engine.connect() as conn:
            parent = conn.execute(
                text(
                    "SELECT p.name FROM accounts a JOIN accounts p ON p.id = a.parent_id "
                    "WHERE a.name = :name"
                ),
                {"name": tenant.account},
            ).scalar_one()
        limits.set_account_limits(engine, parent, high)
        limits.set_account_limits(engine, tenant.account, high)
        limits.set_credential_limits(engine, tenant.username, high)
    finally:
        engine.dispose()


def measure(
    args: argparse.Namespace, server: RelayServer, spec: LoadSpec
) -> tuple[LoadResult, TreeUsage]:
    k = spec.per_connection
    monitor = TreeMonitor(server.pid)
    profiler = start_profiler(args.profile, server.pid, k)
    try:
        with stage(f"{k}/conn: {spec.messages} messages, {spec.concurrency} sessions", args.quiet):
            load = run_load(spec, args.processes, on_start=monitor.start)
    finally:
        usage = monitor.stop()
        if profiler is not None:
            profiler.stop()
    return load, usage


def check(result: ModeResult, server: RelayServer) -> list[str]:
    """What makes the figures untrustworthy; any of these fails the run."""
    load, problems = result.load, []
    # Judged against what was tried: a run cut short by --time-limit is not a failure.
    if load.attempted == 0 or load.accepted < MIN_SUCCESS * load.attempted:
        kinds = ", ".join(f"{k}: {n}" for k, n in load.error_kinds.most_common(5))
        problems.append(
            f"only {load.accepted} of {load.attempted} messages got 250 ({kinds})\n"
            f"relay log:\n{server.log_tail()}"
        )
    if result.queued != load.accepted:
        problems.append(
            f"database has {result.queued} new messages but clients got {load.accepted} x 250"
        )
    wrong = {s: n for s, n in result.db_after.items() if s not in ("queued", "delivered")}
    if wrong:
        problems.append(f"messages in unexpected states (seeding wrong?): {wrong}")
    if result.server_exit not in (0, None):
        problems.append(f"relay exited with status {result.server_exit}")
    return problems


def describe(args: argparse.Namespace) -> list[str]:
    argon = "t=1 m=8 MiB (LOWERED by --fast-argon2)" if args.fast_argon2 else "relay default"
    return [
        f"relay serve --processes {args.server_processes}; "
        f"database {_database(args.database_url)}; "
        f"delivery workers {'on' if args.workers else 'off'}; log level {args.log_level}; "
        f"sending limits {'set (never reached)' if args.limits else 'none'}",
        f"client: {args.client}, {args.processes} process(es) on uvloop; "
        f"{'plaintext AUTH' if args.plaintext else 'STARTTLS then AUTH PLAIN'}; "
        f"{args.size}-byte messages, 1 recipient; argon2 cost: {argon}; "
        f"login cache warmed ({args.warmup} sessions per server process) before timing",
        f"machine: {platform.python_implementation()} {platform.python_version()}, "
        f"{_cpus()} CPUs (clients and server share them)",
    ]


def _database(url: str) -> str:
    if not url:
        return "SQLite (WAL, synchronous=FULL) in a temp dir"
    return f"{url.split('@')[-1]} (its server's CPU is not in the figures)"


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def report(args: argparse.Namespace, results: list[ModeResult]) -> None:
    if args.json:
        doc = {
            "settings": vars(args),
            "setup": describe(args),
            "modes": [r.as_json() for r in results],
        }
        print(json.dumps(doc, indent=2, default=str))
        return
    print("\n".join(describe(args)))
    print()
    print(format_table([r.row() for r in results], COLUMNS))
    print()
    for r in results:
        setup, mode = r.load.setup, f"{r.per_connection}/conn"
        extra = f"session setup (connect..235) p50 {setup.p50:.1f} ms p99 {setup.p99:.1f} ms"
        if r.server_accept_mean_ms is not None:
            extra += f"; relay's own DATA handling mean {r.server_accept_mean_ms:.2f} ms"
        print(f"{mode}: {extra}; wall {r.load.wall_seconds:.1f} s")
        srv = r.server
        print(
            f"{mode}: server CPU {srv.user_seconds:.1f} s user + {srv.system_seconds:.1f} s "
            f"system over {srv.processes} process(es); client CPU "
            f"{r.load.client_cpu_seconds:.1f} s over {r.load.processes} process(es)"
        )
        if r.load.attempted < r.load.spec.messages:
            print(
                f"{mode}: time limit reached: {r.load.attempted} of {r.load.spec.messages} "
                "messages attempted"
            )
        if r.load.error_kinds:
            print(f"{mode}: errors by kind: {dict(r.load.error_kinds)}")
        if r.load.client_busiest > 0.9:
            print(f"{mode}: WARNING a client process was >90% busy: the client may limit this")
    if args.profile:
        print_profiles(args.profile, [r.per_connection for r in results])


# Entry points that every relay sample passes through: they say nothing.
_ENTRY = ("relay/cli/", "relay/server.py", "<module> (relay)", "RelaySMTP._handle_client")


def print_profiles(directory: Path, modes: list[int]) -> None:
    """Where the relay's GIL-holding time went: our code and aiosmtpd, then leaf frames."""
    for k in modes:
        path = directory / f"ingest-{k}.txt"
        if not path.exists():
            continue
        spots = hot_spots(path, top=10_000)
        ours = [s for s in spots if _ours(s[0])]
        print(f"\n{k}/conn: relay samples holding the GIL ({path}); % inclusive, % self")
        for name, incl, own in ours[:12]:
            print(f"  {incl:5.1f} {own:5.1f}  {name[:100]}")
        print(f"{k}/conn: hottest leaf frames, % self")
        for name, _, own in sorted(spots, key=lambda s: -s[2])[:10]:
            print(f"  {own:5.1f}  {name[:100]}")


def _ours(name: str) -> bool:
    mine = "(relay/" in name or "(aiosmtpd/" in name
    return mine and not any(e in name for e in _ENTRY)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = [run_mode(args, k) for k in args.per_connection]
    report(args, results)
    failed = [(r.per_connection, p) for r in results for p in r.problems]
    for k, problem in failed:
        print(f"FAILED ({k}/conn): {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
