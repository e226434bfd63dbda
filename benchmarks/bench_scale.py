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
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("stock", "indexed-dispatch")


# -- child: one simulation ------------------------------------------------------------------
def _patch_dispatch() -> None:
    """One scan of the LinkState per poll instead of one per node (see module doc)."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.supercore.date import now

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop):  # type: ignore[no-untyped-def]
        while not f_stop.is_set():
            with state.lock:
                pending = [
                    m
                    for m in state.message_ins_store.values()
                    if m.metadata.delivered_at == "" and m.metadata.dst_node_id in nodes_mapping
                ]
                state._check_stored_messages({m.metadata.message_id for m in pending})
                delivered_at = now().isoformat()
                for message in pending:
                    if message.metadata.message_id in state.message_ins_store:
                        message.metadata.delivered_at = delivered_at
                        queue.put(message)
            f_stop.wait(0.1)

    vce_api.add_messages_to_queue = add_messages_to_queue


def run_child(args: argparse.Namespace) -> None:
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from sleepfed.board.training import client_app as board_app
    from sleepfed.model import logistic as model
    from sleepfed.server.app.server_app import RecordingFedAvg

    if args.variant == "indexed-dispatch":
        _patch_dispatch()
    boards = args.one
    os.environ[board_app.SIM_BUFFER_DIR_ENV] = args.buffers
    marks: list[float] = []
    nodes: list[tuple[int, int]] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = RecordingFedAvg(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=boards,
            min_evaluate_nodes=boards,
            min_available_nodes=boards,
        )

        def mark(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            marks.append(time.perf_counter())
            if server_round > 0:
                nodes.append(
                    (strategy.train_nodes[server_round], strategy.eval_nodes[server_round])
                )
            return None

        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.initial_arrays()),
            num_rounds=args.rounds,
            timeout=3600.0,
            train_config=ConfigRecord({"local-iterations": 5}),
            evaluate_fn=mark,
        )

    started = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=board_app.app,
        num_supernodes=boards,
        backend_config={
            "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": 2,
                "include_dashboard": False,
                "object_store_memory": 256 * 1024**2,
            },
        },
    )
    rounds = [b - a for a, b in itertools.pairwise(marks)]
    print(
        "RESULT "
        + json.dumps(
            {
                "total_seconds": time.perf_counter() - started,
                "round_seconds": rounds,
                "nodes": nodes,
                "startup_seconds": marks[0] - started if marks else None,
            }
        ),
        flush=True,
    )


# -- parent: preparation, the ClientApp's own cost, and the runs ------------------------------
def prepare(data: Path, boards: int, folder: Path) -> dict[str, float]:
    from sleepfed.model.features import walch_dataset
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


def main() -> None:
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
    args = parser.parse_args()
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
        print(
            f"{largest} virtual boards from walch2019 in {partition['prepare_seconds']:.1f} s: "
            f"{partition['windows_mean']:.1f} windows each on average; Poor share per board "
            f"min {partition['poor_share_min']:.2f} / median {partition['poor_share_median']:.2f}"
            f" / max {partition['poor_share_max']:.2f}; "
            f"{partition['boards_without_poor']} boards without a Poor window"
        )
        per_board = clientapp_cost(buffers, min(200, largest))
        print(f"ClientApp alone (in-process, train + evaluate): {per_board * 1000:.1f} ms/board")
        print(
            f"Ray: {2 / args.client_cpus:.0f} actors on 2 CPUs (num_cpus {args.client_cpus} "
            f"per board); FedAvg, every board in every round, {args.rounds} rounds"
        )
        print(
            f"{'boards':>7} {'variant':<17} {'round 1 s':>10} {'later rounds s':>15} "
            f"{'s/board':>8} {'ClientApp share':>16} {'peak RSS MB':>12} {'accepted':>9}"
        )
        runs = [
            (n, "stock") for n in sorted(args.boards) if n != largest or "stock" in args.variants
        ]
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
        print(
            "JSON " + json.dumps({"partition": partition, "clientapp_s": per_board, "runs": rows})
        )


if __name__ == "__main__":
    main()
