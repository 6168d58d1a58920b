"""Start-up benchmark: how long the commands a person types often take, whole.

Each command is ``python -m relay ...`` as a fresh process against a seeded
database (a temporary SQLite file, or ``--database URL``), timed from spawn to
exit: wall time best and median of ``--runs``, and the best CPU time (user +
system) of the child, which the other processes of a busy machine disturb
less. A first run of each command is not counted: it writes the ``.pyc``
files (``PYTHONDONTWRITEBYTECODE`` is removed from the child's environment).
Issue 16 asks for under 300 ms; the last column says which commands are.

    .venv/bin/python bench/startup.py                  # 5 runs of each command
    .venv/bin/python bench/startup.py --runs 9 --json
    .venv/bin/python bench/startup.py --tree /tmp/old  # another checkout's relay/, to compare
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import format_table

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 300.0
# A command that takes longer than this is broken, not slow: stop waiting.
TIMEOUT_S = 30.0

SEED = (
    "account create agency",
    "account create sub --agency agency",
    "domain add agency.test --account agency",
    "credential create web@agency.test --password bench-password-1",
    "sender verify agency.test --account agency",
    "suppression add gone@example.test --account agency",
    "token create --operator --label bench",
    "provider add sg --account agency --kind sendgrid --api-key SG.bench --no-check",
)
COMMANDS = (
    "--help",
    "account --help",
    "queue list --help",
    "account list",
    "credential list agency.test",
    "sender list --account agency",
    "suppression list --account agency",
    "provider list",
    "provider show sg",
    "queue list",
    "usage",
    "token list",
    "user list",
    "config check",
)


def child_env(tree: Path, var: Path, database: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RELAY_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        PYTHONPATH=str(tree),
        RELAY_DATABASE_URL=database,
        RELAY_SERVER_VAR_DIR=str(var),
        RELAY_SECRET_KEY="bench-secret-key",
        RELAY_AUTH_ARGON2_TIME_COST="1",
        RELAY_AUTH_ARGON2_MEMORY_KIB="1024",
    )
    return env


def run_once(python: str, argv: Sequence[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, the child's CPU seconds, its exit status. Run in the tree:
    ``-m`` puts the working directory first on the path."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [python, "-m", "relay", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=TIMEOUT_S,
        check=False,
        cwd=env["PYTHONPATH"],
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        print(f"relay {' '.join(argv)}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return wall, cpu, done.returncode


def measure(
    python: str, commands: Sequence[str], env: dict[str, str], runs: int
) -> list[dict[str, Any]]:
    results = []
    for command in commands:
        argv = command.split()
        run_once(python, argv, env)  # writes the .pyc files; not counted
        walls, cpus, codes = [], [], set()
        for _ in range(runs):
            wall, cpu, code = run_once(python, argv, env)
            walls.append(wall * 1000)
            cpus.append(cpu * 1000)
            codes.add(code)
        best, median = min(walls), statistics.median(walls)
        results.append(
            {
                "command": f"relay {command}",
                "best_ms": round(best, 1),
                "median_ms": round(median, 1),
                "cpu_best_ms": round(min(cpus), 1),
                "exit": ",".join(map(str, sorted(codes))),
                "under_target": "yes" if median < TARGET_MS else "no",
            }
        )
    return results


def seed(python: str, env: dict[str, str]) -> None:
    for line in SEED:
        _, _, code = run_once(python, line.split(), env)
        if code != 0:
            raise SystemExit(f"seeding failed at: relay {line}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs of each command (1-50)")
    p.add_argument("--database", help="a database URL to seed and use (default: temporary SQLite)")
    p.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose relay/ runs")
    p.add_argument("--python", default=sys.executable, help="the interpreter (its venv)")
    p.add_argument(
        "--command", action="append", help="time only these (as typed after relay; repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 50:
        p.error("--runs must be 1 to 50")
    with tempfile.TemporaryDirectory(prefix="relay-startup-") as tmp:
        database = args.database or f"sqlite:///{tmp}/relay.db"
        env = child_env(args.tree.resolve(), Path(tmp) / "var", database)
        seed(args.python, env)
        results = measure(args.python, args.command or COMMANDS, env, args.runs)
    if args.json:
        print(json.dumps({"target_ms": TARGET_MS, "runs": args.runs, "results": results}))
        return 0
    columns = [
        ("command", "command"),
        ("best_ms", "best ms"),
        ("median_ms", "median ms"),
        ("cpu_best_ms", "cpu ms"),
        ("exit", "exit"),
        ("under_target", f"median < {TARGET_MS:.0f} ms"),
    ]
    print(f"{args.runs} runs each, after one uncounted run; tree {args.tree}")
    print(format_table(results, columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
