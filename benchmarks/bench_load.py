"""Load: N real boards ingesting at R readings/s each against one TLS server for K rounds.

Not a test: it prints tables and one final JSON line with every figure.

    python benchmarks/bench_load.py --data ../shared/data [--boards 20 --rounds 3 --rate 50]
        [--compare-sqlite]

Each board is a real ``sleepfed-agent run`` daemon fed over its own PTY by a replay of real
Walch 2019 nights at ``--rate`` readings/s for the whole run (tests/support/load_fleet.py),
holding one extracted Walch night to train on, with its own node key (P-256, as
sleepfed-enroll makes) registered in the server's board registry (node authentication),
talking to one ``sleepfed-server run --once`` (TLS SuperLink + ServerApp) through its own
TLS-terminating capture proxy, which records every byte per board and per Fleet RPC. psutil
samples every second: the server's process tree (sleepfed-server + flower-superlink +
ServerApp + ``flwr run``) and each board's daemon and tree (daemon + flower-supernode +
flower-superexec + ClientApp processes).

Figures: round times, server CPU and RSS, per-agent RSS and CPU (min/median/max), readings
lost (sent by the replay minus acknowledged and stored: must be 0), and bytes on the wire per
board per round (decrypted HTTP: request/status lines, headers and protobuf bodies; TLS
records and handshakes add to it, estimated), broken down by Fleet RPC, and as a ratio to
the same run's payload: the bodies of the objects a board pushes (model, metrics, records).
The machine's load average is printed: other work on it slows the rounds down.

``--compare-sqlite`` first runs the same fleet with the SuperLink's state in a SQLite file
(``superlink_state = "sqlite"``, the earlier default) and prints, beside the run with its
state in memory, each one's round times, boards per round, rounds that waited out their
timeout, replies lost and the SuperLink's ``database is locked`` answers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import record
from load_report import (
    Wire,
    print_header,
    report_bytes_by_rpc,
    report_bytes_overheads,
    report_cpu_rss,
    report_readings,
    report_rounds,
)
from load_run import LoadRun, run


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--boards", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="readings/s per board")
    parser.add_argument("--timeout", type=float, default=1800.0, help="for the whole run (s)")
    parser.add_argument(
        "--key-curve",
        choices=("p384", "p256"),
        default="p256",
        help="the boards' node keys (sleepfed-enroll makes P-256)",
    )
    parser.add_argument(
        "--superlink-state", choices=("memory", "sqlite"), default="memory", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--compare-sqlite",
        action="store_true",
        help="first the same run with the SuperLink's state in a SQLite file",
    )
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=900.0,
        help="the server's round_timeout_seconds: how long a round waits for a lost reply",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    # bench_before_after keeps the figures itself: the results file of the run made with
    # --compare-sqlite stays as it is
    parser.add_argument("--no-record", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.may_fail = False
    walch = args.data / "walch2019" if (args.data / "walch2019").is_dir() else args.data
    if not any(walch.glob("*_psg_labels.out")):
        parser.error(f"no Walch 2019 data under {args.data}")
    return args, walch


def measure(args: argparse.Namespace, walch: Path) -> LoadRun:
    root = Path(tempfile.mkdtemp(prefix="sleepfed-bench-load-"))
    try:
        return run(args, root, walch)
    finally:
        if args.keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(
    args: argparse.Namespace, result: LoadRun, load_before: tuple[float, float, float]
) -> dict[str, object]:
    """Print every part of the report; the figures of the JSON line and the results file."""
    n_rounds = max(1, len(result.rounds))  # a failed baseline run may have none
    loads = result.sampler.loads
    print_header(args, loads, load_before)
    rounds = report_rounds(result, args.boards)
    cpu_rss = report_cpu_rss(result, result.server_ended - result.measured_from, n_rounds)
    readings = report_readings(result)
    wire = Wire.of(result, n_rounds)
    by_rpc = report_bytes_by_rpc(wire, n_rounds)
    overheads = report_bytes_overheads(wire, result.handshake)
    return {
        # the small run of `make bench` is "load"; a larger fleet keeps its own file (load_20)
        "bench": "load" if args.boards <= 4 else f"load_{args.boards}",
        "boards": args.boards,
        "rounds": n_rounds,
        "rate_per_board": args.rate,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_during_mean": round(statistics.mean(loads or [0]), 2),
        **rounds,
        **cpu_rss,
        **readings,
        **by_rpc,
        **overheads,
        "key_curve": args.key_curve,
        "round_timeout": args.round_timeout,
        "superlink_state": args.superlink_state,
        "database_locked": result.database_locked,
        "server_exit": result.server_exit,
        "rounds_at_timeout": sum(s >= args.round_timeout for s in rounds["round_seconds"]),
    }


def reliability(figures: dict[str, object]) -> dict[str, object]:
    """What the SuperLink's state changes: the figures compared side by side."""
    faults = figures["node_faults"]
    assert isinstance(faults, dict)
    return {
        "round_seconds": figures["round_seconds"],
        "round_nodes": figures["round_nodes"],
        "rounds_at_timeout": figures["rounds_at_timeout"],
        "replies_lost": sum(faults.get("node_replies_lost", {}).values()),
        "node_restarts": sum(faults.get("node_restarts", {}).values()),
        "database_locked": figures["database_locked"],
        "server_exit": figures["server_exit"],
        "load_average_during_mean": figures["load_average_during_mean"],
    }


def compare(before: dict[str, object], after: dict[str, object]) -> None:
    print("\nthe SuperLink's state, same fleet, one after the other:")
    for key in before:
        print(f"  {key:26} sqlite {before[key]!s:28} memory {after[key]}")


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (e.g. timeout) unwinds like Ctrl-C: the fleet's processes are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args, walch = parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

    began = time.perf_counter()
    before = None
    if args.compare_sqlite:
        # the baseline may fail: a ServerApp request answered `database is locked` ends its run
        sqlite_args = argparse.Namespace(
            **{**vars(args), "superlink_state": "sqlite", "may_fail": True}
        )
        load_before = os.getloadavg()
        before = reliability(report(sqlite_args, measure(sqlite_args, walch), load_before))
    load_before = os.getloadavg()
    result = measure(args, walch)
    figures = report(args, result, load_before)
    if before is not None:
        figures["memory_after"] = reliability(figures)
        compare(before, figures["memory_after"])  # type: ignore[arg-type]
        figures["sqlite_before"] = before
    print(f"(took {time.perf_counter() - began:.0f} s)")
    print(json.dumps(figures))
    if not args.no_record:
        record.save(figures)
    return 0 if figures["readings_lost"] == 0 and figures["every_round_all_nodes"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
