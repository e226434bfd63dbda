"""Real processes at fleet scale: N bare ``flower-supernode`` processes (each with a prepared
buffer, the installed ClientApp) against one SuperLink started by ``sleepfed-server run``,
TLS on 127.0.0.1, FedAvg with every node in every round.

    python benchmarks/bench_real_nodes.py --data ../shared/data [--nodes 20] [--rounds 3]

Prints each round's time (from the history: run start → round 1 → round 2 ...), the
SuperLink's RSS over time (sampled once a second) and its peak, and the peak RSS of the whole
server tree and of all nodes together. A baseline from the same run: the SuperLink's RSS
when the run began (nodes connected or connecting, no round yet).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO))

from tests.support.node_fleet import FleetRun, run_fleet  # noqa: E402


def figures(run: FleetRun, rounds: int) -> dict[str, object]:
    """The results file's figures (RSS in MB of 10^6 bytes, as printed)."""
    mb = 1e6
    return {
        "bench": "real_nodes",
        "nodes": run.nodes,
        "rounds": rounds,
        "server_exit": run.server_exit,
        "run_seconds": round(run.run_seconds, 1),
        "round_seconds": [round(s, 1) for s in run.round_seconds],
        "train_nodes": run.train_nodes,
        "eval_nodes": run.eval_nodes,
        "superlink_rss_start_mb": round(run.superlink_at_start / mb, 1),
        "superlink_rss_peak_mb": round(run.superlink_peak / mb, 1),
        "server_tree_peak_mb": round(run.server_tree_peak / mb, 1),
        "nodes_tree_peak_mb": round(run.nodes_tree_peak / mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding walch2019/")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-timeout", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    # SIGTERM stops the fleet (the run's finally) instead of orphaning its processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="sleepfed-bench-nodes-") as tmp:
        run = run_fleet(
            Path(tmp),
            args.data / "walch2019",
            nodes=args.nodes,
            rounds=args.rounds,
            round_timeout=args.round_timeout,
            timeout=args.timeout,
        )
    mb = 1e6
    print(
        f"{run.nodes} real SuperNodes, one SuperLink (TLS, 127.0.0.1), {args.rounds} rounds: "
        f"server exit {run.server_exit}, {len(run.round_seconds)} rounds in the history"
    )
    for index, seconds in enumerate(run.round_seconds, start=1):
        print(
            f"  round {index}: {seconds:6.1f} s  train nodes {run.train_nodes[index - 1]:>3}  "
            f"eval nodes {run.eval_nodes[index - 1]:>3}"
        )
    if run.round_seconds:
        later = run.round_seconds[1:] or run.round_seconds
        print(
            f"  mean round {statistics.fmean(run.round_seconds):.1f} s (after the first: "
            f"{statistics.fmean(later):.1f} s); run {run.run_seconds:.1f} s"
        )
    if run.superlink_rss:
        baseline = run.superlink_at_start
        step = max(1, len(run.superlink_rss) // 12)
        trace = ", ".join(f"{t:+.0f}s {rss / mb:.0f}" for t, rss in run.superlink_rss[::step])
        print(f"  SuperLink RSS MB over time: {trace}")
        print(
            f"  SuperLink RSS: at the run's start {baseline / mb:.0f} MB, peak "
            f"{run.superlink_peak / mb:.0f} MB ({run.superlink_peak / baseline:.2f}x); "
            f"server tree peak {run.server_tree_peak / mb:.0f} MB; all {run.nodes} nodes' trees "
            f"peak {run.nodes_tree_peak / mb:.0f} MB ({run.nodes_tree_peak / run.nodes / mb:.0f}"
            f" MB per node)"
        )
    record.save(figures(run, args.rounds))
    if run.train_nodes != [args.nodes] * args.rounds:
        raise SystemExit(f"not every node trained in every round: {run.train_nodes}")


if __name__ == "__main__":
    main()
