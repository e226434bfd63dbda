"""``sleepfed-server``: run the federation, inspect and roll back its history, make certificates."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sleepfed.model import objective
from sleepfed.server.app.history import History, RoundRecord
from sleepfed.server.app.privacy import describe_round
from sleepfed.server.ops.config import ConfigError, ServerConfig, load_config

if TYPE_CHECKING:
    from sleepfed.common.prometheus import MetricsServer
    from sleepfed.server.fleet.supervision import ServerProcesses

EXIT_CONFIG = 2
log = logging.getLogger("sleepfed.server")


def format_round(record: RoundRecord) -> str:
    s, t, e = record.server_metrics, record.train_metrics, record.eval_metrics
    held_out = (
        f"held-out AUC {s['auc']:.3f} acc {s['accuracy']:.3f} bal-acc {s['balanced_accuracy']:.3f} "
        f"({int(s['windows'])} windows)"
        if "auc" in s
        else "no held-out set"
    )
    return (
        f"round {record.global_round:3d}  "
        f"nodes train {record.train_nodes} eval {record.eval_nodes}  "
        f"train-loss {t.get('train-loss', float('nan')):.3f}  "
        f"board-eval acc {e.get('eval-accuracy', float('nan')):.3f}  {held_out}"
        + describe_round(record.privacy, record.rejected)
        + ("  [rolled back]" if record.rolled_back else "")
    )


def _wait_for_run(
    config: ServerConfig, run_id: str, stop: threading.Event, printed: set[int]
) -> str:
    history = History(config.history_path)
    try:
        while not stop.is_set():
            for record in history.rounds(include_rolled_back=False):
                if record.run_id == run_id and record.global_round not in printed:
                    printed.add(record.global_round)
                    print(format_round(record), flush=True)
            status = next((r["status"] for r in history.runs() if r["run_id"] == run_id), "pending")
            if status in ("finished", "failed"):
                return str(status)
            stop.wait(1.0)
        return "stopped"
    finally:
        history.close()


def _cmd_run(args: argparse.Namespace) -> int:
    from sleepfed.server.fleet.fleet_proxy import ProxyError
    from sleepfed.server.fleet.superlink import submit_run
    from sleepfed.server.fleet.supervision import ServerProcesses

    config = load_config(args.config)
    if args.insecure and not config.insecure:
        print(
            "WARNING: --insecure: the SuperLink runs WITHOUT TLS and without node "
            "authentication; anyone on the network can read and join",
            file=sys.stderr,
        )
        config = ServerConfig(**{**config.__dict__, "insecure": True, "node_auth": False})
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    processes = ServerProcesses(config, stop)
    try:
        synced = processes.start()
    except ProxyError as error:
        print(f"sleepfed-server run: {error}", file=sys.stderr)
        return EXIT_CONFIG
    metrics = _start_metrics(config, processes)
    if config.node_auth:
        for line in synced:
            print(line, flush=True)
        from sleepfed.server.fleet.boards import Registry

        registry = Registry(config)
        try:
            enrolled = sum(1 for b in registry.boards() if b["status"] == "registered")
        finally:
            registry.close()
        print(f"node authentication on: {enrolled} enrolled boards may join", flush=True)
    printed: set[int] = set()
    code = 0
    try:
        while not stop.is_set():
            run_id = submit_run(config)
            print(
                f"run {run_id} submitted: {config.rounds} rounds, min {config.min_nodes} nodes",
                flush=True,
            )
            status = _wait_for_run(config, run_id, stop, printed)
            print(f"run {run_id} {status}", flush=True)
            if status == "failed":
                code = 1
            if args.once or status == "stopped":
                break
            if stop.wait(max(config.run_interval_seconds, 5.0)):
                break
    finally:
        if metrics is not None:
            metrics.stop()
        processes.stop()
    return code


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


def _cmd_status(args: argparse.Namespace) -> int:
    from sleepfed.server.ops.status import as_json, collect, exit_code, render

    config = load_config(args.config)
    status = collect(config)
    print(as_json(status) if args.json else render(status))
    return exit_code(status)


def _cmd_report(args: argparse.Namespace) -> int:
    from sleepfed.server.ops.report import ReportError, write_report

    config = load_config(args.config)
    try:
        rounds = write_report(config, Path(args.out))
    except ReportError as error:
        print(f"sleepfed-server report: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {rounds} rounds")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    history = History(config.history_path)
    try:
        rounds = history.rounds()
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "global_round": r.global_round,
                            "run_id": r.run_id,
                            "created_at": r.created_at,
                            "train_nodes": r.train_nodes,
                            "eval_nodes": r.eval_nodes,
                            "train_metrics": r.train_metrics,
                            "eval_metrics": r.eval_metrics,
                            "server_metrics": r.server_metrics,
                            "rolled_back": r.rolled_back,
                            "rejected": r.rejected,
                            "privacy": r.privacy,
                        }
                        for r in rounds
                    ],
                    indent=2,
                )
            )
        else:
            for record in rounds:
                print(format_round(record))
            if not rounds:
                print("no rounds yet")
    finally:
        history.close()
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    history = History(config.history_path)
    try:
        count = history.rollback(args.to_round)
    except ValueError as error:
        print(f"sleepfed-server rollback: {error}", file=sys.stderr)
        return 1
    finally:
        history.close()
    print(f"rolled back {count} rounds; the next run starts from round {args.to_round}")
    return 0


def _cmd_boards(args: argparse.Namespace) -> int:
    from sleepfed.provisioning.request import RequestError, parse_request
    from sleepfed.server.fleet.boards import Registry, parse_csv
    from sleepfed.server.ops.status import accepts_connections

    config = load_config(args.config)
    registry = Registry(config)
    try:
        if args.action == "register":
            requests = [parse_request(Path(f).read_text()) for f in args.requests]
            if args.csv:
                requests += parse_csv(Path(args.csv))
            if not requests:
                print("sleepfed-server boards register: no request given", file=sys.stderr)
                return EXIT_CONFIG
            for request in requests:
                print(f"{request.board_id}: {registry.add(request)}")
        elif args.action == "revoke":
            for board_id in args.boards:
                registry.revoke(board_id)
                print(f"{board_id}: revoked")
        if args.action in ("register", "revoke"):
            if accepts_connections("127.0.0.1", config.superlink_port, 2.0):
                for line in registry.sync():
                    print(line)
            else:
                print("the server is not running: the change applies when it starts")
        boards = registry.boards()
        if args.action == "list":
            if args.json:
                print(json.dumps(boards, indent=2))
            else:
                for b in boards:
                    print(f"{b['board_id']:24s} {b['status']:15s} node {b['node_id'] or '-'}")
                if not boards:
                    print("no boards enrolled")
    except (RequestError, OSError) as error:
        print(f"sleepfed-server boards: {error}", file=sys.stderr)
        return 1
    finally:
        registry.close()
    return 0


def _cmd_certs(args: argparse.Namespace) -> int:
    from sleepfed.provisioning.pki import ensure_demo_pki, fingerprint_sha256

    paths = ensure_demo_pki(Path(args.out), args.host)
    for name, path in paths.items():
        print(f"{name:7s} {path}")
    print(
        f"CA SHA-256 fingerprint (give it to boards out of band): {fingerprint_sha256(paths['ca'])}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from sleepfed.server.app.strategies import StrategySettings
    from sleepfed.server.research.evaluate import (
        EvaluationError,
        EvaluationSettings,
        evaluate,
        format_table,
    )

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("flwr").setLevel(logging.ERROR)  # one INFO line per round otherwise
    subjects = [s for s in (args.subjects or "").replace(",", " ").split() if s] or None
    try:
        settings = EvaluationSettings(
            folds=args.folds,
            rounds=args.rounds,
            local_iterations=args.local_iterations,
            learning_rate=args.learning_rate,
            strategy=StrategySettings(name=args.strategy),
            seed=args.seed,
        )
        result = evaluate(Path(args.data), settings, subjects)
    except EvaluationError as error:
        print(f"sleepfed-server evaluate: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleepfed-server", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the SuperLink and run the federation")
    run.add_argument("--config", required=True)
    run.add_argument("--once", action="store_true", help="exit after one run")
    run.add_argument("--insecure", action="store_true", help="no TLS (prints a warning)")
    status = sub.add_parser(
        "status",
        help="SuperLink, last run, rounds, boards; exit 0 healthy, 1 SuperLink down, "
        "2 config error, 3 last run failed or interrupted",
    )
    status.add_argument("--config", required=True)
    status.add_argument("--json", action="store_true")
    report = sub.add_parser("report", help="an HTML page with plots of every round")
    report.add_argument("--config", required=True)
    report.add_argument("--out", required=True, help="the HTML file to write")
    history = sub.add_parser("history", help="every round's metrics")
    history.add_argument("--config", required=True)
    history.add_argument("--json", action="store_true")
    rollback = sub.add_parser("rollback", help="mark rounds after N as rolled back")
    rollback.add_argument("--config", required=True)
    rollback.add_argument("--to-round", type=int, required=True)
    boards = sub.add_parser("boards", help="enrolled boards: register, list, revoke")
    boards_sub = boards.add_subparsers(dest="action", required=True)
    register = boards_sub.add_parser("register", help="from enrollment requests (files or CSV)")
    register.add_argument("--config", required=True)
    register.add_argument("requests", nargs="*", help="files holding one request line each")
    register.add_argument("--csv", help="a fleet: CSV with columns board_id,public_key")
    listing = boards_sub.add_parser("list")
    listing.add_argument("--config", required=True)
    listing.add_argument("--json", action="store_true")
    revoke = boards_sub.add_parser("revoke", help="refuse these boards from now on")
    revoke.add_argument("--config", required=True)
    revoke.add_argument("boards", nargs="+")
    certs = sub.add_parser("certs", help="make a CA and a server certificate (demo, tests)")
    certs.add_argument("--out", required=True)
    certs.add_argument("--host", action="append", default=None, help="SAN host (repeatable)")
    evaluation = sub.add_parser(
        "evaluate",
        help="federated vs centralised vs local-only on a Walch-format folder "
        "(leave-subjects-out folds, one board per subject)",
    )
    evaluation.add_argument("--data", required=True, help="folder in the Walch 2019 format")
    evaluation.add_argument("--json", action="store_true", help="one JSON object")
    evaluation.add_argument("--folds", type=int, default=5)
    evaluation.add_argument("--rounds", type=int, default=20)
    evaluation.add_argument(
        "--local-iterations",
        type=int,
        default=objective.DEFAULT_STEPS,
        help="gradient steps per board per round",
    )
    evaluation.add_argument(
        "--learning-rate",
        type=float,
        default=objective.DEFAULT_LEARNING_RATE,
        help="size of a board's gradient step",
    )
    evaluation.add_argument(
        "--strategy", default="fedavg", help="fedavg, fedprox, fedmedian, fedtrimmedavg, krum"
    )
    evaluation.add_argument("--subjects", help="only these subject ids (comma-separated)")
    evaluation.add_argument("--seed", type=int, default=0, help="how subjects fall into folds")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Everything the server makes is private (superlink.db holds messages and node keys,
    # boards.db the fleet's keys, logs, certs' keys), whatever umask it was started with;
    # its children (SuperLink, ServerApp, flwr) inherit this. Public certs are chmod-ed.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    if getattr(args, "host", None) is None and args.command == "certs":
        args.host = ["127.0.0.1", "localhost"]
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    handlers = {
        "run": _cmd_run,
        "status": _cmd_status,
        "report": _cmd_report,
        "history": _cmd_history,
        "rollback": _cmd_rollback,
        "boards": _cmd_boards,
        "certs": _cmd_certs,
        "evaluate": _cmd_evaluate,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as error:
        print(f"sleepfed-server: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
