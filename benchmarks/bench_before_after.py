"""Before and after: the load benchmark on a base commit's code and on this checkout, one
after the other in one invocation, on the same machine.

    python benchmarks/bench_before_after.py --data ../shared/data [--boards 2 --rounds 3
        --rate 20 --round-timeout 900 --base ba0bc07]

The base (default ba0bc07, the last commit before issue 14's cuts: P-384 keys, two arrays, an
evaluate message every round, the SuperLink's state in SQLite, registration by ``flwr``
processes) is checked out into a temporary git worktree and its own ``benchmarks/
bench_load.py`` runs there with its own defaults, its code ahead of this checkout's editable
install on ``PYTHONPATH`` (same venv: same Flower and libraries) for every process of the
fleet (agents, SuperNodes, ClientApps, server). Then this checkout's ``bench_load.py`` runs
the same fleet. Both print one JSON line of figures; side by side: bytes sent per board per
round, requests, messages per board per round (each starts one ClientApp process on the
board), the board's tree CPU per round, round seconds, rounds in which every board trained
and was scored, and after / before. Figures: ``benchmarks/results/before_after[_N].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import record

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "ba0bc07"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--boards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20.0, help="readings/s per board")
    parser.add_argument("--round-timeout", type=float, default=900.0)
    parser.add_argument("--base", default=DEFAULT_BASE, help="the commit measured first")
    return parser.parse_args(argv)


def bench_load(
    checkout: Path, args: argparse.Namespace, env: dict[str, str], *extra: str
) -> dict[str, Any]:
    """``checkout``'s own bench_load.py on the fleet of ``args``; its JSON line of figures."""
    command = [
        sys.executable,
        str(checkout / "benchmarks" / "bench_load.py"),
        *("--data", str(args.data.resolve()), "--boards", str(args.boards)),
        *("--rounds", str(args.rounds), "--rate", str(args.rate)),
        *("--round-timeout", str(args.round_timeout)),
        *extra,
    ]
    began = time.monotonic()
    result = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    print(result.stdout[-2500:], end="")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{checkout}: bench_load gave no figures:\n{result.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(lines[-1])
    figures["bench_seconds"] = round(time.monotonic() - began)
    figures["bench_exit"] = result.returncode
    return figures


def base_environment(worktree: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [worktree / "src", worktree / "tools", worktree]
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    return env


def measure_base(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sleepfed-base-") as folder:
        worktree = Path(folder) / "base"
        git = ["git", "-C", str(REPO)]
        subprocess.run([*git, "worktree", "add", "--detach", str(worktree), args.base], check=True)
        try:
            return bench_load(worktree, args, base_environment(worktree))
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(worktree)], check=False)


def summary(figures: dict[str, Any], rounds: int) -> dict[str, Any]:
    by_rpc = figures["by_rpc_per_board_round"]
    nodes = figures["round_nodes"]
    return {
        "bytes_sent_per_board_round": figures["bytes_sent_per_board_round"],
        "requests_per_board_round": figures["requests_per_board_round"],
        "messages_per_board_round": by_rpc.get("pull-messages (message)", {}).get("calls", 0.0),
        "board_tree_cpu_s_per_round": figures["board_tree_cpu_s_per_round_median"],
        "round_seconds": figures["round_seconds"],
        "round_seconds_mean": round(statistics.mean(figures["round_seconds"] or [0.0]), 1),
        "rounds_all_boards": sum(1 for t, e in nodes if t == e == figures["boards"]),
        "rounds": rounds,
        "key_curve": figures.get("key_curve"),
        "superlink_state": figures.get("superlink_state", "sqlite"),
        "load_average_during_mean": figures["load_average_during_mean"],
        "readings_lost": figures["readings_lost"],
    }


RATIOS = (
    "bytes_sent_per_board_round",
    "requests_per_board_round",
    "messages_per_board_round",
    "board_tree_cpu_s_per_round",
    "round_seconds_mean",
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    before = summary(measure_base(args), args.rounds)
    # this checkout's load results files stay those of `make bench`'s --compare-sqlite runs
    after = summary(bench_load(REPO, args, dict(os.environ), "--no-record"), args.rounds)
    ratios = {k: round(after[k] / before[k], 2) if before[k] else None for k in RATIOS}
    print(f"\nbefore ({args.base}) and after, {args.boards} boards x {args.rounds} rounds:")
    for key in before:
        print(f"  {key:30} {before[key]!s:28} {after[key]!s:28} {ratios.get(key, '')}")
    figures = {
        "bench": "before_after" if args.boards <= 4 else f"before_after_{args.boards}",
        "boards": args.boards,
        "rounds": args.rounds,
        "rate_per_board": args.rate,
        "round_timeout": args.round_timeout,
        "base": args.base,
        "before": before,
        "after": after,
        "after_over_before": ratios,
    }
    print(json.dumps(figures))
    record.save(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
