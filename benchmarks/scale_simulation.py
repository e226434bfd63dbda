"""The child process of benchmarks/bench_scale.py: one simulation of N virtual boards (the
boards' own ClientApp over prepared buffers) in Flower's Ray engine, FedAvg with every board
in every round; it prints one ``RESULT {json}`` line with the rounds' times and nodes."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from typing import Any


def _patch_dispatch() -> None:
    """One scan of the LinkState per poll instead of one per node (see bench_scale's doc)."""
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


def _server_app(boards: int, rounds: int, marks: list[float], nodes: list[tuple[int, int]]) -> Any:
    """FedAvg over every board; each round's end is marked (its time and its nodes)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp

    from sleepfed.model import logistic as model
    from sleepfed.server.app.recording_strategy import RecordingFedAvg

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
            num_rounds=rounds,
            timeout=3600.0,
            train_config=ConfigRecord({"local-iterations": 5}),
            evaluate_fn=mark,
        )

    return server_app


def run_child(args: argparse.Namespace) -> None:
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from flwr.simulation import run_simulation

    from sleepfed.board.training import client_app as board_app

    if args.variant == "indexed-dispatch":
        _patch_dispatch()
    boards = args.one
    os.environ[board_app.SIM_BUFFER_DIR_ENV] = args.buffers
    marks: list[float] = []
    nodes: list[tuple[int, int]] = []
    server_app = _server_app(boards, args.rounds, marks, nodes)

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
