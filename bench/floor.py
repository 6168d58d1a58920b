"""The floor: a bare aiosmtpd server that accepts every message and discards it.

No AUTH, no TLS, no storage, no parsing: what the relay's SMTP front would
cost if it did nothing else. Same event loop (uvloop) and, with
``--processes N``, the same SO_REUSEPORT process model as ``relay serve``.
It also serves as the SMTP sink Postfix relays to in ``bench/compare.py``.

    .venv/bin/python bench/floor.py --port 2600 [--processes 2] [--count-file F]

On SIGTERM or SIGINT each process stops; with ``--count-file`` each appends
the number of messages it accepted (one line per process).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

HOSTNAME = "floor.bench.test"  # given, so aiosmtpd never calls getfqdn() per connection


class Discard:
    """The handler: 250 to every DATA, nothing kept but a count."""

    def __init__(self) -> None:
        self.accepted = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.accepted += 1
        return "250 2.0.0 Ok: discarded"


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    # IPPROTO_TCP explicitly, as the relay does (DESIGN.md: TCP_NODELAY pitfall).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(host: str, port: int, reuse_port: bool) -> int:
    """Serve until SIGTERM or SIGINT; the number of messages accepted."""
    loop = asyncio.get_running_loop()
    handler = Discard()
    sock = listening_socket(host, port, reuse_port)

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname=HOSTNAME,
            decode_data=False,
            enable_SMTPUTF8=True,
            data_size_limit=64 * 1024 * 1024,
            timeout=600,
        )

    server = await loop.create_server(factory, sock=sock, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    return handler.accepted


def run_one(host: str, port: int, reuse_port: bool, count_file: Path | None) -> None:
    import uvloop

    _raise_fd_limit()
    # aiosmtpd warns per dropped connection; a floor spends nothing on chatter.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    accepted = uvloop.run(serve(host, port, reuse_port))
    if count_file is not None:
        with open(count_file, "a") as fh:
            fh.write(f"{accepted}\n")


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="loopback address (127.0.0.1)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--processes", type=int, default=1, help="processes sharing the port (1)")
    p.add_argument("--count-file", type=Path, help="append each process's accepted count here")
    args = p.parse_args(argv)
    if not args.host.startswith("127.") and args.host != "::1":
        p.error("the floor accepts any mail: loopback only")
    if args.processes <= 1:
        run_one(args.host, args.port, False, args.count_file)
        return 0
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=run_one, args=(args.host, args.port, True, args.count_file))
        for _ in range(args.processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.pid and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
