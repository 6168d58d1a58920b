"""Stall benchmark: does one hostile message hold the event loop for everyone?

One client sends a worst-case message while another, already authenticated
session measures its own command round trips (NOOP after NOOP) for as long as
the first transfer and its reply take. Printed per case: the attacker's reply
and time, then the probe's round trips p50/p99/max (and a quiet baseline
first). Issue 10 asks: the probe's p99 stays under 100 ms whatever the other
client sends; Relay hands the loop back at least every few milliseconds.

Cases:
  header     the filed case: a 12.5 MB header section of tiny fields (refused
             as soon as max_headers is passed, never parsed)
  at-limit   the most that is accepted and parsed: just under max_headers
             fields, just under max_header_bytes, folded, one To field
             with ten thousand addresses
  small      a 240 KB message that is all header: a To field of 11,000 addresses
  body       a 20 MB body of two-byte lines, dot-stuffed (".." lines)
  bare-cr    a 20 MB body of bare CRs, 400 to a line (each becomes a line end)

    .venv/bin/python bench/stall.py                      # every case
    .venv/bin/python bench/stall.py --case header --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import smtplib
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import LOOPBACK, RelayOptions, RelayServer, Summary, Tenant, seed_tenant, stage

MIB = 1024 * 1024


def worst_case(case: str, sender: str, scale: float = 1.0) -> bytes:
    head = f"From: <{sender}>\r\nTo: rcpt@example.org\r\nSubject: stall\r\n".encode()
    if case == "header":
        return head + b"A: b\r\n" * int(12.5 * 1000 * 1000 * scale / 6) + b"\r\nbody\r\n"
    if case == "at-limit":
        folded = b"X-Fold: " + b"\r\n ".join([b"v" * 70] * 12) + b"\r\n"  # ~870 bytes
        many = b"To: " + b",\r\n ".join(b"r%05d@example.org" % i for i in range(10000)) + b"\r\n"
        fields = folded * ((MIB - len(many) - 4096) // len(folded))
        return head.replace(b"To: rcpt@example.org\r\n", many) + fields + b"\r\nbody\r\n"
    if case == "small":  # under the size that sends a message to a thread by size alone
        many = b"To: " + b",\r\n ".join(b"r%05d@example.org" % i for i in range(11000)) + b"\r\n"
        return head.replace(b"To: rcpt@example.org\r\n", many) + b"\r\nbody\r\n"
    if case == "body":
        return head + b"\r\n" + b"..\r\n" * int(20 * MIB * scale / 4)
    if case == "bare-cr":
        return head + b"\r\n" + (b"x\r" * 400 + b"\r\n") * int(20 * MIB * scale / 802)
    raise ValueError(case)


@dataclass
class Result:
    case: str
    attacker_reply: str
    attacker_seconds: float
    probe: Summary
    probes: int


def attack(port: int, tenant: Tenant, data: bytes, out: dict[str, object]) -> None:
    started = time.perf_counter()
    with smtplib.SMTP(LOOPBACK, port, timeout=300) as client:
        client.ehlo("attacker.test")
        client.login(tenant.username, tenant.password)
        client.docmd("MAIL", f"FROM:<{tenant.sender}>")
        client.docmd("RCPT", "TO:<rcpt@example.org>")
        client.docmd("DATA")
        client.sock.sendall(data + b".\r\n")
        code, text = client.getreply()
    out["reply"] = f"{code} {text.decode(errors='replace')[:70]}"
    out["seconds"] = time.perf_counter() - started


async def probe(port: int, tenant: Tenant, done: threading.Event, quiet: float) -> list[float]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    await reply()
    for line in (
        b"EHLO probe.test\r\n",
        b"AUTH PLAIN "
        + base64.b64encode(f"\0{tenant.username}\0{tenant.password}".encode())
        + b"\r\n",
    ):
        writer.write(line)
        await reply()
    rtts: list[float] = []
    deadline = time.monotonic() + quiet

    def going() -> bool:
        return time.monotonic() < deadline if quiet else not done.is_set()

    while going():
        t = time.perf_counter()
        writer.write(b"NOOP\r\n")
        await reply()
        rtts.append(time.perf_counter() - t)
        await asyncio.sleep(0.002)
    writer.close()
    return rtts


def run_case(server: RelayServer, tenant: Tenant, case: str, scale: float) -> Result:
    port = server.ports["alt"]
    data = worst_case(case, tenant.sender, scale)
    out: dict[str, object] = {}
    done = threading.Event()

    def attacker() -> None:
        try:
            attack(port, tenant, data, out)
        finally:
            done.set()

    thread = threading.Thread(target=attacker)
    thread.start()
    rtts = asyncio.run(probe(port, tenant, done, 0))
    thread.join()
    return Result(
        case,
        str(out.get("reply", "no reply")),
        float(out.get("seconds", 0.0)),  # type: ignore[arg-type]
        Summary.of(rtts),
        len(rtts),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cases = ["header", "at-limit", "small", "body", "bare-cr"]
    p.add_argument("--case", choices=cases, action="append", help="one case (repeatable); all")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--scale", type=float, default=1.0, help="header, body, bare-cr sizes x (1)")
    p.add_argument("--quiet-seconds", type=float, default=2.0, help="baseline probe time (2)")
    args = p.parse_args(argv)
    options = RelayOptions(
        argon2_time_cost=1,
        argon2_memory_kib=8192,
        limits={"max_message_size": 30 * MIB, "max_connections_per_ip": 1000},
    )
    results: list[Result] = []
    with RelayServer(options) as server:
        with stage("seeding a tenant"):
            tenant = seed_tenant(server.config_path)
        with stage("starting relay serve"):
            server.start()
        quiet = asyncio.run(
            probe(server.ports["alt"], tenant, threading.Event(), args.quiet_seconds)
        )
        results.append(Result("(quiet)", "-", 0.0, Summary.of(quiet), len(quiet)))
        for case in args.case or cases:
            with stage(f"case {case}"):
                results.append(run_case(server, tenant, case, args.scale))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    print(f"{'case':>9}  {'probes':>6}  {'p50 ms':>7}  {'p99 ms':>7}  {'max ms':>7}  attacker")
    for r in results:
        s = r.probe
        print(
            f"{r.case:>9}  {r.probes:>6}  {s.p50:7.2f}  {s.p99:7.2f}  "
            f"{s.max:7.2f}  {r.attacker_reply} ({r.attacker_seconds:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
