"""Memory of a board (and of the server) around one real federated round over TLS.

Not a test: it prints a small table and one final JSON line with every figure. Goal: the
agent daemon's RSS between rounds is at most 60 MB. Every figure is also given as a ratio
to a bare Python interpreter measured in the same run.

    python benchmarks/bench_memory.py --data ../shared/data

The federation is the one the tests start (tests/support/federation_helpers.py): a TLS SuperLink
(``sleepfed-server run --once``, 1 round, min_nodes=2, held-out Walch subjects) and two
agent daemons whose buffers already hold one extracted Walch night. psutil samples every
0.2 s: the daemon process alone, the board's whole process tree (daemon + flower-supernode
+ its ClientApp processes) and the server's tree (sleepfed-server + flower-superlink +
ServerApp). Tree figures are sums of RSS (shared pages are counted once per process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import record
from memory_federation import BOARD_SUBJECTS, HELD_OUT, INTERVAL, FederationRun, run_federation
from memory_sampling import Series, baseline_rss

MB = 2**20
GOAL_BETWEEN_ROUNDS_MB = 60.0


def mb(value: float) -> float:
    return value / MB


def by_process_mb(peak_tree: tuple[int, dict[str, int]]) -> dict[str, float]:
    """A tree's RSS at its peak, per process label, in MB."""
    return {k: round(mb(v), 1) for k, v in sorted(peak_tree[1].items())}


# -- measuring ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    walch = args.data / "walch2019" if (args.data / "walch2019").is_dir() else args.data
    if not any(walch.glob("*_psg_labels.out")):
        parser.error(f"no Walch 2019 data under {args.data}")
    return args, walch


def measure_round(walch: Path, keep: bool) -> FederationRun:
    root = Path(tempfile.mkdtemp(prefix="sleepfed-bench-mem-"))
    try:
        return run_federation(root, walch)
    finally:
        if keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def board_figures(series: Series) -> dict[str, float]:
    """One board's daemon (idle median, round peak, after max) and tree peak, in MB."""
    idle = Series.pick(series.own, "idle")
    round_own = Series.pick(series.own, "round")
    round_tree = Series.pick(series.tree, "round")
    after = Series.pick(series.own, "after")
    return {
        "daemon_idle_mb": mb(statistics.median(idle)) if idle else 0.0,
        "daemon_round_peak_mb": mb(max(round_own)) if round_own else 0.0,
        "tree_round_peak_mb": mb(max(round_tree)) if round_tree else 0.0,
        "daemon_after_mb": mb(max(after)) if after else 0.0,
    }


# -- output -------------------------------------------------------------------------------------
def table_rows(
    bare: int, numpy_rss: int, per_board: dict[str, dict[str, float]], server_peak: float
) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = [
        ("bare python (baseline)", mb(bare)),
        ("python + numpy", mb(numpy_rss)),
    ]
    for name, figures in per_board.items():
        rows += [
            (f"{name}: daemon idle before round (median)", figures["daemon_idle_mb"]),
            (f"{name}: daemon peak during round", figures["daemon_round_peak_mb"]),
            (f"{name}: board tree peak during round", figures["tree_round_peak_mb"]),
            (f"{name}: daemon after round (max)", figures["daemon_after_mb"]),
        ]
    rows.append(("server tree peak during round", server_peak))
    return rows


def print_table(run: FederationRun, rows: list[tuple[str, float]], bare: int) -> None:
    marks = run.marks
    print(
        f"sleepfed bench_memory: 1 round, 2 boards ({', '.join(BOARD_SUBJECTS)}), "
        f"held-out {', '.join(HELD_OUT)}\n"
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM; RSS sampled every {INTERVAL} s\n"
        f"server started at {marks.get('server_start', 0):.1f} s, exited at "
        f"{marks.get('server_exit', 0):.1f} s, sessions over at "
        f"{marks.get('sessions_over', 0):.1f} s"
    )
    print(f"\n  {'':48} {'RSS MB':>8} {'x bare python':>14}")
    for name, value in rows:
        print(f"  {name:48} {value:8.1f} {value / mb(bare):14.2f}")


def print_trees_and_boards(run: FederationRun) -> None:
    print(
        "\n  board tree at its peak (MB): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k} {mb(v):.0f}" for k, v in sorted(s.peak_tree[1].items()))
            for name, s in run.series.items()
        )
    )
    print(
        "  server tree at its peak (MB): "
        + ", ".join(f"{k} {mb(v):.0f}" for k, v in sorted(run.server.peak_tree[1].items()))
    )
    for name, state in run.states.items():
        counters = state.get("counters", {})
        log = run.logs[name]
        print(
            f"  {name}: session {state.get('last_session_outcome')!r}, "
            f"rounds_trained {counters.get('rounds_trained')}, "  # type: ignore[union-attr]
            f"rounds_evaluated {counters.get('rounds_evaluated')}, "  # type: ignore[union-attr]
            f"SuperNode starts: {log.count('federation starting node')}"
        )
        if "Traceback" in log:
            tail = log[log.index("Traceback") :].splitlines()
            print(f"  {name}: agent log has a traceback: {' | '.join(tail[:8])[-400:]}")


def summary(
    run: FederationRun,
    bare: int,
    numpy_rss: int,
    per_board: dict[str, dict[str, float]],
    server_peak: float,
) -> dict[str, object]:
    bare_mb = mb(bare)
    worst_after = max(f["daemon_after_mb"] for f in per_board.values())
    return {
        "bench": "memory",
        "goal_daemon_between_rounds_mb": GOAL_BETWEEN_ROUNDS_MB,
        "bare_python_mb": round(bare_mb, 1),
        "python_numpy_mb": round(mb(numpy_rss), 1),
        "numpy_ratio_to_bare": round(mb(numpy_rss) / bare_mb, 2),
        "boards": {
            name: {
                **{k: round(v, 1) for k, v in figures.items()},
                **{
                    k.replace("_mb", "_ratio_to_bare"): round(v / bare_mb, 2)
                    for k, v in figures.items()
                },
            }
            for name, figures in per_board.items()
        },
        "server_tree_peak_mb": round(server_peak, 1),
        "server_tree_peak_ratio_to_bare": round(server_peak / bare_mb, 2),
        "daemon_between_rounds_worst_mb": round(worst_after, 1),
        "meets_goal": worst_after <= GOAL_BETWEEN_ROUNDS_MB,
        "round_seconds": round(
            run.marks.get("server_exit", 0) - run.marks.get("server_start", 0), 1
        ),
        "board_tree_peak_by_process_mb": {
            name: by_process_mb(s.peak_tree) for name, s in run.series.items()
        },
        "server_tree_peak_by_process_mb": by_process_mb(run.server.peak_tree),
    }


def main(argv: list[str] | None = None) -> int:
    args, walch = parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

    began = time.perf_counter()
    bare = baseline_rss("import time; time.sleep(3)")
    numpy_rss = baseline_rss("import time, numpy; time.sleep(3)")
    run = measure_round(walch, args.keep)

    per_board = {name: board_figures(s) for name, s in run.series.items()}
    server_peak = mb(max(Series.pick(run.server.tree, "round"), default=0))
    print_table(run, table_rows(bare, numpy_rss, per_board, server_peak), bare)
    print_trees_and_boards(run)
    worst_after = max(f["daemon_after_mb"] for f in per_board.values())
    verdict = "meets" if worst_after <= GOAL_BETWEEN_ROUNDS_MB else "MISSES"
    print(
        f"\ngoal daemon RSS between rounds <= {GOAL_BETWEEN_ROUNDS_MB:.0f} MB: worst board "
        f"{worst_after:.1f} MB ({verdict} the goal)"
    )
    print(f"(took {time.perf_counter() - began:.0f} s)")

    figures = summary(run, bare, numpy_rss, per_board, server_peak)
    print(json.dumps(figures))
    record.save(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
