"""Relay beside Postfix and the bare aiosmtpd floor, on this machine, in one run.

Every system gets the same client (bench/common.py's raw asyncio SMTP client,
several processes on uvloop), the same messages and the same concurrency:

* ``floor``: bench/floor.py, bare aiosmtpd that accepts and discards (no AUTH,
  no TLS, no storage), uvloop, as many processes as the relay;
* ``postfix``: Debian's Postfix (apt-get installs it when missing, no service
  started), its own config and queue in a temporary directory, listening on
  127.0.0.1 only, relaying everything to an SMTP sink (a second floor);
* ``relay-starttls``: STARTTLS, AUTH PLAIN, durable commit with usage rows
  (delivery workers off: acceptance alone);
* ``relay-plain``: the same with AUTH in clear on a loopback listener that
  allows it;
* ``relay-e2e-api`` / ``relay-e2e-smtp``: STARTTLS ingest with delivery
  workers on, to the provider emulator by its SendGrid API or its SMTP sink;
  also delivered messages per second and seconds until the queue is empty;
* ``relay-e2e-api-200ms``: the same by API, the emulator answering every
  request after ``--latency-ms`` (200: a real API's round trip); target cell only;
* ``relay-e2e-sustained``: the same by API, fed as fast as the relay accepts
  for ``--sustain-seconds`` (60), then the seconds until its queue is empty;
  target cell only, once per run (after the rounds).

Cells: message size (2 KB, 100 KB) x concurrency (50, 500) x mode (one
persistent session for many messages, one message per session). Each cell
runs on a fresh server for ``--time-limit`` seconds. The systems run
interleaved, cell by cell (floor, Postfix, Relay, Relay end to end, then the
next cell), and the whole set ``--rounds`` times (3): a host that slows down
halfway slows every system alike. Each figure and each ratio (computed within
a round, then over the rounds) is reported as its median and its spread
(min-max). Then the idle test:
``--idle`` sessions opened and held after EHLO, memory per connection, and a
NOOP on each one (spread over a few seconds) answered within a second.

Targets (2 KB, 50 sessions, persistent; issue 15) are printed met/missed from
the medians of the same run.
The table goes to bench/RESULTS.md with the date, the machine and versions.
py-spy samples the relay during the target cell; the stages are printed.

    .venv/bin/python bench/compare.py               # everything, three rounds: ~25 minutes
    .venv/bin/python bench/compare.py --quick       # the target cells, three rounds: ~5 minutes
    .venv/bin/python bench/compare.py --json --no-results --systems floor relay-plain ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    LOOPBACK,
    EmulatorProcess,
    LoadResult,
    LoadSpec,
    MemoryMonitor,
    PySpy,
    QueueWatch,
    RelayOptions,
    RelayServer,
    Summary,
    Tenant,
    TreeMonitor,
    TreeUsage,
    add_emulated_provider,
    count_messages,
    database_version,
    format_table,
    free_port,
    histogram_mean,
    hot_spots,
    listening_sockets,
    machine_busy_seconds,
    mib,
    process_tree,
    raise_fd_limit,
    relay_revision,
    run_load,
    seed_tenant,
    split,
    stage,
    stage_shares,
    to_jsonable,
    tree_pss_bytes,
    warm_up,
)

BENCH = Path(__file__).resolve().parent
SYSTEMS = (
    "floor",
    "postfix",
    "relay-starttls",
    "relay-plain",
    "relay-e2e-api",
    "relay-e2e-smtp",
    "relay-e2e-api-200ms",
    "relay-e2e-sustained",
)
# Systems measured on the target cell only (their question is about that cell).
TARGET_ONLY = ("relay-e2e-api-200ms", "relay-e2e-sustained")
ONCE = ("relay-e2e-sustained",)  # a minute or more: once per run, after the rounds
TARGET = (2048, 50, "persistent")  # size, concurrency, mode of the target ratios
PERSISTENT_MESSAGES = 1000  # messages per session in "persistent" mode (bounded by time)
GIB = 1024**3
OP_TIMEOUT = 10.0  # seconds for one reply or TLS handshake in the load client
GREETING_TIMEOUT = 5.0  # seconds from connect to the 220 (see LoadSpec.greeting_timeout)

# -- cells and results ----------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    size: int
    concurrency: int
    mode: str  # persistent | per-session

    @property
    def per_connection(self) -> int:
        return PERSISTENT_MESSAGES if self.mode == "persistent" else 1

    @property
    def label(self) -> str:
        return f"{self.size // 1024}KB/{self.concurrency}/{self.mode}"


@dataclass
class Delivery:
    """Relay end to end: what the delivery workers did during and after the load."""

    delivered: int
    rate: float  # delivered per second, from the load's start until the queue was empty
    empty_after: float  # seconds after the load ended
    emptied: bool
    states: dict[str, int]


@dataclass
class CellResult:
    system: str
    cell: Cell
    load: LoadResult
    server: TreeUsage
    peak_pss_bytes: int
    delivery: Delivery | None = None
    round: int = 1
    queued: int | None = None  # new rows in the relay's database (None: not a relay)
    server_accept_ms: float | None = None  # the relay's own mean DATA handling time
    helper_cpu_seconds: float = 0.0  # the emulator's, or Postfix's sink's
    other_cpu_seconds: float = 0.0  # everything else on the machine (other users too)
    problems: list[str] = field(default_factory=list)

    def cpu_ms(self) -> float:
        return self.server.cpu_seconds * 1000 / max(self.load.accepted, 1)

    def row(self) -> dict[str, Any]:
        load, lat, d = self.load, self.load.latency, self.delivery
        wall = max(load.wall_seconds, 1e-9)
        return {
            "round": self.round,
            "system": self.system,
            "cell": self.cell.label,
            "accepted": load.accepted,
            "rate": load.rate,
            "p50": lat.p50,
            "p99": lat.p99,
            "max": lat.max,
            "srv_ms": self.cpu_ms(),
            "srv_util": 100 * self.server.cpu_seconds / self.server.wall_seconds,
            "srv_thread": 100 * self.server.busiest_thread_share,
            "mem": mib(self.peak_pss_bytes),
            "srv_data": "" if self.server_accept_ms is None else self.server_accept_ms,
            "cli_util": 100 * load.client_cpu_seconds / wall,
            "cli_busiest": 100 * load.client_busiest,
            "helper": 100 * self.helper_cpu_seconds / self.server.wall_seconds,
            "other": 100 * max(self.other_cpu_seconds, 0.0) / self.server.wall_seconds,
            "delivered": d.rate if d else "",
            "empty": ("" if d is None else f"{d.empty_after:.1f}" + ("" if d.emptied else "!")),
            "errors": load.errors + (0 if d is None else d.states.get("failed", 0)),
            "db": "" if self.queued is None else ("ok" if self.queued == load.accepted else "!"),
        }

    def as_json(self) -> dict[str, Any]:
        load = self.load
        return {
            "round": self.round,
            "system": self.system,
            "size": self.cell.size,
            "concurrency": self.cell.concurrency,
            "mode": self.cell.mode,
            "attempted": load.attempted,
            "accepted": load.accepted,
            "wall_seconds": load.wall_seconds,
            "accepted_per_second": load.rate,
            "accept_latency_ms": to_jsonable(load.latency),
            "session_setup_ms": to_jsonable(load.setup),
            "server_cpu_seconds": self.server.cpu_seconds,
            "server_cpu_ms_per_message": self.cpu_ms(),
            "server_busiest_thread_share": self.server.busiest_thread_share,
            "server_peak_pss_bytes": self.peak_pss_bytes,
            "server_peak_rss_sum_bytes": self.server.peak_rss_bytes,
            "server_processes_seen": self.server.processes,
            "client_processes": load.processes,
            "client_cpu_seconds": load.client_cpu_seconds,
            "client_busiest_share": load.client_busiest,
            "server_accept_mean_ms": self.server_accept_ms,
            "helper_cpu_seconds": self.helper_cpu_seconds,
            "other_cpu_seconds": self.other_cpu_seconds,
            "errors": load.errors,
            "error_kinds": dict(load.error_kinds),
            "delivery": to_jsonable(self.delivery),
            "db_new_messages": self.queued,
            "problems": self.problems,
        }


COLUMNS = [
    ("round", "round"),
    ("system", "system"),
    ("cell", "size/conc/mode"),
    ("accepted", "accepted"),
    ("rate", "msg/s"),
    ("p50", "p50 ms"),
    ("p99", "p99 ms"),
    ("max", "max ms"),
    ("srv_ms", "srv CPU ms/msg"),
    ("srv_util", "srv CPU %"),
    ("srv_thread", "busiest thr %"),
    ("mem", "srv peak MiB"),
    ("srv_data", "srv DATA ms"),
    ("cli_util", "cli CPU %"),
    ("cli_busiest", "busiest cli %"),
    ("helper", "sink/emu CPU %"),
    ("other", "other CPU %"),
    ("delivered", "delivered msg/s"),
    ("empty", "empty after s"),
    ("errors", "errors"),
    ("db", "db"),
]

# -- arguments ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="target cells only, short: ~5 minutes for 3 rounds"
    )
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument(
        "--rounds", type=int, default=3,
        help="times every system runs every cell, interleaved (3); figures are medians",
    )  # fmt: skip
    p.add_argument(
        "--latency-ms", type=float, default=200.0,
        help="the emulator's delay before each answer in relay-e2e-api-200ms (200)",
    )  # fmt: skip
    p.add_argument(
        "--sustain-seconds", type=float, default=None,
        help="seconds relay-e2e-sustained is fed at the relay's acceptance rate (60; quick 30)",
    )  # fmt: skip
    p.add_argument("--sizes", nargs="+", type=int, default=[2048, 102400], metavar="BYTES")
    p.add_argument("--concurrency", nargs="+", type=int, default=[50, 500], metavar="N")
    p.add_argument(
        "--modes", nargs="+", choices=("persistent", "per-session"), default=None,
        help="persistent sessions, one message per session (both)",
    )  # fmt: skip
    p.add_argument("--time-limit", type=float, help="seconds of load per cell (3; quick 2)")
    p.add_argument("--max-messages", type=int, default=50_000, help="cap per cell (50000)")
    p.add_argument("--e2e-messages", type=int, help="cap per end-to-end cell (1500; quick 800)")
    p.add_argument("--drain-limit", type=float, default=45.0, help="seconds to wait for delivery")
    p.add_argument("--idle", type=int, help="idle sessions held (10000; quick 2000); 0: none")
    p.add_argument(
        "--idle-systems", nargs="+", default=["floor", "relay"], choices=("floor", "relay")
    )
    p.add_argument(
        "--server-processes", type=_processes, default="auto",
        help="relay and floor processes: a number or auto, one per core (the relay's default)",
    )  # fmt: skip
    p.add_argument("--client-processes", type=int, default=2, help="load client processes (2)")
    p.add_argument("--database-url", default="", help="relay database (SQLite in a temp dir)")
    p.add_argument(
        "--postfix-install", choices=("auto", "never"), default="auto",
        help="auto: apt-get install postfix when missing; never: skip Postfix then",
    )  # fmt: skip
    p.add_argument(
        "--profile", type=Path, default=None, metavar="DIR",
        help="where py-spy writes the target cell's samples (a temp dir)",
    )  # fmt: skip
    p.add_argument("--no-profile", action="store_true", help="do not run py-spy")
    p.add_argument(
        "--wait-quiet", type=float, default=60.0, metavar="S",
        help="wait up to S seconds for the machine to be idle before starting (60)",
    )  # fmt: skip
    p.add_argument("--results", type=Path, default=BENCH / "RESULTS.md", help="markdown output")
    p.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    apply_defaults(args)
    if min(args.sizes) < 300 or min(args.concurrency) < 1 or args.client_processes < 1:
        p.error("sizes must be at least 300 bytes, concurrency and processes at least 1")
    if args.rounds < 1 or args.sustain_seconds <= 0 or args.latency_ms < 0:
        p.error("--rounds at least 1, --sustain-seconds more than 0, --latency-ms at least 0")
    return args


def _processes(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a number of at least 1")
    return int(text)


def apply_defaults(args: argparse.Namespace) -> None:
    """--quick: only the target cells, shorter, fewer idle sessions."""
    quick = args.quick
    if quick and args.sizes == [2048, 102400]:
        args.sizes = [TARGET[0]]
    if quick and args.concurrency == [50, 500]:
        args.concurrency = [TARGET[1]]
    if args.modes is None:
        args.modes = ["persistent"] if quick else ["persistent", "per-session"]
    if args.time_limit is None:
        args.time_limit = 2.0 if quick else 3.0
    if args.e2e_messages is None:
        args.e2e_messages = 800 if quick else 1500
    if args.idle is None:
        args.idle = 2000 if quick else 10_000
    if args.sustain_seconds is None:
        args.sustain_seconds = 30.0 if quick else 60.0
    from relay.core.settings import resolve_processes

    # The floor and the load's warm-up need the number; the relay is given it too.
    args.server_processes = resolve_processes(args.server_processes)


def cells(args: argparse.Namespace) -> list[Cell]:
    return [Cell(s, c, m) for s in args.sizes for c in args.concurrency for m in args.modes]


def target_cell(args: argparse.Namespace) -> Cell:
    """The cell the target-only systems run: the issue's, or the first one asked for."""
    every = cells(args)
    return next((c for c in every if (c.size, c.concurrency, c.mode) == TARGET), every[0])


def schedule(args: argparse.Namespace) -> list[tuple[int, Cell, str]]:
    """(round, cell, system) in the order they run: interleaved, cell by cell.

    Within a round each cell runs every system back to back, so the systems a
    ratio compares ran minutes apart at most; the rounds repeat the whole set.
    The systems that run once go last, after every round."""
    order = [s for s in SYSTEMS if s in args.systems]
    target = target_cell(args)
    out = [
        (r, cell, system)
        for r in range(1, args.rounds + 1)
        for cell in cells(args)
        for system in order
        if system not in ONCE and (system not in TARGET_ONLY or cell == target)
    ]
    out += [(1, target, system) for system in order if system in ONCE]
    return out


# -- a running system -----------------------------------------------------------------


@dataclass
class Running:
    """A system under test, ready for load: where to connect and as whom."""

    pid: int  # root of its process tree (CPU and memory)
    port: int
    username: str = ""  # empty: no AUTH
    password: str = ""
    sender: str = "bench@client.bench.test"
    recipient: str = "rcpt@example.org"
    starttls: bool = False
    relay: RelayServer | None = None
    tenant: Tenant | None = None
    helpers: list[int] = field(default_factory=list)  # emulator, Postfix's sink: watched apart


class Context:
    """Things shared by every cell: versions found, the Postfix binary, temp dirs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.postfix_skip = ""  # why Postfix is not measured, when it is not
        self.postfix_version = ""


def floor_command(port: int, processes: int) -> list[str]:
    return [
        sys.executable,
        str(BENCH / "floor.py"),
        "--port",
        str(port),
        "--processes",
        str(processes),
    ]


@contextlib.contextmanager
def floor_process(processes: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """bench/floor.py on a free port, stopped (SIGTERM, then SIGKILL) on the way out."""
    port = free_port()
    # stderr to a file, not a pipe: nobody reads a pipe during the run, and a
    # full one would stall the server.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            floor_command(port, processes), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            wait_listening(port, processes, proc, 30, log)
            yield proc, port
        finally:
            stop_process(proc)


def wait_listening(
    port: int, sockets: int, proc: subprocess.Popen[bytes] | None, timeout: float, log: Any = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = b""
            if log is not None:
                log.seek(0)
                err = log.read()
            raise RuntimeError(f"server exited with {proc.returncode}: {err[-2000:]!r}")
        if listening_sockets(port) >= sockets and greets(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} after {timeout:.0f}s")


def greets(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    tree = process_tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def floor_system(ctx: Context) -> Iterator[Running]:
    with floor_process(ctx.args.server_processes) as (proc, port):
        yield Running(proc.pid, port)


@contextlib.contextmanager
def postfix_system(ctx: Context) -> Iterator[Running]:
    # Postfix runs one smtpd per session: allow as many as the client opens.
    limit = max(ctx.args.concurrency) + 50
    with floor_process(1) as (sink, sink_port), PostfixInstance(sink_port, limit) as postfix:
        yield Running(postfix.master_pid(), postfix.port, helpers=[sink.pid])


def relay_options(args: argparse.Namespace, workers: bool) -> RelayOptions:
    return RelayOptions(
        database_url=args.database_url,
        processes=args.server_processes,
        workers=workers,
        # The idle test holds 10,000 sessions from one address in one process.
        limits={"max_connections": max(args.idle + 1000, 20000)},
    )


Starter = Callable[[Context], contextlib.AbstractContextManager[Running]]


def relay_system(starttls: bool, delivery: str | None, slow: bool = False) -> Starter:
    """A context manager factory for one relay variant (``delivery``: None, api, smtp;
    ``slow``: the emulator answers after ``--latency-ms``)."""

    @contextlib.contextmanager
    def system(ctx: Context) -> Iterator[Running]:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(RelayServer(relay_options(ctx.args, delivery is not None)))
            tenant = seed_tenant(server.config_path)
            emulator = None
            if delivery is not None:
                latency = ctx.args.latency_ms / 1000 if slow else 0.0
                emulator = stack.enter_context(EmulatorProcess(latency))
                kind = "sendgrid" if delivery == "api" else "smtp"
                add_emulated_provider(server.config_path, tenant, emulator, kind)
            server.start()
            port = server.ports["submission" if starttls else "alt"]
            yield Running(
                server.pid, port, tenant.username, tenant.password, tenant.sender,
                tenant.recipient, starttls, server, tenant,
                [emulator.pid] if emulator else [],
            )  # fmt: skip

    return system


STARTERS: dict[str, Starter] = {
    "floor": floor_system,
    "postfix": postfix_system,
    "relay-starttls": relay_system(True, None),
    "relay-plain": relay_system(False, None),
    "relay-e2e-api": relay_system(True, "api"),
    "relay-e2e-smtp": relay_system(True, "smtp"),
    "relay-e2e-api-200ms": relay_system(True, "api", slow=True),
    "relay-e2e-sustained": relay_system(True, "api"),
}

# -- Postfix --------------------------------------------------------------------------

POSTFIX = "/usr/sbin/postfix"
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def ensure_postfix(mode: str, quiet: bool) -> str:
    """'' when Postfix is there (installing it if allowed), else why it is skipped."""
    if Path(POSTFIX).exists():
        return ""
    if mode == "never":
        return "not installed (--postfix-install never)"
    if os.geteuid() != 0:
        return "not installed, and installing needs root"
    with stage("installing Debian's postfix with apt-get (no service started)", quiet):
        return install_postfix()


def install_postfix() -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # "No configuration": no /etc/postfix/main.cf and nothing to start. The
    # policy-rc.d guard also tells invoke-rc.d not to start any service.
    preseed = "postfix postfix/main_mailer_type select No configuration\n"
    subprocess.run(
        ["debconf-set-selections"], input=preseed.encode(), env=env, check=False, timeout=60
    )
    made_guard = not POLICY_RC.exists()
    if made_guard:
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"]
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
        if done.returncode != 0:  # a stale package list: update once, then retry
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            done = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    finally:
        if made_guard:
            POLICY_RC.unlink(missing_ok=True)
    if done.returncode != 0 or not Path(POSTFIX).exists():
        return f"apt-get install postfix failed: {done.stderr.decode(errors='replace')[-500:]}"
    return ""


def postfix_version() -> str:
    done = subprocess.run(
        ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.stdout.strip()


MASTER_CF = """\
{listen}  inet  n  -  n  -  -  smtpd
pickup    unix  n  -  n  60  1  pickup
cleanup   unix  n  -  n  -  0  cleanup
qmgr      unix  n  -  n  300  1  qmgr
tlsmgr    unix  -  -  n  1000?  1  tlsmgr
rewrite   unix  -  -  n  -  -  trivial-rewrite
bounce    unix  -  -  n  -  0  bounce
defer     unix  -  -  n  -  0  bounce
trace     unix  -  -  n  -  0  bounce
verify    unix  -  -  n  -  1  verify
flush     unix  n  -  n  1000?  0  flush
proxymap  unix  -  -  n  -  -  proxymap
proxywrite unix -  -  n  -  1  proxymap
smtp      unix  -  -  n  -  -  smtp
relay     unix  -  -  n  -  -  smtp
showq     unix  n  -  n  -  -  showq
error     unix  -  -  n  -  -  error
retry     unix  -  -  n  -  -  error
discard   unix  -  -  n  -  -  discard
anvil     unix  -  -  n  -  1  anvil
scache    unix  -  -  n  -  1  scache
postlog   unix-dgram n  -  n  -  1  postlogd
"""


def main_cf(root: Path, sink_port: int, process_limit: int) -> str:
    # A stock Postfix as an operator would run it as a relay for 127.0.0.0/8,
    # except: its own directories, loopback only, no DNS, no local delivery,
    # no TLS (the no-AUTH comparison), and enough smtpd processes for the load.
    return f"""\
compatibility_level = 3.6
queue_directory = {root / "queue"}
data_directory = {root / "data"}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root / "maillog"}
maillog_file_prefixes = {root}
myhostname = postfix.bench.test
mydomain = bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
default_process_limit = {process_limit}
message_size_limit = 52428800
biff = no
"""


class PostfixInstance:
    """``postfix -c DIR start`` with its own main.cf, master.cf and queue, stopped on exit."""

    def __init__(self, sink_port: int, process_limit: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="postfix-bench-"))
        self.root.chmod(0o755)  # the daemons run as the postfix user
        self.etc = self.root / "etc"
        self.port = free_port()
        self.sink_port = sink_port
        self.process_limit = process_limit

    def _postfix(self, *verb: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.etc), *verb],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def start(self) -> None:
        self.etc.mkdir()
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix")
        (self.etc / "main.cf").write_text(main_cf(self.root, self.sink_port, self.process_limit))
        (self.etc / "master.cf").write_text(MASTER_CF.format(listen=f"{LOOPBACK}:{self.port}"))
        (self.root / "queue").mkdir()
        # "check" makes the queue's subdirectories with their owners and modes.
        done = self._postfix("check")
        if done.returncode == 0:
            done = self._postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stdout}{done.stderr}{self.log()}")
        wait_listening(self.port, 1, None, 30)

    def log(self, lines: int = 20) -> str:
        """The end of its maillog (Postfix has no syslog to write to here)."""
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "maillog").read_text().splitlines()[-lines:])
        return ""

    def master_pid(self) -> int:
        pid_file = self.root / "queue" / "pid" / "master.pid"
        return int(pid_file.read_text().split()[0])

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            pid = self.master_pid()
            tree = process_tree(pid)
            self._postfix("abort", timeout=30)  # stop now: the queue is thrown away anyway
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            for left in tree:  # whatever did not stop in time (bounded above)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(left, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def postfix_masters_left() -> list[int]:
    """Postfix master processes of ours still running (their cwd is our queue directory)."""
    done = subprocess.run(
        ["pgrep", "-x", "master"], capture_output=True, text=True, timeout=10, check=False
    )
    ours = []
    for word in done.stdout.split():
        with contextlib.suppress(OSError, ValueError):
            if "postfix-bench-" in os.readlink(f"/proc/{int(word)}/cwd"):
                ours.append(int(word))
    return ours


# -- one cell --------------------------------------------------------------------------


def load_spec(
    args: argparse.Namespace, running: Running, cell: Cell, e2e: bool, sustained: bool = False
) -> LoadSpec:
    cap = args.e2e_messages if e2e else args.max_messages
    time_limit = args.time_limit
    if sustained:  # as fast as the relay accepts, for the whole stretch: time bounds it
        cap, time_limit = SUSTAIN_CAP, args.sustain_seconds
    return LoadSpec(
        host=LOOPBACK,
        port=running.port,
        username=running.username,
        password=running.password,
        sender=running.sender,
        recipient=running.recipient,
        messages=cap,
        concurrency=cell.concurrency,
        per_connection=cell.per_connection,
        size=cell.size,
        starttls=running.starttls,
        time_limit=time_limit,
        # Replies take milliseconds; a session stuck longer is an error, and a
        # short timeout keeps a stuck cell from eating the run's time budget.
        op_timeout=OP_TIMEOUT,
        greeting_timeout=GREETING_TIMEOUT,
    )


def warm(spec: LoadSpec, server_processes: int) -> None:
    """A few sessions first: the relay's login cache, Postfix's first smtpd processes."""
    small = replace(spec, per_connection=1)
    result = warm_up(small, connections=4 * server_processes)
    if result.errors or set(result.replies) - {"250"}:
        raise RuntimeError(f"warm-up failed: {dict(result.replies)} {dict(result.errors)}")


class CellMonitors:
    """Server CPU and memory, helpers' CPU, and the whole machine's, over one cell."""

    def __init__(self, running: Running) -> None:
        self.server = MemoryMonitor(running.pid)
        self.helpers = [TreeMonitor(pid) for pid in running.helpers]
        self.began = 0.0  # epoch seconds
        self._busy0 = 0.0

    def start(self) -> None:
        self.began = time.time()
        self._busy0 = machine_busy_seconds()
        self.server.start()
        for helper in self.helpers:
            helper.start()

    def stop(self) -> tuple[TreeUsage, float, float]:
        """(server usage, helpers' CPU seconds, machine busy seconds)."""
        usage = self.server.stop()
        helpers = sum(h.stop().cpu_seconds for h in self.helpers)
        return usage, helpers, machine_busy_seconds() - self._busy0


SUSTAIN_CAP = 10_000_000  # messages: never reached, the stretch's time ends the load


def run_cell(
    ctx: Context, system: str, cell: Cell, profile: Path | None, round_: int = 1
) -> CellResult:
    args = ctx.args
    e2e = system.startswith("relay-e2e")
    with STARTERS[system](ctx) as running:
        spec = load_spec(args, running, cell, e2e, system == "relay-e2e-sustained")
        warm(spec, args.server_processes)
        # The warm-up's messages are delivered before the clock starts, and not counted.
        delivered0 = settle(args, running) if e2e else 0
        before, accept0 = _db_count(running), _accept_time(running)
        monitors = CellMonitors(running)
        profiler = start_profiler(profile, running.pid)
        try:
            load = run_load(spec, args.client_processes, on_start=monitors.start)
            delivery = drain(args, running, monitors.began, load, delivered0) if e2e else None
        finally:
            usage, helpers, busy = monitors.stop()
            if profiler is not None:
                profiler.stop()
        result = CellResult(
            system, cell, load, usage, monitors.server.peak_pss_bytes, delivery, round_
        )
        result.helper_cpu_seconds = helpers
        result.other_cpu_seconds = busy - usage.cpu_seconds - helpers - load.client_cpu_seconds
        after, accept1 = _db_count(running), _accept_time(running)
        if before is not None and after is not None:
            result.queued = after - before
        if accept0 is not None and accept1 is not None and accept1[1] > accept0[1]:
            result.server_accept_ms = 1000 * (accept1[0] - accept0[0]) / (accept1[1] - accept0[1])
    result.problems = check(result)
    return result


def _db_count(running: Running) -> int | None:
    if running.relay is None or running.tenant is None:
        return None
    return sum(count_messages(running.relay.database_url, running.tenant.account).values())


def _accept_time(running: Running) -> tuple[float, int] | None:
    """The relay's own DATA-handling histogram (sum, count), from its /metrics."""
    if running.relay is None:
        return None
    try:
        return histogram_mean(running.relay.metrics(), "relay_accept_duration_seconds")
    except OSError:
        return None


def _watch(running: Running) -> QueueWatch:
    assert running.relay is not None and running.tenant is not None
    return QueueWatch(running.relay.database_url, running.tenant.account)


def settle(args: argparse.Namespace, running: Running) -> int:
    """Wait (bounded) until the queue is empty; the messages delivered so far."""
    watch = _watch(running)
    try:
        watch.wait_empty(args.drain_limit)
        return watch.states().get("delivered", 0)
    finally:
        watch.close()


def drain(
    args: argparse.Namespace, running: Running, began: float, load: LoadResult, delivered0: int
) -> Delivery:
    """After the load: wait (bounded) until the relay's queue is empty, then count."""
    watch = _watch(running)
    try:
        emptied, at = watch.wait_empty(args.drain_limit)
        states = dict(watch.states())
    finally:
        watch.close()
    delivered = states.get("delivered", 0) - delivered0
    return Delivery(
        delivered,
        delivered / max(at - began, 1e-9),
        max(at - (began + load.wall_seconds), 0.0),
        emptied,
        states,
    )


def start_profiler(output: Path | None, pid: int) -> PySpy | None:
    if output is None:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    # GIL holders only: in one process the GIL is the budget the stages share.
    profiler = PySpy(pid, output, rate=400, gil_only=True)
    profiler.cmd.append("--threads")
    profiler.start()
    time.sleep(1)  # py-spy attaches before the load starts
    return profiler


def check(result: CellResult) -> list[str]:
    load, problems = result.load, []
    if load.attempted == 0 or load.accepted < 0.5 * load.attempted:
        kinds = ", ".join(f"{k}: {n}" for k, n in load.error_kinds.most_common(5))
        problems.append(f"only {load.accepted} of {load.attempted} accepted ({kinds})")
    if result.queued is not None and result.queued != load.accepted:
        problems.append(f"database has {result.queued} new messages for {load.accepted} x 250")
    return problems


# -- idle connections -------------------------------------------------------------------


@dataclass
class IdleResult:
    system: str
    wanted: int
    opened: int
    failed: int
    open_seconds: float
    pss_before: int
    pss_held: int
    noop: Summary
    noop_late: int  # NOOP replies slower than one second, or missing
    client_cpu_seconds: float

    @property
    def per_connection_kib(self) -> float:
        return (self.pss_held - self.pss_before) / max(self.opened, 1) / 1024

    def row(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "held": f"{self.opened}/{self.wanted}",
            "open_s": self.open_seconds,
            "before": mib(self.pss_before),
            "held_mem": mib(self.pss_held),
            "per_conn": self.per_connection_kib,
            "p50": self.noop.p50,
            "p99": self.noop.p99,
            "max": self.noop.max,
            "late": self.noop_late,
            "errors": self.failed,
        }


IDLE_COLUMNS = [
    ("system", "system"),
    ("held", "held after EHLO"),
    ("open_s", "open s"),
    ("before", "srv MiB before"),
    ("held_mem", "srv MiB held"),
    ("per_conn", "KiB/conn"),
    ("p50", "NOOP p50 ms"),
    ("p99", "NOOP p99 ms"),
    ("max", "NOOP max ms"),
    ("late", "NOOP >1s"),
    ("errors", "failed"),
]
# Connects in flight over all idle client processes. The relay's listeners
# accept with a backlog of 100 (create_server's default replaces the socket's
# listen(1024)); past it the kernel drops the handshake's last ACK and a client
# holds a connection that never gets its greeting.
IDLE_OPEN_IN_FLIGHT = 80
IDLE_PROBE_WINDOW = 4.0  # seconds over which one NOOP per session is spread
IDLE_OPEN_TIMEOUT = 30.0  # seconds for one session's connect, greeting and EHLO


async def _idle_open(port: int, n: int, deadline: float, at_once: int) -> tuple[list[Any], int]:
    gate = asyncio.Semaphore(at_once)

    async def one() -> Any:
        # A session that cannot open in IDLE_OPEN_TIMEOUT counts as failed.
        async with gate, asyncio.timeout(IDLE_OPEN_TIMEOUT):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            if not (await reader.readline()).startswith(b"220"):
                raise ConnectionError("no greeting")
            writer.write(b"EHLO idle.bench.test\r\n")
            while True:  # bounded by the server's reply (and the deadline below)
                line = await reader.readline()
                if len(line) < 4 or line[3:4] != b"-":
                    break
            if not line.startswith(b"250"):
                raise ConnectionError(line.decode(errors="replace"))
            return reader, writer

    left = max(deadline - time.monotonic(), 1.0)
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), left)
    sessions = [d for d in done if not isinstance(d, BaseException)]
    return sessions, n - len(sessions)


async def _idle_probe(sessions: list[Any], window: float) -> list[float]:
    """One NOOP per session, started evenly over ``window``; each reply's latency."""
    gap = window / max(len(sessions), 1)
    out: list[float] = []

    async def one(i: int, reader: Any, writer: Any) -> None:
        await asyncio.sleep(i * gap)
        began = time.perf_counter()
        writer.write(b"NOOP\r\n")
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            out.append(time.perf_counter() - began if line.startswith(b"250") else 99.0)
        except (TimeoutError, OSError):
            out.append(99.0)

    await asyncio.gather(*(one(i, r, w) for i, (r, w) in enumerate(sessions)))
    return out


async def _idle_client(port: int, n: int, at_once: int, conn: Any, patience: float) -> None:
    deadline = time.monotonic() + patience
    sessions, failed = await _idle_open(port, n, deadline, at_once)
    conn.send(("opened", len(sessions), failed))
    loop = asyncio.get_running_loop()
    # Waits for the parent's go (it measures memory meanwhile); bounded by timeout.
    if await loop.run_in_executor(None, conn.poll, patience):
        conn.recv()
        conn.send(("probed", await _idle_probe(sessions, IDLE_PROBE_WINDOW)))
        if await loop.run_in_executor(None, conn.poll, patience):
            conn.recv()
    for _, writer in sessions:
        writer.close()


def _idle_main(port: int, n: int, at_once: int, conn: Any, timeout: float) -> None:
    import resource

    import uvloop

    raise_fd_limit()
    began = resource.getrusage(resource.RUSAGE_SELF)
    uvloop.run(_idle_client(port, n, at_once, conn, timeout))
    end = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(("cpu", end.ru_utime + end.ru_stime - began.ru_utime - began.ru_stime))


def run_idle(args: argparse.Namespace, system: str, pid: int, port: int) -> IdleResult:
    """Open ``args.idle`` sessions from several client processes, hold them, probe them."""
    parts = [n for n in split(args.idle, max(2, args.idle // 4000)) if n > 0]
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe() for _ in parts]
    at_once = max(IDLE_OPEN_IN_FLIGHT // len(parts), 1)
    procs = [
        ctx.Process(target=_idle_main, args=(port, n, at_once, child, 120.0), name="bench-idle")
        for n, (_, child) in zip(parts, pipes, strict=True)
    ]
    time.sleep(0.5)
    before = tree_pss_bytes(pid)
    began = time.monotonic()
    for p in procs:
        p.start()
    try:
        opened = [_expect(parent, "opened", 150) for parent, _ in pipes]
        open_seconds = time.monotonic() - began
        time.sleep(1.0)  # let the server settle (allocator, GC) before measuring
        held = tree_pss_bytes(pid)
        for parent, _ in pipes:
            parent.send("probe")
        latencies = [x for parent, _ in pipes for x in _expect(parent, "probed", 60)[1]]
        for parent, _ in pipes:
            parent.send("close")
        cpu = sum(_expect(parent, "cpu", 60)[1] for parent, _ in pipes)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    count = sum(o[1] for o in opened)
    return IdleResult(
        system,
        args.idle,
        count,
        sum(o[2] for o in opened),
        open_seconds,
        before,
        held,
        Summary.of([x for x in latencies if x < 99]),
        sum(1 for x in latencies if x > 1.0) + (count - len(latencies)),
        cpu,
    )


def _expect(conn: Any, kind: str, timeout: float) -> Any:
    """The next message from an idle client process, which must be of ``kind``."""
    if not conn.poll(timeout):
        raise RuntimeError(f"idle client: no {kind!r} after {timeout:.0f}s")
    message = conn.recv()
    if message[0] != kind:
        raise RuntimeError(f"idle client: expected {kind!r}, got {message!r}")
    return message


def idle_test(ctx: Context, system: str) -> IdleResult:
    args = ctx.args
    if system == "floor":
        with floor_process(args.server_processes) as (proc, port):
            return run_idle(args, "floor", proc.pid, port)
    with RelayServer(relay_options(args, False)) as server:
        seed_tenant(server.config_path)
        server.start()
        return run_idle(args, "relay (alt, plain EHLO)", server.pid, server.ports["alt"])


# -- profile stages ---------------------------------------------------------------------

# (stage, markers): a sample belongs to the stage of its innermost frame that
# carries one of the markers. Library frames (SQLAlchemy, email) carry none, so
# they count for the relay step that called them; ssl, logging and the asyncio
# plumbing do, since they are costs of their own.
INGEST_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("TLS: SSLObject read/write (crypto)", ("(ssl.py)",)),
    ("spool: write_batch + SQLAlchemy/sqlite3 (spool thread), queue ids", ("(relay/queue/",)),
    ("policy: sender + route lookup, SQLAlchemy (to_thread)", ("(relay/routing/",)),
    ("auth: login check", ("(relay/auth/",)),
    ("message: parse headers, smuggling check, rewrite", ("(relay/core/message.py)",)),
    ("logging: one INFO line per message", ("(logging/",)),
    ("metrics: Prometheus counters", ("(prometheus_client/", "(relay/core/metrics.py)")),
    ("relay handler and intake: rest of DATA", ("(relay/smtp/handler.py)", "(relay/intake.py)")),
    ("relay protocol: push, readuntil wrapper, limits", ("(relay/smtp/protocol.py)",)),
    ("aiosmtpd: command loop, DATA reading, address parsing", ("(aiosmtpd/",)),
    ("asyncio streams: socket reads/writes into uvloop", ("(asyncio/streams.py)",)),
    (
        "thread hand-offs: to_thread, futures",
        ("(concurrent/", "(asyncio/futures.py)", "(asyncio/threads.py)", "(threading.py)"),
    ),
    ("uvloop C: epoll, socket I/O, callbacks", ("(asyncio/runners.py)", "(uvloop/")),
]
FALLBACK_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("message: parse headers, smuggling check, rewrite", ("(email/",)),
    ("SQLAlchemy, caller not sampled", ("(sqlalchemy/",)),
]


# -- report -------------------------------------------------------------------------------


@dataclass
class Report:
    results: list[CellResult]
    idle: list[IdleResult]
    skipped: dict[str, str]
    versions: dict[str, str]
    profile: Path | None
    started: dt.datetime
    seconds: float = 0.0
    client_processes: int = 2
    loadavg: str = ""
    busy_at_start: float = 0.0  # share of a core busy just before the run (others' work)
    rounds: int = 1
    latency_ms: float = 200.0
    server_processes: int = 1


# -- medians, spreads and ratios over the rounds ------------------------------------------


@dataclass(frozen=True)
class Spread:
    """One figure over the rounds: its median and its range."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def low(self) -> float:
        return min(self.values, default=math.nan)

    @property
    def high(self) -> float:
        return max(self.values, default=math.nan)

    def text(self, digits: int = 0, scale: float = 1.0, unit: str = "") -> str:
        if not self.values:
            return "not measured"
        f = f"{{:.{digits}f}}"
        med = f.format(self.median * scale) + unit
        if len(self.values) == 1:
            return med
        return f"{med} [{f.format(self.low * scale)}-{f.format(self.high * scale)}]"

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": len(self.values)}


def spread(values: list[float | None]) -> Spread:
    return Spread(tuple(v for v in values if v is not None and math.isfinite(v)))


def delivered_rate(r: CellResult) -> float | None:
    return None if r.delivery is None else r.delivery.rate


def groups(results: list[CellResult]) -> dict[tuple[str, str], list[CellResult]]:
    """Results by (system, cell label), in the order they first ran."""
    out: dict[tuple[str, str], list[CellResult]] = {}
    for r in results:
        out.setdefault((r.system, r.cell.label), []).append(r)
    return out


# (figure, key in the row, how to get it, digits)
FIGURES: list[tuple[str, str, Callable[[CellResult], float | None], int]] = [
    ("msg/s", "rate", lambda r: r.load.rate, 0),
    ("p50 ms", "p50", lambda r: r.load.latency.p50, 1),
    ("p99 ms", "p99", lambda r: r.load.latency.p99, 1),
    ("srv CPU ms/msg", "cpu", CellResult.cpu_ms, 2),
    ("srv peak MiB", "mem", lambda r: mib(r.peak_pss_bytes), 0),
    ("delivered msg/s", "delivered", delivered_rate, 0),
    ("empty after s", "empty", lambda r: None if r.delivery is None else r.delivery.empty_after, 1),
]


def summary(results: list[CellResult]) -> list[dict[str, Any]]:
    """Per (system, cell): each figure's median [min-max] over the rounds."""
    rows = []
    for (system, label), rs in groups(results).items():
        row: dict[str, Any] = {"system": system, "cell": label, "rounds": len(rs)}
        for _, key, get, digits in FIGURES:
            values = spread([get(r) for r in rs])
            row[key] = values.text(digits) if values.values else ""
            row[f"{key}_json"] = values.as_json()
        row["errors"] = sum(r.row()["errors"] for r in rs)
        row["db"] = (
            "" if rs[0].queued is None else ("ok" if all(not r.problems for r in rs) else "!")
        )
        rows.append(row)
    return rows


SUMMARY_COLUMNS = [
    ("system", "system"),
    ("cell", "size/conc/mode"),
    ("rounds", "rounds"),
    *[(key, name) for name, key, _, _ in FIGURES],
    ("errors", "errors"),
    ("db", "db"),
]

# (name, numerator system, its figure, denominator system): a ratio within one round.
RATIOS: list[tuple[str, str, Callable[[CellResult], float | None], str]] = [
    ("relay STARTTLS+AUTH+durable / Postfix", "relay-starttls", lambda r: r.load.rate, "postfix"),
    ("relay STARTTLS+AUTH+durable / floor", "relay-starttls", lambda r: r.load.rate, "floor"),
    ("relay plain AUTH / Postfix", "relay-plain", lambda r: r.load.rate, "postfix"),
    ("end to end by API (delivered) / Postfix", "relay-e2e-api", delivered_rate, "postfix"),
    ("end to end by SMTP (delivered) / Postfix", "relay-e2e-smtp", delivered_rate, "postfix"),
]


def ratios(results: list[CellResult]) -> list[tuple[str, str, Spread]]:
    """(ratio, cell label, its values): each computed within a round, then spread."""
    by = {(r.round, r.system, r.cell.label): r for r in results}
    labels = list(dict.fromkeys(r.cell.label for r in results))
    out = []
    for name, top, get, bottom in RATIOS:
        for label in labels:
            values: list[float | None] = []
            for round_ in sorted({r.round for r in results}):
                a, b = by.get((round_, top, label)), by.get((round_, bottom, label))
                if a is not None and b is not None and (got := get(a)) is not None:
                    values.append(got / max(b.load.rate, 1e-9))
            if values:
                out.append((name, label, spread(values)))
    return out


def at_target(results: list[CellResult], system: str) -> list[CellResult]:
    return [
        r for r in results
        if r.system == system and (r.cell.size, r.cell.concurrency, r.cell.mode) == TARGET
    ]  # fmt: skip


SUSTAIN_TARGET = 60.0  # seconds of feeding the target asks for
EMPTY_WITHIN = 10.0  # seconds after the load ends


def targets(report: Report) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, wanted, met) for issue 15's targets, from this run's medians."""
    results = report.results
    out: list[tuple[str, str, str, bool | None]] = []

    def check(
        name: str, values: Spread, wanted: str, ok: Callable[[float], bool], **fmt: Any
    ) -> None:
        if not values.values:
            out.append((name, "not measured", wanted, None))
        else:
            out.append((name, values.text(**fmt), wanted, ok(values.median)))

    def ratio(name: str) -> Spread:
        target_label = Cell(*TARGET).label
        return next(
            (v for n, lb, v in ratios(results) if n == name and lb == target_label), spread([])
        )

    api = at_target(results, "relay-e2e-api")
    check(
        "end to end by API (delivered) vs Postfix's relay rate",
        ratio("end to end by API (delivered) / Postfix"), ">= 80%", lambda v: v >= 0.8,
        digits=0, scale=100, unit="%",
    )  # fmt: skip
    check(
        "end to end by API: relay CPU per message (DATA to the provider's 2xx, recorded)",
        spread([r.cpu_ms() for r in api]), "<= 2.5 ms", lambda v: v <= 2.5, digits=2, unit=" ms",
    )  # fmt: skip
    slow = at_target(results, "relay-e2e-api-200ms")
    latency = f"{report.latency_ms:.0f} ms"
    check(
        f"end to end by API, the emulator answering after {latency} (delivered)",
        spread([delivered_rate(r) for r in slow]), ">= 500 msg/s", lambda v: v >= 500,
        unit=" msg/s",
    )  # fmt: skip
    check(
        "acceptance STARTTLS+AUTH+durable vs Postfix",
        ratio("relay STARTTLS+AUTH+durable / Postfix"), ">= 100%", lambda v: v >= 1.0,
        scale=100, unit="%",
    )  # fmt: skip
    check(
        "acceptance STARTTLS+AUTH+durable vs the bare floor (same processes)",
        ratio("relay STARTTLS+AUTH+durable / floor"), ">= 40%", lambda v: v >= 0.4,
        scale=100, unit="%",
    )  # fmt: skip
    check(
        "p99 from the final dot to the 250 (STARTTLS+AUTH+durable)",
        spread([r.load.latency.p99 for r in at_target(results, "relay-starttls")]),
        "<= 50 ms", lambda v: v <= 50, digits=1, unit=" ms",
    )  # fmt: skip
    fed = at_target(results, "relay-e2e-sustained")
    name = f"queue fed at the acceptance rate for {SUSTAIN_TARGET:.0f} s: empty within 10 s"
    if not fed or fed[0].delivery is None:
        out.append((name, "not measured", f"<= {EMPTY_WITHIN:.0f} s", None))
    else:
        r, d = fed[0], fed[0].delivery
        got = (
            f"fed {r.load.wall_seconds:.0f} s at {r.load.rate:.0f} msg/s ({r.load.accepted}), "
            + (
                f"empty {d.empty_after:.1f} s after"
                if d.emptied
                else "NOT empty at the drain limit"
            )
        )
        long_enough = r.load.wall_seconds >= SUSTAIN_TARGET - 1
        met = (d.emptied and d.empty_after <= EMPTY_WITHIN) if long_enough else None
        out.append((name, got, f"<= {EMPTY_WITHIN:.0f} s", met))
    idle = next((i for i in report.idle if i.system.startswith("relay")), None)
    if idle is not None:
        ok = idle.opened >= 10_000 and idle.pss_held <= GIB and idle.noop_late == 0
        got = f"{idle.opened} held in {mib(idle.pss_held):.0f} MiB, {idle.noop_late} NOOP > 1 s"
        out.append(("10,000 idle sessions", got, "<= 1 GiB, all answered < 1 s", ok))
    else:
        out.append(("10,000 idle sessions", "not measured", "<= 1 GiB, all answered < 1 s", None))
    return out


def machine() -> str:
    with open("/proc/meminfo") as fh:
        total_kib = int(fh.readline().split()[1])
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    cpus = len(os.sched_getaffinity(0))
    memory = f"{total_kib / 1024 / 1024:.1f} GiB RAM"
    return f"{cpus} CPUs ({model or 'unknown'}), {memory}, {platform.platform()}"


def collect_versions(args: argparse.Namespace, ctx: Context) -> dict[str, str]:
    from importlib.metadata import version

    out = {"relay": relay_revision(), "Python": platform.python_version()}
    out |= {name: version(name) for name in ("aiosmtpd", "uvloop", "SQLAlchemy")}
    if ctx.postfix_version:
        out["Postfix"] = ctx.postfix_version
    out["database"] = f"SQLite {sqlite3.sqlite_version}"
    if args.database_url:
        with contextlib.suppress(Exception):
            out["database"] = database_version(args.database_url)
    return out


def text_tables(report: Report) -> str:
    lines = [
        f"Every cell, every round ({report.rounds} rounds, interleaved; "
        f"{report.server_processes} server processes):",
        format_table([r.row() for r in report.results], COLUMNS),
        "",
        "Median [min-max] over the rounds:",
        format_table(summary(report.results), SUMMARY_COLUMNS),
    ]
    found = ratios(report.results)
    if found:
        lines += ["", "Ratios, each within one round; median [min-max] over the rounds:"]
        lines += [f"  {label:22} {name}: {v.text(0, 100, '%')}" for name, label, v in found]
    if report.idle:
        lines += ["", format_table([i.row() for i in report.idle], IDLE_COLUMNS)]
    lines += ["", "Targets (issue 15; 2 KB, 50 sessions, persistent; medians of this run):"]
    for name, measured, wanted, met in targets(report):
        verdict = {True: "MET", False: "MISSED", None: "-"}[met]
        lines.append(f"  {verdict:6}  {name}: {measured} (target {wanted})")
    for system, why in report.skipped.items():
        lines.append(f"  skipped {system}: {why}")
    return "\n".join(lines)


def notes(report: Report) -> list[str]:
    return [
        f"client: bench/common.py raw asyncio SMTP client, {report.client_processes} processes "
        "on uvloop, the same for every system; 'cli CPU %' is its CPU over the wall time "
        "(100 = one core), 'busiest cli %' its busiest process;",
        "'srv CPU %' is the server tree's CPU over the wall (100 = one core), 'busiest thr %' "
        "its busiest thread's; 'srv peak MiB' the highest sampled sum of PSS over its "
        "processes (shared pages split); 'srv DATA ms' the relay's own mean DATA handling "
        "(its relay_accept_duration_seconds);",
        "'sink/emu CPU %': Postfix's SMTP sink or the provider emulator; 'other CPU %': the "
        "rest of the machine (this script's monitors, and anything else running: "
        f"at the start: load average {report.loadavg}, {100 * report.busy_at_start:.0f}% of a "
        "core busy), out of 100 x cores;",
        "mode 'persistent' sends up to 1000 messages per session, 'per-session' one; "
        "latency is from the final '.' to the 250; cells are bounded by time, not count;",
        "Postfix relays to a second floor as its SMTP sink, and spends CPU forwarding "
        "while it accepts; it runs without TLS or AUTH (the no-AUTH comparison);",
        "relay-e2e: 'delivered msg/s' counts from the load's start until the queue was empty; "
        "'empty after s' is seconds after the load ended ('!' = not empty at the drain limit).",
    ]


def print_profile(report: Report) -> str:
    if report.profile is None or not report.profile.exists():
        return ""
    shares, threads, total = stage_shares(report.profile, INGEST_STAGES, FALLBACK_STAGES)
    if not total:
        return ""
    lines = [
        f"Profile: relay-starttls {TARGET[0] // 1024}KB/{TARGET[1]}/{TARGET[2]}, py-spy --gil, "
        f"{total} samples holding the GIL ({report.profile})",
        "  by thread: " + ", ".join(f"{k} {v:.0f}%" for k, v in sorted(threads.items())),
    ]
    lines += [f"  {share:5.1f}%  {name}" for name, share in shares]
    lines.append("  hottest relay functions (% inclusive, % self):")
    spots = hot_spots(report.profile, top=100_000)
    ours = [
        s for s in spots if "(relay/" in s[0] and not re.search(r"relay/(cli|server)\.py", s[0])
    ]
    lines += [f"  {incl:5.1f} {own:5.1f}  {name[:90]}" for name, incl, own in ours[:14]]
    return "\n".join(lines)


def markdown(report: Report) -> str:
    head = [
        "# Relay benchmark results",
        "",
        f"Written by `bench/compare.py` on {report.started:%Y-%m-%d %H:%M} UTC "
        f"({report.seconds:.0f} s run).",
        "",
        f"- Machine: {machine()}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
        *[f"- {n}" for n in notes(report)],
        "",
        "```",
        text_tables(report),
        "```",
    ]
    profile = print_profile(report)
    if profile:
        head += ["", "```", profile, "```"]
    return "\n".join(head) + "\n"


def as_json(report: Report) -> dict[str, Any]:
    return {
        "started": report.started.isoformat(),
        "seconds": report.seconds,
        "machine": machine(),
        "versions": report.versions,
        "rounds": report.rounds,
        "server_processes": report.server_processes,
        "cells": [r.as_json() for r in report.results],
        "summary": [
            {k: v for k, v in row.items() if k in ("system", "cell", "rounds", "errors")}
            | {key: row[f"{key}_json"] for _, key, _, _ in FIGURES}
            for row in summary(report.results)
        ],
        "ratios": [
            {"ratio": name, "cell": label} | v.as_json()
            for name, label, v in ratios(report.results)
        ],
        "idle": [
            to_jsonable(i) | {"per_connection_kib": i.per_connection_kib} for i in report.idle
        ],
        "targets": [
            {"target": n, "measured": m, "wanted": w, "met": ok} for n, m, w, ok in targets(report)
        ],
        "skipped": report.skipped,
    }


# -- the run --------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    raise KeyboardInterrupt(f"signal {signum}")


QUIET_SHARE = 0.25  # of one core: busier than this, someone else is using the machine


def wait_quiet(limit: float, quiet: bool) -> float:
    """Wait (at most ``limit`` seconds) for 3 quiet seconds in a row; the last busy share.

    Every figure here shares the machine's cores; another job running beside
    the benchmark would show up as a slower relay.
    """
    deadline, calm, share = time.monotonic() + limit, 0, 0.0
    while time.monotonic() < deadline and calm < 3:
        before = machine_busy_seconds()
        time.sleep(1.0)
        share = machine_busy_seconds() - before
        calm = calm + 1 if share < QUIET_SHARE else 0
    if share >= QUIET_SHARE and not quiet:
        print(
            f"[bench] WARNING: the machine is busy ({100 * share:.0f}% of a core) with "
            "something else; figures will be lower than on a quiet machine",
            file=sys.stderr,
        )
    return share


def run_all(ctx: Context, report: Report) -> None:
    args = ctx.args
    if "postfix" in args.systems and ctx.postfix_skip:
        report.skipped["postfix"] = ctx.postfix_skip
    for round_, cell, system in schedule(args):
        if system == "postfix" and ctx.postfix_skip:
            continue
        target = (cell.size, cell.concurrency, cell.mode) == TARGET
        # py-spy once (the first round): its samples are about where time goes, not how much.
        profiled = system == "relay-starttls" and target and round_ == 1
        with stage(f"round {round_}/{args.rounds}: {system} {cell.label}", args.quiet):
            report.results.append(
                run_cell(ctx, system, cell, report.profile if profiled else None, round_)
            )
    if args.idle > 0:
        for system in args.idle_systems:
            with stage(f"idle: {args.idle} sessions on {system}", args.quiet):
                report.idle.append(idle_test(ctx, system))


def cleanup() -> list[int]:
    """Stop any client or helper process still alive, and any Postfix master of ours.

    Returns the masters that had to be killed here (none, when every context
    manager did its job)."""
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
    left = postfix_masters_left() if Path(POSTFIX).exists() else []
    for pid in left:
        for each in process_tree(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
    return left


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job ignores it
        signal.signal(sig, _interrupt)
    ctx = Context(args)
    began = time.monotonic()
    profile = None
    if not args.no_profile and "relay-starttls" in args.systems:
        profile = (args.profile or Path(tempfile.mkdtemp(prefix="relay-profile-"))).resolve()
        profile = profile / "relay-starttls-target.txt"
    report = Report([], [], {}, {}, profile, dt.datetime.now(dt.UTC))
    report.client_processes = args.client_processes
    report.rounds, report.latency_ms = args.rounds, args.latency_ms
    report.server_processes = args.server_processes
    try:
        if "postfix" in args.systems:
            ctx.postfix_skip = ensure_postfix(args.postfix_install, args.quiet)
            ctx.postfix_version = "" if ctx.postfix_skip else postfix_version()
        if args.wait_quiet > 0:
            with stage("waiting for a quiet machine", args.quiet):
                report.busy_at_start = wait_quiet(args.wait_quiet, args.quiet)
        report.loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        run_all(ctx, report)
    finally:
        left = cleanup()
        if left:
            print(f"WARNING: had to kill Postfix master(s) left running: {left}", file=sys.stderr)
    report.seconds = time.monotonic() - began
    report.versions = collect_versions(args, ctx)
    output(args, report)
    failed = [(r.system, r.cell.label, p) for r in report.results for p in r.problems]
    for system, label, problem in failed:
        print(f"FAILED ({system} {label}): {problem}", file=sys.stderr)
    return 1 if failed else 0


def output(args: argparse.Namespace, report: Report) -> None:
    if args.json:
        print(json.dumps(to_jsonable(as_json(report)), indent=2, default=str))
    else:
        print("\n".join(f"# {n}" for n in notes(report)))
        print(f"# machine: {machine()}")
        print("# versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()))
        print()
        print(text_tables(report))
        profile = print_profile(report)
        if profile:
            print()
            print(profile)
    if not args.no_results:
        args.results.write_text(markdown(report))
        if not args.quiet:
            print(f"[bench] wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("[bench] interrupted; everything it started is stopped", file=sys.stderr)
        sys.exit(130)
