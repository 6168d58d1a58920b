"""Shared benchmark machinery: a relay under test, a load client, and measurement.

Everything here talks to 127.0.0.1 only, and every loop is bounded in count and
time. The pieces are independent so other benchmarks (bench/compare.py against
Postfix or a bare aiosmtpd) can reuse the client and the /proc measurement with
a server they start themselves:

* ``RelayServer``: ``relay serve --config`` as a subprocess, on free loopback
  ports, with a temporary var dir and SQLite file (or a given database URL).
* ``seed_tenant``: an agency, a sub-account, a sending domain, one credential,
  the domain verified as sender, and an outbox provider as the default route,
  through ``relay.service`` (the functions the ``relay`` CLI calls).
* ``run_load``: P client processes, each one asyncio loop (uvloop) running C/P
  SMTP sessions: EHLO, STARTTLS, EHLO, AUTH PLAIN, then MAIL/RCPT/DATA K times.
  It times the final "." to the reply, per message.
* ``TreeMonitor``: CPU seconds and peak RSS of a process and its descendants,
  read from /proc, for any server (one process, a pre-fork pool, or Postfix).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import multiprocessing
import os
import queue as queue_mod
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

LOOPBACK = "127.0.0.1"
ClientKind = Literal["raw", "aiosmtplib"]

# -- numbers --------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default does."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Latency figures in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        ms = sorted(s * 1000.0 for s in seconds)
        if not ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(ms),
            sum(ms) / len(ms),
            percentile(ms, 50),
            percentile(ms, 90),
            percentile(ms, 99),
            ms[-1],
        )


# -- ports and processes ---------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (the kernel picks it; racy but fine on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (one per process with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def _stat_fields_path(path: str) -> list[str] | None:
    """A stat file after the command name (which may hold spaces and parentheses)."""
    try:
        with open(path) as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _stat_fields(pid: int) -> list[str] | None:
    return _stat_fields_path(f"/proc/{pid}/stat")


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes, including their reaped children.

    A child's time moves into its parent's cutime/cstime when it is reaped, so
    summing those fields over a live tree counts every exited process once:
    this keeps Postfix's short-lived smtpd processes in the figure.
    """
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / _TICK, system / _TICK


def thread_ticks(pids: Sequence[int]) -> dict[int, int]:
    """User+system clock ticks of every thread of these processes, by thread id."""
    out: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                fields = _stat_fields_path(f"/proc/{pid}/task/{tid}/stat")
                if fields is not None:
                    out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def hwm_bytes(pid: int) -> int:
    """The process's own peak RSS (VmHWM) since it started."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class TreeUsage:
    wall_seconds: float
    user_seconds: float
    system_seconds: float
    busiest_thread_share: float  # of one core: near 1.0 means a saturated event loop
    peak_rss_bytes: int  # highest sampled sum of RSS over the tree
    peak_hwm_bytes: int  # largest single process's VmHWM
    processes: int

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


class TreeMonitor:
    """Samples a process tree's CPU and RSS on a thread between start() and stop().

    RSS is summed over the tree (shared pages count once per process, as ``ps``
    would show them) and sampled every ``interval`` seconds, so a spike shorter
    than that can be missed; VmHWM of the largest process bounds it from below.
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pids: list[int] = []
        self._began = 0.0
        self._cpu0 = self._cpu = (0.0, 0.0)
        self._threads0: dict[int, int] = {}
        self._peak = 0
        self._seen: set[int] = set()

    def _sample(self) -> None:
        self._pids = process_tree(self.root)
        self._seen.update(self._pids)
        self._peak = max(self._peak, sum(rss_bytes(p) for p in self._pids))
        self._cpu = tree_cpu_seconds(self._pids)

    def start(self) -> None:
        self._sample()
        self._cpu0 = self._cpu
        self._threads0 = thread_ticks(self._pids)
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> TreeUsage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample()
        wall = max(time.monotonic() - self._began, 1e-9)
        threads = thread_ticks(self._pids)
        busiest = max((t - self._threads0.get(tid, 0) for tid, t in threads.items()), default=0)
        return TreeUsage(
            wall_seconds=wall,
            user_seconds=self._cpu[0] - self._cpu0[0],
            system_seconds=self._cpu[1] - self._cpu0[1],
            busiest_thread_share=busiest / _TICK / wall,
            peak_rss_bytes=self._peak,
            peak_hwm_bytes=max((hwm_bytes(p) for p in self._pids), default=0),
            processes=len(self._seen),
        )


# -- the relay under test ----------------------------------------------------------


def relay_command() -> list[str]:
    """The venv's ``relay`` script beside this interpreter, else ``python -m relay``."""
    script = Path(sys.executable).with_name("relay")
    return [str(script)] if script.exists() else [sys.executable, "-m", "relay"]


@dataclass
class RelayOptions:
    database_url: str = ""  # empty: a SQLite file in the temporary var dir
    processes: int | str = 1  # "auto": one per core, as the relay's default
    workers: bool = False  # delivery workers off: ingest alone is measured
    log_level: str = "INFO"
    argon2_time_cost: int | None = None  # None: the relay's default
    argon2_memory_kib: int | None = None
    hostname: str = "relay.bench.test"
    extra_toml: str = ""
    # More keys for [queue] and [limits] (those sections are already written,
    # and TOML refuses a table defined twice, so extra_toml cannot add to them).
    queue: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def relay_config(var_dir: Path, options: RelayOptions, ports: dict[str, int]) -> str:
    """The TOML for one run: STARTTLS-required submission, plaintext-AUTH alt, admin."""
    url = options.database_url or f"sqlite:///{var_dir / 'relay.db'}"
    lines = [
        "[database]",
        f"url = {_toml_string(url)}",
        "[server]",
        f"var_dir = {_toml_string(str(var_dir))}",
        f"hostname = {_toml_string(options.hostname)}",
        f"log_level = {_toml_string(options.log_level)}",
        "[listeners.submission]",
        f'listen = "{LOOPBACK}:{ports["submission"]}"',
        "[listeners.alt]",
        f'listen = "{LOOPBACK}:{ports["alt"]}"',
        "allow_plaintext_auth = true",
        "[admin]",
        f'listen = "{LOOPBACK}:{ports["admin"]}"',
        "[queue]",
        f"workers = {'true' if options.workers else 'false'}",
        *(f"{k} = {_toml_value(v)}" for k, v in options.queue.items() if k != "workers"),
        "[limits]",
        # The load comes from one address; the default cap per IP would refuse it.
        f"max_connections_per_ip = {int(options.limits.get('max_connections_per_ip', 100000))}",
        *(
            f"{k} = {_toml_value(v)}"
            for k, v in options.limits.items()
            if k != "max_connections_per_ip"
        ),
    ]
    auth = []
    if options.argon2_time_cost is not None:
        auth.append(f"argon2_time_cost = {options.argon2_time_cost}")
    if options.argon2_memory_kib is not None:
        auth.append(f"argon2_memory_kib = {options.argon2_memory_kib}")
    if auth:
        lines += ["[auth]", *auth]
    return "\n".join(lines) + "\n" + options.extra_toml


class RelayServer:
    """``relay serve`` in a subprocess with its own temporary var dir.

    Use as a context manager: the var dir and the process go away on exit.
    ``prepare()`` writes the config (so a tenant can be seeded before the
    server starts); ``start()`` launches it and waits until every server
    process listens and the greeting comes back.
    """

    def __init__(self, options: RelayOptions | None = None, keep: bool = False) -> None:
        self.options = options or RelayOptions()
        self.keep = keep
        self.var_dir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
        self.ports = {name: free_port() for name in ("submission", "alt", "admin")}
        self.config_path = self.var_dir / "relay.toml"
        self.log_path = self.var_dir / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path.write_text(relay_config(self.var_dir, self.options, self.ports))

    @property
    def database_url(self) -> str:
        return self.options.database_url or f"sqlite:///{self.var_dir / 'relay.db'}"

    @property
    def process_count(self) -> int:
        """The relay's processes ("auto" resolved as the relay resolves it)."""
        from relay.core.settings import resolve_processes

        return resolve_processes(self.options.processes)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the relay is not running"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        cmd = [*relay_command(), "--config", str(self.config_path), "serve"]
        cmd += ["--processes", str(self.options.processes)]  # explicit: the default is auto
        with open(self.log_path, "wb") as log:
            # Logs go to a file: a pipe nobody drains would stall the server.
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_without_relay_env(),
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        port = self.ports["submission"]
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"relay exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            # With --processes N every child binds its own SO_REUSEPORT socket.
            if listening_sockets(port) >= self.process_count and _greets(LOOPBACK, port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"relay not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def metrics(self) -> str:
        """/metrics of the first server process (the only one with the admin listener)."""
        url = f"http://{LOOPBACK}:{self.ports['admin']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (the relay drains), then SIGKILL the whole tree after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        tree = process_tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return self.proc.wait(5)

    def __enter__(self) -> RelayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if not self.keep:
            shutil.rmtree(self.var_dir, ignore_errors=True)


def _without_relay_env() -> dict[str, str]:
    # The config file alone decides (seed_tenant reads it the same way).
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}


def _greets(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def histogram_mean(metrics_text: str, name: str) -> tuple[float, int]:
    """(sum, count) of a Prometheus histogram in the text exposition format."""
    total, count = 0.0, 0
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_sum"):
            total = float(line.split()[-1])
        elif line.startswith(f"{name}_count"):
            count = int(float(line.split()[-1]))
    return total, count


# -- a tenant to send as -----------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    account: str
    domain: str
    username: str
    password: str
    sender: str
    recipient: str = "rcpt@example.org"


def seed_tenant(config_path: Path, tag: str | None = None) -> Tenant:
    """Agency, sub-account, domain, credential, verified sender and default provider.

    Names carry a random tag so several runs can share one database (PostgreSQL)
    and each run's messages can be counted by its own account.
    """
    from relay.auth.passwords import make_hasher
    from relay.core.crypto import secret_box
    from relay.core.settings import load_settings
    from relay.service import accounts, providers
    from relay.store.engine import make_engine, migrate

    tag = tag or secrets.token_hex(4)
    settings = load_settings(config_path, env={})
    engine = make_engine(settings.database.url)
    try:
        migrate(engine)
        agency, account, domain = f"bench-agency-{tag}", f"bench-{tag}", f"b{tag}.bench.test"
        accounts.create_account(engine, agency)
        accounts.create_account(engine, account, agency=agency)
        accounts.add_domain(engine, domain, account)
        cred = accounts.create_credential(engine, make_hasher(settings), f"app@{domain}", None)
        accounts.verify_sender(engine, f"*@{domain}", account)
        # An outbox route makes messages "queued" rather than "paused: no provider".
        outbox = str(settings.var_path / "outbox")
        provider = f"bench-outbox-{tag}"
        box = secret_box(settings)
        config = providers.ProviderConfig(provider, "outbox", {"directory": outbox}, {})
        providers.add_provider(engine, box, agency, config)
        providers.set_default(engine, provider, agency, "subaccounts")
    finally:
        engine.dispose()
    return Tenant(account, domain, cred.username, cred.password, f"app@{domain}")


def count_messages(database_url: str, account: str) -> Counter[str]:
    """Messages of ``account`` in the relay's database, by state."""
    from sqlalchemy import func, select

    from relay.store.engine import make_engine
    from relay.store.models import Account, Message

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Message.state, func.count())
                .join(Account, Account.id == Message.account_id)
                .where(Account.name == account)
                .group_by(Message.state)
            ).all()
    finally:
        engine.dispose()
    return Counter({str(state): int(n) for state, n in rows})


# -- the message -------------------------------------------------------------------


def make_message(size: int, sender: str, recipient: str) -> tuple[bytes, bytes]:
    """A message of about ``size`` bytes, split around a per-message sequence number.

    Already CRLF, no line starts with "." and it ends with CRLF, so it goes on
    the wire as is (no dot-stuffing cost in the client).
    """
    head = (
        f"From: Bench <{sender}>\r\nTo: <{recipient}>\r\nSubject: bench\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
        "X-Bench-Seq: "
    ).encode()
    tail_head = b"\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, 0123456789 times over again.\r\n"
    room = max(size - len(head) - 8 - len(tail_head), 0)
    body = line * (room // len(line))
    rest = room - len(body)
    if rest >= 3:
        body += b"x" * (rest - 2) + b"\r\n"
    return head, tail_head + body


# -- the load client ---------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    username: str  # empty: no AUTH (a bare server)
    password: str
    sender: str
    recipient: str
    messages: int = 1000
    concurrency: int = 10
    per_connection: int = 1
    size: int = 2048
    starttls: bool = True
    client: ClientKind = "raw"
    time_limit: float = 60.0  # no new message starts after this
    op_timeout: float = 30.0  # one reply, or one TLS handshake
    ehlo_name: str = "bench.client"
    # None: the greeting may take the whole open budget (4 x op_timeout). A
    # listener whose accept queue overflowed can leave a connection the client
    # thinks is open but the server never saw; this names and bounds that case.
    greeting_timeout: float | None = None


@dataclass
class WorkerResult:
    """What one client process measured."""

    index: int
    started: float = 0.0  # time.monotonic(): one clock for all processes on Linux
    finished: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # "." to 250, seconds
    setups: list[float] = field(default_factory=list)  # connect to 235, seconds
    replies: Counter[str] = field(default_factory=Counter)  # final reply code to DATA
    errors: Counter[str] = field(default_factory=Counter)  # failures before a DATA reply
    attempted: int = 0
    sessions: int = 0
    sequence: int = 0  # numbers the messages this process sent
    timed_out: bool = False


class NoGreeting(TimeoutError):
    """Connected, but the server never greeted (its accept queue dropped us)."""


class SMTPError(Exception):
    def __init__(self, stage: str, code: int, text: str) -> None:
        super().__init__(f"{stage}: {code} {text}")
        self.stage = stage
        self.code = code


def _client_tls() -> ssl.SSLContext:
    # The relay's certificate is self-signed: encrypt, but verify nothing.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ClientSession(Protocol):
    """One SMTP connection as the load loop drives it."""

    async def open(self) -> None: ...
    async def send(self, payload: bytes) -> tuple[int, float]: ...
    async def close(self) -> None: ...


class RawSession:
    """A minimal SMTP client on asyncio streams: no parsing beyond the reply code."""

    def __init__(self, spec: LoadSpec, tls: ssl.SSLContext) -> None:
        self.spec = spec
        self.tls = tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.auth = b"AUTH PLAIN " + base64.b64encode(
            f"\0{spec.username}\0{spec.password}".encode()
        )
        self.mail = f"MAIL FROM:<{spec.sender}>\r\n".encode()
        self.rcpt = f"RCPT TO:<{spec.recipient}>\r\n".encode()

    async def _reply(self) -> tuple[int, str]:
        assert self.reader is not None
        while True:
            line = await self.reader.readline()
            if len(line) < 4:
                raise ConnectionError("connection closed by the server")
            if line[3:4] != b"-":  # the last line of a multi-line reply
                return int(line[:3]), line[4:].decode(errors="replace").strip()

    async def _command(self, stage: str, line: bytes, expect: int) -> None:
        assert self.writer is not None
        self.writer.write(line)
        code, text = await self._reply()
        if code != expect:
            raise SMTPError(stage, code, text)

    async def open(self) -> None:
        spec = self.spec
        self.reader, self.writer = await asyncio.open_connection(spec.host, spec.port)
        try:
            code, text = await asyncio.wait_for(self._reply(), spec.greeting_timeout)
        except TimeoutError as exc:
            raise NoGreeting(f"no greeting within {spec.greeting_timeout}s") from exc
        if code != 220:
            raise SMTPError("greeting", code, text)
        ehlo = f"EHLO {spec.ehlo_name}\r\n".encode()
        await self._command("EHLO", ehlo, 250)
        if spec.starttls:
            await self._command("STARTTLS", b"STARTTLS\r\n", 220)
            await self.writer.start_tls(self.tls, ssl_handshake_timeout=spec.op_timeout)
            await self._command("EHLO", ehlo, 250)
        if spec.username:
            await self._command("AUTH", self.auth + b"\r\n", 235)

    async def send(self, payload: bytes) -> tuple[int, float]:
        assert self.writer is not None
        await self._command("MAIL", self.mail, 250)
        await self._command("RCPT", self.rcpt, 250)
        await self._command("DATA", b"DATA\r\n", 354)
        started = time.perf_counter()
        self.writer.write(payload)
        code, _ = await self._reply()
        elapsed = time.perf_counter() - started
        if code != 250:
            await self._command("RSET", b"RSET\r\n", 250)
        return code, elapsed

    async def close(self) -> None:
        if self.writer is None:
            return
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self._reply(), 2)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


class AiosmtplibSession:
    """The same conversation through aiosmtplib (heavier per command, but a real client)."""

    def __init__(self, spec: LoadSpec, tls: ssl.SSLContext) -> None:
        import aiosmtplib

        self.spec = spec
        self.tls = tls
        self.smtp = aiosmtplib.SMTP(
            hostname=spec.host,
            port=spec.port,
            start_tls=False,
            use_tls=False,
            tls_context=tls,
            timeout=spec.op_timeout,
            local_hostname=spec.ehlo_name,
        )

    async def open(self) -> None:
        await self.smtp.connect()
        await self.smtp.ehlo()
        if self.spec.starttls:
            await self.smtp.starttls(tls_context=self.tls)
            await self.smtp.ehlo()
        if self.spec.username:
            await self.smtp.auth_plain(self.spec.username, self.spec.password)

    async def send(self, payload: bytes) -> tuple[int, float]:
        smtp = self.smtp
        await smtp.mail(self.spec.sender)
        await smtp.rcpt(self.spec.recipient)
        # DATA by hand, so the clock starts at the final dot, as with RawSession.
        reply = await smtp.execute_command(b"DATA")
        if reply.code != 354:
            raise SMTPError("DATA", reply.code, reply.message)
        assert smtp.protocol is not None
        started = time.perf_counter()
        smtp.protocol.write(payload)
        reply = await smtp.protocol.read_response(timeout=self.spec.op_timeout)
        elapsed = time.perf_counter() - started
        if reply.code != 250:
            await smtp.rset()
        return reply.code, elapsed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.smtp.quit(), 2)
        self.smtp.close()


def _new_session(spec: LoadSpec, tls: ssl.SSLContext) -> ClientSession:
    return AiosmtplibSession(spec, tls) if spec.client == "aiosmtplib" else RawSession(spec, tls)


class _Budget:
    """Messages left for one process's sessions, handed out a connection's worth at a time.

    A connection's worth is ``per_connection``, or an even share of the cap when
    the cap is smaller than every session's worth: with 400 messages for 25
    persistent sessions of up to 1000, the first session took all 400 and the
    other 24 none, so a capped cell (the end-to-end ones) measured one session
    per client process instead of its concurrency.
    """

    def __init__(
        self, messages: int, per_connection: int, deadline: float, sessions: int = 1
    ) -> None:
        self.left = messages
        self.per_connection = min(per_connection, max(1, -(-messages // max(sessions, 1))))
        self.deadline = deadline

    def take(self) -> int:
        if self.left <= 0 or time.monotonic() >= self.deadline:
            return 0
        n = min(self.per_connection, self.left)
        self.left -= n
        return n


def _error_key(exc: BaseException) -> str:
    if isinstance(exc, SMTPError):
        return f"{exc.stage} {exc.code}"
    return type(exc).__name__


async def _one_connection(
    spec: LoadSpec,
    tls: ssl.SSLContext,
    n: int,
    payload: tuple[bytes, bytes],
    out: WorkerResult,
    deadline: float = math.inf,
) -> None:
    """One session sending up to ``n`` messages; none starts after ``deadline``."""
    session = _new_session(spec, tls)
    out.attempted += n
    sent = 0
    try:
        began = time.perf_counter()
        async with asyncio.timeout(spec.op_timeout * 4):  # connect+greeting+TLS+AUTH
            await session.open()
        out.setups.append(time.perf_counter() - began)
        out.sessions += 1
        head, tail = payload
        for _ in range(n):
            if time.monotonic() >= deadline:
                out.attempted -= n - sent  # never tried: neither accepted nor an error
                break
            # A distinct header per message, so no two queued messages are identical.
            out.sequence += 1
            seq = str(out.index * 1_000_000_000 + out.sequence).encode()
            async with asyncio.timeout(spec.op_timeout * 4):  # MAIL, RCPT, DATA, "."
                code, elapsed = await session.send(head + seq + tail + b".\r\n")
            sent += 1
            out.replies[str(code)] += 1
            if code == 250:
                out.latencies.append(elapsed)
    except Exception as exc:  # one session's fault must not end the run
        out.errors[_error_key(exc)] += n - sent
    finally:
        await session.close()


async def _session_loop(
    spec: LoadSpec,
    tls: ssl.SSLContext,
    budget: _Budget,
    payload: tuple[bytes, bytes],
    out: WorkerResult,
) -> None:
    # Bounded: each pass consumes at least one message of a finite budget.
    while n := budget.take():
        await _one_connection(spec, tls, n, payload, out, budget.deadline)


async def _drive(spec: LoadSpec, out: WorkerResult) -> None:
    tls = _client_tls()
    payload = make_message(spec.size, spec.sender, spec.recipient)
    budget = _Budget(
        spec.messages, spec.per_connection, time.monotonic() + spec.time_limit, spec.concurrency
    )
    tasks = [
        asyncio.create_task(_session_loop(spec, tls, budget, payload, out))
        for _ in range(spec.concurrency)
    ]
    await asyncio.gather(*tasks)
    out.timed_out = budget.left > 0


async def _warm(spec: LoadSpec, connections: int, each: int) -> WorkerResult:
    tls = _client_tls()
    payload = make_message(spec.size, spec.sender, spec.recipient)
    out = WorkerResult(index=999)
    # The first login alone pays the slow hash and fills the login cache.
    await _one_connection(spec, tls, each, payload, out)
    rest = (_one_connection(spec, tls, each, payload, out) for _ in range(connections - 1))
    await asyncio.gather(*rest)
    return out


def warm_up(spec: LoadSpec, connections: int = 8, each: int = 1) -> WorkerResult:
    """A few sessions before the measured run: login cache, TLS, SQL statement caches.

    With several server processes, ``connections`` should be a few times their
    number so that SO_REUSEPORT hands each process some of them.
    """
    return asyncio.run(_warm(spec, max(connections, 1), each))


def _cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_worker(spec: LoadSpec, index: int = 0) -> WorkerResult:
    """One client process's load, on uvloop when it is installed."""
    out = WorkerResult(index)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency of the relay
        runner = asyncio.run
    cpu0 = _cpu_now()
    out.started = time.monotonic()
    if spec.messages > 0 and spec.concurrency > 0:
        runner(_drive(spec, out))
    out.finished = time.monotonic()
    out.cpu_seconds = _cpu_now() - cpu0
    return out


def _worker_main(spec: LoadSpec, index: int, barrier: Any, results: Any) -> None:
    # Import and set up first, then wait, so all processes start the load together.
    make_message(spec.size, spec.sender, spec.recipient)
    try:
        barrier.wait(60)
        results.put(run_worker(spec, index))
    except BaseException as exc:  # report rather than die silently
        failed = WorkerResult(index)
        failed.errors[f"client crashed: {type(exc).__name__}: {exc}"] += spec.messages
        results.put(failed)


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as integers allow."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class LoadResult:
    spec: LoadSpec
    processes: int
    workers: list[WorkerResult]
    wall_seconds: float

    @property
    def accepted(self) -> int:
        return sum(w.replies["250"] for w in self.workers)

    @property
    def attempted(self) -> int:
        return sum(w.attempted for w in self.workers)

    @property
    def errors(self) -> int:
        """Messages that did not get a 250: other replies, and failed sessions."""
        other = sum(n for w in self.workers for code, n in w.replies.items() if code != "250")
        return other + sum(sum(w.errors.values()) for w in self.workers)

    @property
    def error_kinds(self) -> Counter[str]:
        kinds: Counter[str] = Counter()
        for w in self.workers:
            kinds.update({f"reply {c}": n for c, n in w.replies.items() if c != "250"})
            kinds.update(w.errors)
        return kinds

    @property
    def latency(self) -> Summary:
        return Summary.of([x for w in self.workers for x in w.latencies])

    @property
    def setup(self) -> Summary:
        return Summary.of([x for w in self.workers for x in w.setups])

    @property
    def client_cpu_seconds(self) -> float:
        return sum(w.cpu_seconds for w in self.workers)

    @property
    def client_busiest(self) -> float:
        """The busiest client process's CPU share of the wall time (1.0 = one core)."""
        shares = [w.cpu_seconds / max(w.finished - w.started, 1e-9) for w in self.workers]
        return max(shares, default=0.0)

    @property
    def rate(self) -> float:
        return self.accepted / self.wall_seconds if self.wall_seconds > 0 else 0.0


def _per_process_specs(spec: LoadSpec, processes: int) -> list[LoadSpec]:
    processes = max(1, min(processes, spec.concurrency, max(spec.messages, 1)))
    return [
        replace(spec, concurrency=c, messages=m)
        for c, m in zip(
            split(spec.concurrency, processes), split(spec.messages, processes), strict=True
        )
    ]


def run_load(
    spec: LoadSpec, processes: int = 2, on_start: Callable[[], None] | None = None
) -> LoadResult:
    """Run ``spec`` from ``processes`` client processes started together.

    ``on_start`` is called just before the processes are released (to start a
    server-side monitor at the same moment). Bounded by the spec's time limit
    plus the timeouts of what was in flight; a stuck process is killed.
    """
    specs = _per_process_specs(spec, processes)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(specs) + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(s, i, barrier, results), name=f"bench-client-{i}")
        for i, s in enumerate(specs)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(120)
    except threading.BrokenBarrierError as exc:
        _kill(procs)
        raise RuntimeError("client processes did not start") from exc
    if on_start is not None:
        on_start()
    workers = _collect(results, specs, spec.time_limit + spec.op_timeout * 5)
    for p in procs:
        p.join(10)
    _kill(procs)
    wall = max((w.finished for w in workers), default=0.0) - min(
        (w.started for w in workers if w.started), default=0.0
    )
    return LoadResult(spec, len(specs), workers, max(wall, 0.0))


def _collect(results: Any, specs: list[LoadSpec], timeout: float) -> list[WorkerResult]:
    deadline = time.monotonic() + timeout
    workers: list[WorkerResult] = []
    while len(workers) < len(specs):
        try:
            workers.append(results.get(timeout=max(deadline - time.monotonic(), 0.1)))
        except queue_mod.Empty:
            break
    missing = set(range(len(specs))) - {w.index for w in workers}
    for index in sorted(missing):
        lost = WorkerResult(index)
        lost.errors["client process hung (killed)"] += specs[index].messages
        workers.append(lost)
    return sorted(workers, key=lambda w: w.index)


def _kill(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)


# -- profiling ------------------------------------------------------------------------


class PySpy:
    """``py-spy record`` on a running process (and its children), collapsed-stack output.

    Non-blocking sampling: the target is not paused, so the figures it takes
    part in stay honest (at the price of an occasional torn stack).
    """

    def __init__(self, pid: int, output: Path, rate: int = 100, gil_only: bool = False) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.output = output
        self.cmd = [exe, "record", "-p", str(pid), "-o", str(output), "-f", "raw"]
        self.cmd += ["-r", str(rate), "--subprocesses", "--nonblocking", "--nolineno"]
        if gil_only:
            self.cmd.append("--gil")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")


def hot_spots(collapsed: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, inclusive %, self %) from a collapsed-stack file, by inclusive share."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):  # a recursive function counts once per sample
            inclusive[frame] += n
    if not total:
        return []
    return [(f, 100 * n / total, 100 * own[f] / total) for f, n in inclusive.most_common(top)]


# -- output --------------------------------------------------------------------------


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain text table; ``columns`` are (key, header) pairs, floats get 1-2 decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    table = [[h for _, h in columns]] + [[cell(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mib(n: int) -> float:
    return n / (1024 * 1024)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses and Counters as plain JSON values."""
    if hasattr(obj, "__dataclass_fields__"):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


@contextlib.contextmanager
def stage(name: str, quiet: bool = False) -> Iterator[None]:
    """Progress on stderr, so stdout stays the table (or the JSON)."""
    began = time.monotonic()
    if not quiet:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    yield
    if not quiet:
        print(f"[bench] {name}: {time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)


# -- memory that sums honestly over many processes -------------------------------------


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages split among their sharers.

    Summing RSS over Postfix's dozens of processes counts libc and friends once
    per process; PSS sums to what the tree really occupies. Falls back to RSS
    where smaps_rollup is unreadable.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss_bytes(pid)


class MemoryMonitor(TreeMonitor):
    """A TreeMonitor that also keeps the peak of the tree's summed PSS."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        super().__init__(root, interval)
        self.peak_pss_bytes = 0

    def _sample(self) -> None:
        super()._sample()
        self.peak_pss_bytes = max(self.peak_pss_bytes, sum(pss_bytes(p) for p in self._pids))


def tree_pss_bytes(root: int) -> int:
    return sum(pss_bytes(p) for p in process_tree(root))


def raise_fd_limit(wanted: int = 1 << 20) -> int:
    """Lift this process's soft RLIMIT_NOFILE towards the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pid_listening_on(port: int) -> int | None:
    """The process holding a listening TCP socket on ``port`` (to watch PostgreSQL's CPU)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                        return int(entry)
    return None


# -- PostgreSQL: a database of its own per run ------------------------------------------


def _pg_maintenance(url: str) -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        dbname="postgres",
        connect_timeout=10,
        autocommit=True,
    )


def fresh_postgres_database(url: str, prefix: str = "relay_bench") -> str:
    """A new empty database on ``url``'s server; the URL that points at it."""
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{secrets.token_hex(6)}"
    with _pg_maintenance(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return str(make_url(url).set(database=name).render_as_string(hide_password=False))


def drop_postgres_database(url: str) -> None:
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    if not name or not name.startswith("relay_bench"):
        raise ValueError(f"refusing to drop database {name!r}")
    with _pg_maintenance(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def postgres_port(url: str) -> int:
    from sqlalchemy.engine import make_url

    return int(make_url(url).port or 5432)


def database_version(url: str) -> str:
    """'SQLite 3.x' or 'PostgreSQL 15.x', as the relay's driver reports it."""
    from sqlalchemy import text

    from relay.store.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                return f"SQLite {conn.execute(text('select sqlite_version()')).scalar()}"
            return f"PostgreSQL {conn.execute(text('show server_version')).scalar()}"
    finally:
        engine.dispose()


# -- the provider emulator in a process of its own ---------------------------------------

EMULATOR_API_KEY = "SG.relay-bench-key-0123456789"


class _Forgetful(list[Any]):
    """A list that counts what is appended and keeps nothing.

    The emulator remembers every request for tests to inspect; a benchmark
    sends thousands of 100 KB messages and only needs the count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.appended = 0

    def append(self, item: Any) -> None:
        self.appended += 1


def _add_latency(emulator: Any, seconds: float) -> None:
    """A constant delay on every API request and every SMTP DATA.

    ``ApiState.stall(seconds, count)`` cannot do this: ``misbehave`` keeps
    taking the same stall fault while its count lasts, so the first request
    sleeps count x seconds and the rest none. Until the emulator has a
    per-request latency, the bound methods are wrapped on the instances.
    """
    if seconds <= 0:
        return
    for state in (emulator.sendgrid, emulator.sparkpost):
        original = state.misbehave

        async def delayed(original: Any = original) -> Any:
            await asyncio.sleep(seconds)
            return await original()

        state.misbehave = delayed
    sink = emulator.smtp
    original_data = sink.handle_DATA

    async def data(server: Any, session: Any, envelope: Any) -> Any:
        await asyncio.sleep(seconds)
        return await original_data(server, session, envelope)

    sink.handle_DATA = data  # aiosmtpd looks the hook up on the instance per connection


async def _emulator_serve(latency: float, conn: Any, max_lifetime: float) -> None:
    from relay.emulator import serve_emulator

    emulator = await serve_emulator(api_key=EMULATOR_API_KEY)
    emulator.sendgrid.received = _Forgetful()
    emulator.sparkpost.received = _Forgetful()
    emulator.smtp.messages = _Forgetful()
    _add_latency(emulator, latency)
    conn.send(
        {
            "sendgrid": emulator.sendgrid_port,
            "sparkpost": emulator.sparkpost_port,
            "smtp": emulator.smtp_port,
        }
    )
    parent, deadline = os.getppid(), time.monotonic() + max_lifetime
    try:
        # Bounded: stops when told, when the parent is gone, or at max_lifetime.
        while time.monotonic() < deadline and os.getppid() == parent:
            if conn.poll():
                conn.recv()
                break
            await asyncio.sleep(0.2)
        counts = {
            "api_requests": emulator.sendgrid.received.appended
            + emulator.sparkpost.received.appended,
            "smtp_messages": emulator.smtp.messages.appended,
            "smtp_connections": emulator.smtp.connections,
        }
        conn.send(counts)
    finally:
        await emulator.aclose()


def _emulator_main(latency: float, conn: Any, max_lifetime: float) -> None:
    import logging

    import uvloop

    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(_emulator_serve(latency, conn, max_lifetime))


class EmulatorProcess:
    """``serve_emulator`` in a spawned process (its CPU is watched apart from the relay's).

    ``latency`` (seconds) delays every API request and SMTP DATA reply.
    """

    def __init__(self, latency: float = 0.0, max_lifetime: float = 3600.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.latency = latency
        self.proc = ctx.Process(
            target=_emulator_main, args=(latency, child, max_lifetime), name="bench-emulator"
        )
        self.ports: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        self.proc.start()
        if not self._conn.poll(timeout):
            self.stop()
            raise RuntimeError("the emulator did not start")
        self.ports = self._conn.recv()

    def provider_options(self, kind: str) -> dict[str, Any]:
        """Options and secrets for a provider of ``kind`` aimed at this emulator."""
        options: dict[str, Any] = {
            "smtp_host": LOOPBACK,
            "smtp_port": self.ports["smtp"],
            "smtp_tls": "none",
            "smtp_user": "apikey",
        }
        if kind in ("sendgrid", "sparkpost"):
            options["api_url"] = f"http://{LOOPBACK}:{self.ports[kind]}"
        return options

    def stop(self) -> dict[str, int]:
        if self.proc.is_alive():
            with contextlib.suppress(OSError, EOFError):
                self._conn.send("stop")
                if self._conn.poll(10):
                    self.counts = self._conn.recv()
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        return self.counts

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_emulated_provider(
    config_path: Path, tenant: Tenant, emulator: EmulatorProcess, kind: str, **extra: Any
) -> int:
    """A provider of ``kind`` on the tenant's agency, aimed at the emulator, made the
    default for its sub-accounts (so accepted mail routes to it). Its id."""
    from relay.core.crypto import secret_box
    from relay.core.settings import load_settings
    from relay.service import providers
    from relay.store.engine import make_engine

    settings = load_settings(config_path, env={})
    engine = make_engine(settings.database.url)
    name = f"bench-{kind}-{secrets.token_hex(3)}"
    agency = tenant.account.replace("bench-", "bench-agency-", 1)
    options = {**emulator.provider_options(kind), **extra}
    secret = {"api_key": EMULATOR_API_KEY} if kind != "smtp" else {}
    secret["smtp_password"] = EMULATOR_API_KEY
    try:
        config = providers.ProviderConfig(name, kind, options, secret)
        row = providers.add_provider(engine, secret_box(settings), agency, config)
        providers.set_default(engine, name, agency, "subaccounts")
        return int(row.id)
    finally:
        engine.dispose()


# -- a full queue, held until released ---------------------------------------------------

HELD_UNTIL = 365 * 86400.0  # seconds in the future a held message is next due


def fill_queue(
    database_url: str, tenant: Tenant, provider_id: int, messages: int, size: int, chunk: int = 500
) -> float:
    """``messages`` queued messages for ``tenant`` via the spool's own ``write_batch``,
    held (not due) so that delivery starts only at :func:`release_queue`. Seconds taken."""
    import datetime as dt

    from sqlalchemy import select, update

    from relay.queue.spool import Acceptance, write_batch
    from relay.store.engine import make_engine
    from relay.store.models import Account, Message

    began = time.monotonic()
    engine = make_engine(database_url)
    head, tail = make_message(size, tenant.sender, tenant.recipient)
    try:
        with engine.connect() as conn:
            account_id = conn.execute(
                select(Account.id).where(Account.name == tenant.account)
            ).scalar_one()
        for start in range(0, messages, chunk):
            batch = [
                Acceptance(
                    account_id=account_id,
                    mail_from=tenant.sender,
                    recipients=[(tenant.recipient, "to")],
                    data=head + str(i).encode() + tail,
                    provider_id=provider_id,
                    header_from=tenant.sender,
                    account_name=tenant.account,
                )
                for i in range(start, min(start + chunk, messages))
            ]
            write_batch(engine, batch, 86400.0)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=HELD_UNTIL)
        with engine.begin() as conn:
            conn.execute(
                update(Message)
                .where(Message.account_id == account_id)
                .values(next_attempt_at=later)
            )
    finally:
        engine.dispose()
    return time.monotonic() - began


def release_queue(database_url: str, account: str) -> float:
    """Make the held messages due now; the wall-clock time (epoch seconds) of the release."""
    import datetime as dt

    from sqlalchemy import select, update

    from relay.store.engine import make_engine
    from relay.store.models import Account, Message

    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            account_id = select(Account.id).where(Account.name == account).scalar_subquery()
            now = dt.datetime.now(dt.UTC)
            conn.execute(
                update(Message)
                .where(Message.account_id == account_id, Message.state == "queued")
                .values(next_attempt_at=now)
            )
    finally:
        engine.dispose()
    return now.timestamp()


@dataclass
class DeliveryStats:
    """What the relay's own tables say about one account's messages."""

    states: dict[str, int]
    attempts: dict[str, int]  # attempt rows by transport:result
    first_finished: float | None  # epoch seconds
    last_finished: float | None
    first_created: float | None

    @property
    def delivered(self) -> int:
        return self.states.get("delivered", 0)

    @property
    def pending(self) -> int:
        return sum(self.states.get(s, 0) for s in ("queued", "deferred"))

    @property
    def rate(self) -> float:
        """Messages per second from the first delivery to the last."""
        if self.first_finished is None or self.last_finished is None or self.delivered < 2:
            return math.nan
        return (self.delivered - 1) / max(self.last_finished - self.first_finished, 1e-6)


class QueueWatch:
    """Polls one account's messages by state, with one engine for the whole watch."""

    def __init__(self, database_url: str, account: str) -> None:
        from relay.store.engine import make_engine

        self.engine = make_engine(database_url, pool_size=1)
        self.account = account

    def states(self) -> Counter[str]:
        from sqlalchemy import func, select

        from relay.store.models import Account, Message

        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Message.state, func.count())
                .join(Account, Account.id == Message.account_id)
                .where(Account.name == self.account)
                .group_by(Message.state)
            ).all()
        return Counter({str(state): int(n) for state, n in rows})

    def wait_empty(self, timeout: float, interval: float = 0.1) -> tuple[bool, float]:
        """Until nothing is queued or deferred: (emptied, epoch seconds when seen)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if states.get("queued", 0) + states.get("deferred", 0) == 0:
                return True, time.time()
            if time.monotonic() >= deadline:
                return False, time.time()
            time.sleep(interval)

    def stats(self) -> DeliveryStats:
        from sqlalchemy import func, select

        from relay.store.models import Account, Attempt, Message

        with self.engine.connect() as conn:
            account_id = conn.execute(
                select(Account.id).where(Account.name == self.account)
            ).scalar_one()
            mine = Message.account_id == account_id
            first, last, created = conn.execute(
                select(
                    func.min(Message.finished_at),
                    func.max(Message.finished_at),
                    func.min(Message.created_at),
                ).where(mine)
            ).one()
            attempts = conn.execute(
                select(Attempt.transport, Attempt.result, func.count())
                .join(Message, Message.id == Attempt.message_id)
                .where(mine)
                .group_by(Attempt.transport, Attempt.result)
            ).all()
        return DeliveryStats(
            dict(self.states()),
            {f"{t}:{r}": int(n) for t, r, n in attempts},
            _epoch(first),
            _epoch(last),
            _epoch(created),
        )

    def close(self) -> None:
        self.engine.dispose()


def _epoch(value: Any) -> float | None:
    """A datetime from the database as epoch seconds (min/max lose the column type)."""
    import datetime as dt

    if value is None:
        return None
    if isinstance(value, str):  # SQLite's aggregate returns the stored text
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return float(value.timestamp())


# -- profile stages ------------------------------------------------------------------------

Stages = Sequence[tuple[str, tuple[str, ...]]]  # (stage name, frame markers)
# py-spy --threads names each stack's thread; these prefixes say what it is.
THREAD_KINDS = (
    ("MainThread", "event loop thread"),
    ("spool", "spool writer thread"),
    ("outcomes", "outcome writer thread"),
    ("uvloop_", "to_thread pool"),
    ("asyncio_", "to_thread pool"),
)


def stage_shares(
    collapsed: Path, *tables: Stages
) -> tuple[list[tuple[str, float]], dict[str, float], int]:
    """Share of samples (%) per stage and per kind of thread, and the sample count.

    A sample belongs to the stage of its innermost frame that carries one of
    the markers of the first table where any frame does. So a first table can
    claim samples whatever they called (a cost hidden inside a library call),
    and a last one catch torn stacks (py-spy reads a running process without
    pausing it, and a stack sometimes lacks its callers).
    """
    by_stage: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        by_thread[_thread_kind(frames)] += int(count)
        by_stage[_stage_of(frames, tables)] += int(count)
    total = sum(by_stage.values())
    if not total:
        return [], {}, 0
    shares = [(k, 100 * v / total) for k, v in by_stage.most_common()]
    return shares, {k: 100 * v / total for k, v in by_thread.items()}, total


def _stage_of(frames: list[str], tables: Sequence[Stages]) -> str:
    for table in tables:
        for frame in reversed(frames):
            for name, markers in table:
                if any(m in frame for m in markers):
                    return name
    return "other"


def _thread_kind(frames: list[str]) -> str:
    thread = next((f for f in frames if f.startswith("thread (")), "")
    name = thread.partition(": ")[2]
    return next((kind for prefix, kind in THREAD_KINDS if name.startswith(prefix)), "other threads")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICK


def relay_revision() -> str:
    """The git commit the relay under test is at ('+dirty' with uncommitted edits)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "relay"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
