"""``sleepfed-server run``: start the SuperLink and its fleet proxy, submit runs one after
another, and print each round as the ServerApp writes it to the history."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from sleepfed.server.app.history import History
from sleepfed.server.ops.config import ServerConfig, load_config
from sleepfed.server.ops.exit_codes import EXIT_CONFIG, EXIT_STATE
from sleepfed.server.ops.history_commands import format_round

if TYPE_CHECKING:
    from sleepfed.common.prometheus import MetricsServer
    from sleepfed.server.fleet.supervision import ServerProcesses


def _wait_for_run(
    config: ServerConfig,
    run_id: str,
    stop: threading.Event,
    printed: set[int],
    superlink: tuple[ServerProcesses, int],
) -> str:
    """The run's end as the history records it ("finished", "failed"), "stopped", or
    "interrupted" when the SuperLink it was submitted to (the ``superlink`` processes' start
    number given) died: the run went with it. Each round's line is printed once the boards'
    scores of its model are in (they come with the next round's updates,
    sleepfed.server.app.round_loop), or when the run ends."""
    processes, starts = superlink
    history = History(config.history_path)
    try:
        while not stop.is_set():
            status = next((r["status"] for r in history.runs() if r["run_id"] == run_id), "pending")
            # a ServerApp whose SuperLink died may have written "failed" on its way out
            gone = status != "finished" and (
                processes.superlink_starts != starts or not processes.superlink.alive()
            )
            ended = status in ("finished", "failed") or gone
            for record in history.rounds(include_rolled_back=False):
                if record.run_id != run_id or record.global_round in printed:
                    continue
                if record.eval_nodes > 0 or ended:
                    printed.add(record.global_round)
                    print(format_round(record), flush=True)
            if gone:
                # the supervision restarts it, and first ends what the dead one left behind
                while processes.superlink_starts == starts and not stop.wait(1.0):
                    pass
                history.reopen_run(run_id)  # the next run does its remaining rounds
                return "interrupted"
            if ended:
                return str(status)
            stop.wait(1.0)
        return "stopped"
    finally:
        history.close()


def _start_metrics(config: ServerConfig, processes: ServerProcesses) -> MetricsServer | None:
    """The Prometheus endpoint (sleepfed.server.ops.metrics), if ``[metrics] port`` is set."""
    if not config.metrics_port:
        return None
    from sleepfed.common.prometheus import start_metrics
    from sleepfed.server.ops.metrics import ServerCollector

    collector = ServerCollector(
        config,
        processes.alive,
        lambda: (dict(processes.restarts), processes.reconcile_failures),
    )
    return start_metrics(config.metrics_host, config.metrics_port, [collector])


def _insecure(config: ServerConfig) -> ServerConfig:
    """``--insecure`` on a config that has TLS: the same config without TLS or node auth."""
    print(
        "WARNING: --insecure: the SuperLink runs WITHOUT TLS and without node "
        "authentication; anyone on the network can read and join",
        file=sys.stderr,
    )
    return ServerConfig(**{**config.__dict__, "insecure": True, "node_auth": False})


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: ``run`` then stops its processes and returns."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _announce_node_auth(config: ServerConfig, synced: list[str]) -> None:
    """What the registry sync did, and how many enrolled boards may join."""
    for line in synced:
        print(line, flush=True)
    from sleepfed.server.fleet.boards import Registry

    registry = Registry(config)
    try:
        enrolled = sum(1 for b in registry.boards() if b["status"] == "registered")
    finally:
        registry.close()
    print(f"node authentication on: {enrolled} enrolled boards may join", flush=True)


def _submit_runs(
    config: ServerConfig, stop: threading.Event, once: bool, processes: ServerProcesses
) -> int:
    """Submit runs until stopped (or one, with ``once``); 1 if a run failed, else 0. A run
    interrupted by a SuperLink restart is followed at once by the next, which does its
    remaining rounds (sleepfed.server.app.server_app resumes from the history)."""
    from sleepfed.server.fleet.superlink import submit_run

    printed: set[int] = set()
    code = 0
    while not stop.is_set():
        run_id = submit_run(config)
        starts = processes.superlink_starts
        print(
            f"run {run_id} submitted: {config.rounds} rounds, min {config.min_nodes} nodes",
            flush=True,
        )
        status = _wait_for_run(config, run_id, stop, printed, (processes, starts))
        print(f"run {run_id} {status}", flush=True)
        if status == "interrupted":
            while not processes.alive() and not stop.wait(1.0):
                pass  # the supervision restarts the SuperLink and applies the registry
            continue
        if status == "failed":
            code = 1
        if once or status == "stopped":
            break
        if stop.wait(max(config.run_interval_seconds, 5.0)):
            break
    return code


def _check_state(config: ServerConfig) -> None:
    """Before anything starts: a damaged history is salvaged now (logged once), and a
    history or registry that cannot be used stops ``run`` here with StateFileError (exit
    EXIT_STATE): no SuperLink ever ran on a registry that could not be trusted."""
    History(config.history_path).close()
    if config.node_auth:
        from sleepfed.server.fleet.boards import Registry

        Registry(config).close()


def cmd_run(args: argparse.Namespace) -> int:
    from sleepfed.server.fleet.fleet_proxy import ProxyError
    from sleepfed.server.fleet.supervision import ServerProcesses

    config = load_config(args.config)
    if args.insecure and not config.insecure:
        config = _insecure(config)
    _check_state(config)
    stop = _stop_on_signals()
    processes = ServerProcesses(config, stop)
    try:
        synced = processes.start()
    except ProxyError as error:
        print(f"sleepfed-server run: {error}", file=sys.stderr)
        return EXIT_CONFIG
    metrics = _start_metrics(config, processes)
    try:
        if config.node_auth:
            _announce_node_auth(config, synced)
        code = _submit_runs(config, stop, args.once, processes)
    finally:
        if metrics is not None:
            metrics.stop()
        processes.stop()
    if processes.fatal is not None:
        print(f"sleepfed-server run: {processes.fatal}", file=sys.stderr)
        return EXIT_STATE
    return code
