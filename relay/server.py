"""``relay serve``: logging, the event loop (uvloop), and several processes.

``[server] processes`` is "auto" by default: one process per core (a single
asyncio loop holds one core at most, and the SMTP front is CPU-bound). With
``--processes N`` each process binds the listeners itself with
SO_REUSEPORT, so the kernel spreads connections among them; they share the
queue through the database. The parent only supervises: SIGTERM is passed
on, and the parent exits non-zero if any child did. A child dies with the
parent (PR_SET_PDEATHSIG): a supervisor killed with SIGKILL leaves no process
serving the listeners behind it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
from dataclasses import replace
from typing import Any

from relay.core.errors import RelayError
from relay.core.settings import Settings, resolve_processes


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.server.log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.server.log_level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request at INFO ("HTTP Request: POST ..."): a line per
    # delivery that says less than our own, and 2% of the delivery CPU. Shown
    # at DEBUG only.
    if root.level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _run_one(settings: Settings, index: int = 0) -> int:
    import uvloop

    from relay.app import run

    setup_logging(settings)
    try:
        uvloop.run(run(settings, process_index=index))
    except RelayError as exc:
        logging.getLogger("relay").error("%s", exc)
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    return 0


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this child when its parent exits, however it exits.

    The parent passes SIGTERM on; but a parent killed outright (SIGKILL, the
    OOM killer) cannot, and children left behind would keep accepting on the
    shared SO_REUSEPORT port beside a restarted relay. Elsewhere: nothing."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took hold
        os._exit(1)


def _child(settings: Settings, index: int, parent: int) -> None:
    if sys.platform.startswith("linux"):
        _die_with_parent(parent)
    if index > 0:  # one process serves /metrics and the admin API
        settings = replace(settings, admin=replace(settings.admin, listen=""))
    sys.exit(_run_one(settings, index))


def _shared_metrics_dir(settings: Settings) -> None:
    """One scrape shows the sum of every process (prometheus-client multiprocess mode).

    The directory must exist and be empty before the processes start; they
    inherit its name through the environment.
    """
    path = settings.var_path.resolve() / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def _prepare(settings: Settings) -> None:
    """Make once, before the processes start, what each would otherwise race to
    make on a fresh start: var/ and its modes, the schema, the self-signed
    certificate and the secret key. (Two processes migrating a new database at
    once, or each writing half of a certificate and key pair, fail to start.)
    Each process still checks them at its own start; by then they exist."""
    from relay.core.crypto import secret_box
    from relay.core.files import secure_var
    from relay.smtp.tls import certificate_paths
    from relay.store.engine import make_engine, migrate

    secure_var(settings.var_path)
    engine = make_engine(settings.database.url, settings.database.pool_size)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    certificate_paths(settings)
    secret_box(settings)


def serve(settings: Settings, processes: int | str | None = None) -> int:
    """Run ``processes`` (else ``[server] processes``; "auto": one per core)."""
    count = resolve_processes(processes or settings.server.processes)
    if count < 1:
        print("relay: error: --processes must be at least 1", file=sys.stderr)
        return 2
    # From here on the settings carry the number: the app binds with
    # SO_REUSEPORT only when it is one of several.
    settings = replace(settings, server=replace(settings.server, processes=count))
    if count == 1:
        return _run_one(settings)
    try:
        _prepare(settings)
    except RelayError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    _shared_metrics_dir(settings)
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_child, args=(settings, i, os.getpid()), name=f"relay-{i}")
        for i in range(count)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.is_alive() and child.pid:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        child.join()
        if child.exitcode:
            status = 1
            forward(signal.SIGTERM, None)
    return status
