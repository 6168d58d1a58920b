"""Smoke runs of bench/ so the benchmark code cannot rot. No timing assertions.

The end-to-end runs start real ``relay serve`` subprocesses on free loopback
ports and send a handful of messages, as ``python bench/ingest.py`` does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a directory of scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path fix above
    Summary,
    TreeMonitor,
    _Budget,
    format_table,
    hot_spots,
    make_message,
    percentile,
    split,
)


def run_ingest(*args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--json", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def check_mode(mode: dict[str, Any], messages: int) -> None:
    assert mode["accepted"] == messages
    assert mode["errors"] == 0
    assert mode["db_new_messages"] == messages  # the relay queued what it said 250 to
    assert mode["accept_latency_ms"]["count"] == messages
    assert mode["server_cpu_seconds"] >= 0
    assert mode["server_peak_rss_bytes"] > 0
    assert mode["problems"] == []


def test_ingest_starttls_raw_client_both_modes() -> None:
    doc = run_ingest(
        "--messages", "6", "--concurrency", "2", "--processes", "2",
        "--per-connection", "1", "3", "--warmup", "1", "--fast-argon2",
    )  # fmt: skip
    assert [m["per_connection"] for m in doc["modes"]] == [1, 3]
    for mode in doc["modes"]:
        check_mode(mode, 6)
    assert any("LOWERED" in line for line in doc["setup"])  # the cheaper hash is said


def test_ingest_plaintext_aiosmtplib_client_two_server_processes() -> None:
    doc = run_ingest(
        "--messages", "4", "--concurrency", "2", "--processes", "1",
        "--per-connection", "2", "--warmup", "1", "--fast-argon2",
        "--plaintext", "--client", "aiosmtplib", "--size", "300",
        "--server-processes", "2",
    )  # fmt: skip
    check_mode(doc["modes"][0], 4)
    assert doc["modes"][0]["server_processes_seen"] >= 2


def test_percentile_interpolates() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    summary = Summary.of([0.001, 0.002, 0.003])
    assert (summary.count, summary.p50, summary.max) == (3, 2.0, 3.0)
    assert Summary.of([]).count == 0


def test_a_capped_budget_gives_every_session_a_share() -> None:
    """A cap below concurrency x per_connection (the end-to-end cells) still
    keeps every session busy, instead of the first session taking it all."""
    budget = _Budget(400, 1000, math.inf, sessions=25)
    shares = [budget.take() for _ in range(26)]
    assert shares[:25] == [16] * 25 and shares[25] == 0
    uncapped = _Budget(50_000, 1000, math.inf, sessions=25)
    assert [uncapped.take() for _ in range(25)] == [1000] * 25
    odd = _Budget(10, 1000, math.inf, sessions=4)
    assert [odd.take() for _ in range(5)] == [3, 3, 3, 1, 0]


def test_split_spreads_evenly() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert sum(split(5000, 7)) == 5000


@pytest.mark.parametrize("size", [300, 2048, 100 * 1024])
def test_message_has_the_asked_size(size: int) -> None:
    head, tail = make_message(size, "a@b.test", "c@d.test")
    message = head + b"12345678" + tail
    assert abs(len(message) - size) <= 2
    assert message.endswith(b"\r\n")
    assert b"\n." not in message  # nothing to dot-stuff


def test_tree_monitor_sees_own_cpu() -> None:
    monitor = TreeMonitor(os.getpid(), interval=0.01)
    monitor.start()
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    usage = monitor.stop()
    assert usage.cpu_seconds > 0
    assert usage.peak_rss_bytes > 0


def test_hot_spots_and_table(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks.txt"
    stacks.write_text("main (a.py);work (b.py) 3\nmain (a.py);idle (c.py) 1\n")
    spots = {name: (incl, own) for name, incl, own in hot_spots(stacks)}
    assert spots["main (a.py)"] == (100.0, 0.0)
    assert spots["work (b.py)"] == (75.0, 75.0)
    table = format_table([{"a": 1.234, "b": "x"}], [("a", "A"), ("b", "B")])
    assert "1.23" in table and "B" in table


# -- bench/deliver.py and bench/compare.py ---------------------------------------------


def run_bench(script: str, *args: str, timeout: float = 110) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--json", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_deliver_api_and_smtp_with_latency_on_sqlite() -> None:
    doc = run_bench(
        "deliver.py", "--messages", "4", "--transports", "api", "smtp",
        "--latency-ms", "20", "--databases", "sqlite", "postgres", "--time-limit", "30",
        "--postgres-url", "",
    )  # fmt: skip
    ran = [c for c in doc["cases"] if not c["skipped"]]
    assert [(c["transport"], c["database"]) for c in ran] == [("api", "sqlite"), ("smtp", "sqlite")]
    for case in ran:
        assert case["delivered"] == 4 and case["errors"] == 0
        assert case["queue_empty"] and case["problems"] == []
        assert case["relay_cpu_seconds"] > 0
    api, smtp = ran
    assert api["emulator_counts"]["api_requests"] == 4  # it went by the API, not SMTP
    assert smtp["emulator_counts"]["smtp_messages"] == 4
    skipped = [c for c in doc["cases"] if c["skipped"]]
    assert len(skipped) == 2 and all("POSTGRES" in c["skipped"] for c in skipped)


def test_compare_tiny_run_every_system_it_can() -> None:
    doc = run_bench(
        "compare.py", "--systems", "floor", "postfix", "relay-starttls", "relay-e2e-api",
        "--sizes", "2048", "--concurrency", "2", "--modes", "per-session",
        "--time-limit", "0.3", "--max-messages", "6", "--e2e-messages", "4", "--wait-quiet", "0",
        "--drain-limit", "20", "--idle", "20", "--no-results", "--no-profile",
        "--postfix-install", "never", "--client-processes", "1", "--rounds", "1",
        "--server-processes", "1",
        timeout=115,
    )  # fmt: skip
    cells = doc["cells"]
    systems = {c["system"] for c in cells}
    assert {"floor", "relay-starttls", "relay-e2e-api"} <= systems
    assert "postfix" in systems or "postfix" in doc["skipped"]
    for cell in cells:
        assert cell["accepted"] >= 1 and cell["errors"] == 0 and cell["problems"] == []
        assert cell["server_cpu_seconds"] >= 0 and cell["server_peak_pss_bytes"] > 0
    e2e = [c for c in cells if c["system"] == "relay-e2e-api"]
    assert all(c["delivery"]["delivered"] == c["db_new_messages"] for c in e2e)
    assert [i["opened"] for i in doc["idle"]] == [20, 20]
    assert doc["rounds"] == 1 and all(c["round"] == 1 for c in cells)
    assert {s["system"] for s in doc["summary"]} == systems
    names = {t["target"] for t in doc["targets"]}
    assert any(n.startswith("end to end by API, the emulator answering after") for n in names)
    assert any(n.startswith("queue fed at the acceptance rate") for n in names)


def test_compare_runs_the_systems_interleaved_round_by_round() -> None:
    from bench import compare

    args = compare.parse_args(
        ["--modes", "persistent", "--concurrency", "50", "--rounds", "2",
         "--systems", "relay-e2e-sustained", "floor", "postfix", "relay-starttls",
         "relay-e2e-api", "relay-e2e-api-200ms", "--sizes", "2048", "102400"]
    )  # fmt: skip
    order = [(r, c.size, s) for r, c, s in compare.schedule(args)]
    every = ["floor", "postfix", "relay-starttls", "relay-e2e-api"]
    small = [*every, "relay-e2e-api-200ms"]  # the latency cell: the target cell only
    expected = [
        *[(1, 2048, s) for s in small], *[(1, 102400, s) for s in every],
        *[(2, 2048, s) for s in small], *[(2, 102400, s) for s in every],
        (1, 2048, "relay-e2e-sustained"),  # once, after the rounds
    ]  # fmt: skip
    assert order == expected
    assert args.server_processes == len(os.sched_getaffinity(0))  # "auto", as the relay


def test_compare_ratios_are_taken_within_a_round_then_spread() -> None:
    from types import SimpleNamespace

    from bench import compare

    cell = compare.Cell(*compare.TARGET)

    def r(round_: int, system: str, rate: float, delivered: float | None = None) -> Any:
        delivery = None if delivered is None else SimpleNamespace(rate=delivered)
        load = SimpleNamespace(rate=rate)
        return SimpleNamespace(round=round_, system=system, cell=cell, load=load, delivery=delivery)

    results = [
        r(1, "postfix", 100), r(1, "relay-starttls", 50), r(1, "relay-e2e-api", 9, 80),
        r(2, "postfix", 50), r(2, "relay-starttls", 50), r(2, "relay-e2e-api", 9, 45),
        r(3, "postfix", 200), r(3, "relay-starttls", 100),  # no e2e this round
    ]  # fmt: skip
    found = {name: v for name, _, v in compare.ratios(results)}
    accept = found["relay STARTTLS+AUTH+durable / Postfix"]
    assert sorted(accept.values) == [0.5, 0.5, 1.0]  # per round: a slow round hurts both sides
    assert (accept.median, accept.low, accept.high) == (0.5, 0.5, 1.0)
    e2e = found["end to end by API (delivered) / Postfix"]
    assert sorted(e2e.values) == [0.8, 0.9] and e2e.text(0, 100, "%") == "85% [80-90]"


def test_stage_shares_take_the_innermost_marked_frame(tmp_path: Path) -> None:
    from bench.common import stage_shares

    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        "thread (1): MainThread;run (uvloop/__init__.py);handle (relay/a.py);x (lib/y.py) 3\n"
        "thread (2): spool_0;write (relay/queue/spool.py);execute (sqlalchemy/e.py) 1\n"
    )
    stages = [("a", ("(relay/a.py)",)), ("spool", ("(relay/queue/",)), ("loop", ("(uvloop/",))]
    shares, threads, total = stage_shares(stacks, stages)
    assert total == 4
    assert dict(shares) == {"a": 75.0, "spool": 25.0}
    assert threads == {"event loop thread": 75.0, "spool writer thread": 25.0}


def test_crashes_one_kill_on_sqlite() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "crashes.py"),
            "--kills",
            "1",
            "--databases",
            "sqlite",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "== sqlite: 1 SIGKILLs" in proc.stdout and "lost 0" in proc.stdout
