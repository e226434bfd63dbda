"""Scale in simulation: the boards' own ClientApp (sleepfed.board.training.client_app:app) on 100
and 1,000
virtual boards in Flower's simulation engine (Ray backend), FedAvg, every board in every round.

    python benchmarks/bench_scale.py --data ../shared/data [--boards 100 1000] [--rounds 3]

Virtual boards are walch2019 people resampled into label-skewed partitions
(sleepfed.server.research.partitions), each written to a real SQLite buffer
(sleepfed.server.research.simulation.prepare_buffers)
that the ClientApp opens from its partition-id. Each configuration runs in a child process of
its own; this process samples the RSS of that child's whole process tree (driver, Ray's GCS,
raylet, workers, actors) once a second.

Figures: time of round 1 (includes the actors' first imports) and mean of the later rounds;
peak tree RSS. Where the time goes: the ClientApp's own cost per board (train + evaluate,
called in-process, measured here) and the engine's share; the "indexed dispatch" variant
replaces one function of Flower's simulation engine (vce_api.add_messages_to_queue, which asks
the in-memory LinkState for each node's messages in turn: a scan of every stored message per
node, every 100 ms) with one scan per poll, to show how much of the round that costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import record
from scale_simulation import run_child

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("stock", "indexed-dispatch")


# -- parent: preparation, the ClientApp's own cost, and the runs ------------------------------
def prepare(data: Path, boards: int, folder: Path) -> dict[str, float]:
    from sleepfed.model.walch import walch_dataset
    from sleepfed.server.research.partitions import poor_shares, resample_boards
    from sleepfed.server.research.simulation import prepare_buffers

    virtual = resample_boards(walch_dataset(data / "walch2019"), boards, seed=0)
    started = time.perf_counter()
    prepare_buffers(folder, [b.windows for b in virtual])
    shares = poor_shares(virtual)
    return {
        "prepare_seconds": time.perf_counter() - started,
        "windows_mean": statistics.fmean(len(b.windows.labels) for b in virtual),
        "poor_share_min": float(shares.min()),
        "poor_share_median": float(statistics.median(shares)),
        "poor_share_max": float(shares.max()),
        "boards_without_poor": int((shares == 0).sum()),
    }


def clientapp_cost(folder: Path, calls: int) -> float:
    """Seconds of one board's train + evaluate, the ClientApp called in this process."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from sleepfed.board.training import client_app as board_app
    from sleepfed.model import logistic as model

    os.environ[board_app.SIM_BUFFER_DIR_ENV] = str(folder)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    arrays = ArrayRecord(model.initial_arrays())

    def one(pid: int, kind: str) -> None:
        context = Context(
            run_id=1,
            node_id=pid + 1,
            node_config={"partition-id": pid, "num-partitions": calls},
            state=RecordDict(),
            run_config={},
        )
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
        message = Message(content, dst_node_id=pid + 1, message_type=kind)
        message.metadata.__dict__["_message_id"] = f"m{pid}{kind}"
        board_app.app(message, context)

    one(0, "train")  # imports
    started = time.perf_counter()
    for pid in range(calls):
        one(pid, "train")
        one(pid, "evaluate")
    return (time.perf_counter() - started) / calls


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def run_one(
    boards: int, rounds: int, variant: str, client_cpus: float, buffers: Path
) -> dict[str, object]:
    command = [
        sys.executable,
        __file__,
        "--one",
        str(boards),
        "--rounds",
        str(rounds),
        "--variant",
        variant,
        "--client-cpus",
        str(client_cpus),
        "--buffers",
        str(buffers),
    ]
    log = buffers.parent / f"sim-{boards}-{variant}.log"
    with log.open("wb") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        root = psutil.Process(child.pid)
        peak = 0
        while child.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, tree_rss(root))
            time.sleep(1.0)
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if child.returncode != 0 or not lines:
        raise SystemExit(f"simulation of {boards} boards failed, see {log}:\n{text[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["peak_rss_mb"] = peak / 1e6
    return result


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder holding walch2019/")
    parser.add_argument("--boards", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="for the largest"
    )
    parser.add_argument("--client-cpus", type=float, default=1.0, help="Ray num_cpus per board")
    parser.add_argument("--work-dir", type=Path, help="keep buffers and logs here")
    # child mode
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="stock", help=argparse.SUPPRESS)
    parser.add_argument("--buffers", help=argparse.SUPPRESS)
    return parser, parser.parse_args()


def print_partition(largest: int, partition: dict[str, float]) -> None:
    print(
        f"{largest} virtual boards from walch2019 in {partition['prepare_seconds']:.1f} s: "
        f"{partition['windows_mean']:.1f} windows each on average; Poor share per board "
        f"min {partition['poor_share_min']:.2f} / median {partition['poor_share_median']:.2f}"
        f" / max {partition['poor_share_max']:.2f}; "
        f"{partition['boards_without_poor']} boards without a Poor window"
    )


def run_all(args: argparse.Namespace, buffers: Path, per_board: float) -> list[dict[str, object]]:
    """Each configuration in its own child process, a table row printed as each ends."""
    largest = max(args.boards)
    print(
        f"Ray: {2 / args.client_cpus:.0f} actors on 2 CPUs (num_cpus {args.client_cpus} "
        f"per board); FedAvg, every board in every round, {args.rounds} rounds"
    )
    print(
        f"{'boards':>7} {'variant':<17} {'round 1 s':>10} {'later rounds s':>15} "
        f"{'s/board':>8} {'ClientApp share':>16} {'peak RSS MB':>12} {'accepted':>9}"
    )
    runs = [(n, "stock") for n in sorted(args.boards) if n != largest or "stock" in args.variants]
    runs += [(largest, v) for v in args.variants if v != "stock"]
    rows = []
    for boards, variant in runs:
        result = run_one(boards, args.rounds, variant, args.client_cpus, buffers)
        rounds = result["round_seconds"]
        # every board replied; the server may refuse an update with 0 training windows
        accepted = min(t for t, _ in result["nodes"])
        later = statistics.fmean(rounds[1:]) if len(rounds) > 1 else rounds[0]
        floor = per_board * boards / (2 / args.client_cpus)
        print(
            f"{boards:>7} {variant:<17} {rounds[0]:>10.1f} {later:>15.1f} "
            f"{later / boards * 1000:>6.1f}ms {floor / later:>15.0%} "
            f"{result['peak_rss_mb']:>12.0f} {accepted:>9}",
            flush=True,
        )
        rows.append({"boards": boards, "variant": variant, **result})
    return rows


def main() -> None:
    parser, args = parse_args()
    # one BLAS thread per process, as Ray gives each 1-CPU actor (OMP_NUM_THREADS=1); set
    # before numpy loads, so the in-process ClientApp cost is measured the same way
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if args.one:
        run_child(args)
        return
    if args.data is None:
        parser.error("--data is required")
    with tempfile.TemporaryDirectory(prefix="sleepfed-bench-scale-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        largest = max(args.boards)
        buffers = work / "buffers"
        partition = prepare(args.data, largest, buffers)
        print_partition(largest, partition)
        per_board = clientapp_cost(buffers, min(200, largest))
        print(f"ClientApp alone (in-process, train + evaluate): {per_board * 1000:.1f} ms/board")
        rows = run_all(args, buffers, per_board)
        payload = {"partition": partition, "clientapp_s": per_board, "runs": rows}
        print("JSON " + json.dumps(payload))
        record.save(
            {
                "bench": "scale",
                "boards": largest,
                "rounds": args.rounds,
                "client_cpus": args.client_cpus,
                **payload,
            }
        )


if __name__ == "__main__":
    main()
