"""Load: N real boards ingesting at R readings/s each against one TLS server for K rounds.

Not a test: it prints tables and one final JSON line with every figure.

    python benchmarks/bench_load.py --data ../shared/data [--boards 20 --rounds 3 --rate 50]

Each board is a real ``sleepfed-agent run`` daemon fed over its own PTY by a replay of real
Walch 2019 nights at ``--rate`` readings/s for the whole run (tests/support/load_fleet.py), holding
one extracted Walch night to train on, with its own P-384 node key registered in the
server's board registry (node authentication), talking to one ``sleepfed-server run --once``
(TLS SuperLink + ServerApp) through its own TLS-terminating capture proxy, which records
every byte per board and per Fleet RPC. psutil samples every second: the server's process
tree (sleepfed-server + flower-superlink + ServerApp + ``flwr run``) and each board's
daemon and tree (daemon + flower-supernode + flower-superexec + ClientApp processes).

Figures: round times, server CPU and RSS, per-agent RSS and CPU (min/median/max), readings
lost (sent by the replay minus acknowledged and stored: must be 0), and bytes on the wire per
board per round (decrypted HTTP: request/status lines, headers and protobuf bodies; TLS
records and handshakes add to it, estimated), broken down by Fleet RPC, and as a ratio to
the same run's payload: the bodies of the objects a board pushes (model, metrics, records).
The machine's load average is printed: other work on it slows the rounds down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sleepfed.board.buffer.counter_classes import NODE_FAULT_CLASSES  # noqa: E402
from tests.support.load_fleet import (  # noqa: E402
    Fleet,
    RpcBytes,
    board_bytes,
    build_fleet,
    node_faults,
    rounds_of,
    run_started_at,
    sessions_finished,
    start_agent,
    start_server_synced,
    stop,
    stored_readings,
    tls_handshake_bytes,
    wait_connected,
)

MB = 2**20
GOAL_BYTES_PER_BOARD_ROUND = 10_000
INTERVAL = 1.0
# TLS 1.3 record: 5 B header + 1 B content type + 16 B AEAD tag (one record per request).
TLS_RECORD_OVERHEAD = 22
# Flower 1.42 RPCs made once per session (node start/stop, the run's description and app).
SESSION_RPCS = {"register-node", "activate-node", "deactivate-node", "get-run", "get-fab"}


@dataclass
class Tree:
    """CPU seconds and RSS of one process tree, sampled; dead children keep their last CPU."""

    cpu_by_pid: dict[tuple[int, float], float] = field(default_factory=dict)
    own_cpu: float = 0.0
    own_cpu_start: float | None = None
    own_rss: list[int] = field(default_factory=list)
    tree_rss: list[int] = field(default_factory=list)

    def sample(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total_rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
                    key = (proc.pid, proc.create_time())
            except psutil.Error:
                continue
            cpu = times.user + times.system
            self.cpu_by_pid[key] = cpu
            total_rss += rss
            if proc.pid == pid:
                if self.own_cpu_start is None:
                    self.own_cpu_start = cpu
                self.own_cpu = cpu - self.own_cpu_start
                self.own_rss.append(rss)
        self.tree_rss.append(total_rss)

    def tree_cpu(self, baseline: Tree | None = None) -> float:
        """CPU seconds of the tree since ``baseline`` (its first sample) was taken."""
        total = sum(self.cpu_by_pid.values())
        if baseline is not None:
            total -= sum(v for k, v in baseline.cpu_by_pid.items() if k in self.cpu_by_pid)
        return total


class Sampler:
    def __init__(self) -> None:
        self.server_pid: int | None = None
        self.agent_pids: dict[str, int] = {}
        self.server = Tree()
        self.server_start = Tree()
        self.boards: dict[str, Tree] = {}
        self.board_start: dict[str, Tree] = {}
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        if self.server_pid is not None:
            self.server_start.sample(self.server_pid)
        for name, pid in self.agent_pids.items():
            first = Tree()
            first.sample(pid)
            self.board_start[name] = first
            self.boards[name] = Tree()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            if self.server_pid is not None:
                self.server.sample(self.server_pid)
            for name, pid in self.agent_pids.items():
                self.boards[name].sample(pid)
            self.loads.append(os.getloadavg()[0])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def run(args: argparse.Namespace, root: Path, walch: Path) -> dict[str, object]:
    fleet: Fleet = build_fleet(
        root,
        walch,
        args.boards,
        args.rounds,
        args.rate,
        args.key_curve,
        round_timeout=args.round_timeout,
    )
    agents = []
    server = None
    sampler = Sampler()
    marks: dict[str, float] = {}
    try:
        began = time.time()
        server = start_server_synced(fleet)
        marks["keys_registered"] = time.time() - began
        agents = [start_agent(board.config) for board in fleet.boards]
        wait_connected(fleet, agents)
        marks["agents_connected"] = time.time() - began
        fleet.start_replays()
        sampler.agent_pids = {b.name: a.pid for b, a in zip(fleet.boards, agents, strict=True)}
        sampler.server_pid = server.pid
        sampler.start()
        measured_from = time.time()  # the boards ingest from here on
        if server.wait(args.timeout) != 0:
            log = (root / "server" / "server.log").read_text()[-3000:]
            raise RuntimeError(f"server exited with {server.returncode}:\n{log}")
        server_ended = time.time()
        deadline = time.time() + 120
        while not sessions_finished(fleet) and time.time() < deadline:
            time.sleep(1.0)
        marks["sessions_over"] = time.time() - began
        fleet.end_replays()
        sampler.stop()
        ingest_seconds = time.time() - measured_from
        rounds = rounds_of(fleet)
        started = run_started_at(fleet)
        lost = {}
        for board in fleet.boards:
            acked = fleet.acked(board)
            stored = stored_readings(board)
            lost[board.name] = {
                "sent": board.sent,
                "acked": acked,
                "stored": stored,
                "lost": board.sent - min(acked, stored),
                "replay_error": board.replay_error,
                **node_faults(board),
            }
        wire = {board.name: board_bytes(board) for board in fleet.boards}
        handshake = tls_handshake_bytes(fleet.certs)
    finally:
        sampler.stop()
        stop([*agents, *([server] if server is not None else [])])
        fleet.close()
    return {
        "fleet": fleet,
        "sampler": sampler,
        "rounds": rounds,
        "run_started": started,
        "measured_from": measured_from,
        "server_ended": server_ended,
        "ingest_seconds": ingest_seconds,
        "lost": lost,
        "wire": wire,
        "handshake": handshake,
        "marks": marks,
    }


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (e.g. timeout) unwinds like Ctrl-C: the fleet's processes are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--boards", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="readings/s per board")
    parser.add_argument("--timeout", type=float, default=1800.0, help="for the whole run (s)")
    parser.add_argument(
        "--key-curve",
        choices=("p384", "p256"),
        default="p384",
        help="the boards' node keys (sleepfed-enroll makes P-384)",
    )
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=900.0,
        help="the server's round_timeout_seconds: how long a round waits for a lost reply",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    walch = args.data / "walch2019" if (args.data / "walch2019").is_dir() else args.data
    if not any(walch.glob("*_psg_labels.out")):
        parser.error(f"no Walch 2019 data under {args.data}")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

    began = time.perf_counter()
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="sleepfed-bench-load-"))
    try:
        result = run(args, root, walch)
    finally:
        if args.keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sampler: Sampler = result["sampler"]  # type: ignore[assignment]
    rounds: list[tuple[int, int, int, float]] = result["rounds"]  # type: ignore[assignment]
    lost: dict[str, dict[str, object]] = result["lost"]  # type: ignore[assignment]
    wire: dict[str, tuple[dict[str, RpcBytes], int, int]] = result["wire"]  # type: ignore[assignment]
    handshake_sent, handshake_received = result["handshake"]  # type: ignore[misc]
    n_rounds = len(rounds)

    print(
        f"sleepfed bench_load: {args.boards} boards x {args.rate:.0f} readings/s, "
        f"{args.rounds} rounds, TLS + node auth ({args.key_curve} keys), one capture proxy "
        "per board\n"
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM; load average before "
        f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} (1/5/15 min), "
        f"during the run {statistics.mean(sampler.loads or [0]):.2f} mean (1 min)"
    )

    # -- rounds ------------------------------------------------------------------------
    started = float(result["run_started"])  # type: ignore[arg-type]
    previous = started
    round_seconds = []
    print("\nrounds (history): round, train/eval nodes, seconds since the previous end")
    for number, train_nodes, eval_nodes, created in rounds:
        round_seconds.append(created - previous)
        print(f"  {number:3d}  {train_nodes:3d}/{eval_nodes:<3d} {created - previous:8.1f} s")
        previous = created
    all_nodes = all(t == args.boards and e == args.boards for _, t, e, _ in rounds)
    marks: dict[str, float] = result["marks"]  # type: ignore[assignment]
    measured_from = float(result["measured_from"])  # type: ignore[arg-type]
    run_seconds = float(result["server_ended"]) - measured_from  # type: ignore[arg-type]
    print(
        f"  first round counted from the ServerApp's start (includes the {args.boards} agents "
        f"starting and joining); {run_seconds:.0f} s from all agents ingesting to the server's "
        f"exit; setup: keys registered after {marks['keys_registered']:.0f} s, agents on their "
        f"PTYs after {marks['agents_connected'] - marks['keys_registered']:.0f} s more; every "
        f"round had all nodes: {all_nodes}"
    )

    # -- server and agents: CPU and RSS --------------------------------------------------
    server_cpu = sampler.server.tree_cpu(sampler.server_start)
    server_rss = max(sampler.server.tree_rss, default=0) / MB
    print(
        f"\nserver tree: CPU {server_cpu:.0f} s over {run_seconds:.0f} s "
        f"({server_cpu / run_seconds:.0%} of one core), RSS peak {server_rss:.0f} MB"
    )
    ingest = float(result["ingest_seconds"])  # type: ignore[arg-type]
    daemon_rss = [max(t.own_rss, default=0) / MB for t in sampler.boards.values()]
    daemon_cpu = [100 * t.own_cpu / ingest for t in sampler.boards.values()]
    tree_rss = [max(t.tree_rss, default=0) / MB for t in sampler.boards.values()]
    tree_cpu = [
        t.tree_cpu(sampler.board_start[name]) / max(n_rounds, 1)
        for name, t in sampler.boards.items()
    ]
    print(f"per agent ({len(daemon_rss)} boards), min / median / max:")
    print(f"  daemon RSS peak (MB)                         {spread(daemon_rss)}")
    print(f"  daemon CPU while ingesting (% of one core)   {spread(daemon_cpu)}")
    print(f"  board tree RSS peak (MB, daemon+Flower)      {spread(tree_rss)}")
    print(f"  board tree CPU per round (s)                 {spread(tree_cpu)}")

    # -- readings ------------------------------------------------------------------------
    sent = sum(int(v["sent"]) for v in lost.values())  # type: ignore[call-overload]
    total_lost = sum(int(v["lost"]) for v in lost.values())  # type: ignore[call-overload]
    rates = [int(v["sent"]) / ingest for v in lost.values()]  # type: ignore[call-overload]
    errors = {k: v["replay_error"] for k, v in lost.items() if v["replay_error"]}
    for fault in NODE_FAULT_CLASSES:
        counted = {k: v[fault] for k, v in lost.items() if v[fault]}
        print(f"{fault}: {sum(counted.values())} {counted or ''}")  # type: ignore[arg-type]
    print(
        f"\nreadings: {sent:,} sent over {ingest:.0f} s ({spread(rates)} readings/s per board), "
        f"lost {total_lost} (sent - min(acknowledged, stored)); replay errors: {errors or 'none'}"
    )

    # -- bytes ---------------------------------------------------------------------------
    rpcs: dict[str, list[RpcBytes]] = {}
    connections: list[int] = []
    opened: list[int] = []
    for table, used, all_connections in wire.values():
        connections.append(used)
        opened.append(all_connections)
        for rpc, row in table.items():
            rpcs.setdefault(rpc, []).append(row)
    boards = len(wire)
    per = max(boards * max(n_rounds, 1), 1)

    def total(rows: list[RpcBytes], key: str) -> float:
        return sum(getattr(r, key) for r in rows)

    print(
        f"\nbytes per board per round (decrypted HTTP/1.1; mean over {boards} boards x "
        f"{n_rounds} rounds):"
    )
    print(f"  {'rpc':30} {'calls':>6} {'sent':>8} {'headers':>8} {'received':>9}")
    ordered = sorted(rpcs.items(), key=lambda item: -total(item[1], "sent"))
    for rpc, rows in ordered:
        print(
            f"  {rpc:30} {total(rows, 'calls') / per:6.1f} {total(rows, 'sent') / per:8.0f} "
            f"{total(rows, 'sent_headers') / per:8.0f} {total(rows, 'received') / per:9.0f}"
        )
    all_rows = [r for rows in rpcs.values() for r in rows]
    sent_per = total(all_rows, "sent") / per
    received_per = total(all_rows, "received") / per
    headers_per = total(all_rows, "sent_headers") / per
    calls_per = total(all_rows, "calls") / per
    session_rows = [r for rpc, rows in rpcs.items() if rpc in SESSION_RPCS for r in rows]
    polls = rpcs.get("pull-messages (empty poll)", [])
    heartbeats = rpcs.get("send-node-heartbeat", [])
    print(f"  {'total':30} {calls_per:6.1f} {sent_per:8.0f} {headers_per:8.0f} {received_per:9.0f}")
    mean_request = total(all_rows, "sent") / max(total(all_rows, "calls"), 1)
    mean_headers = total(all_rows, "sent_headers") / max(total(all_rows, "calls"), 1)
    print(
        f"  a request is {mean_request:.0f} B on average, {mean_headers:.0f} B of it the "
        f"request line and headers (Flower's signed-identity headers on every call); "
        f"{statistics.mean(connections or [0]):.1f} TLS connections per board"
    )
    print(
        f"  per round: once-per-session calls {total(session_rows, 'sent') / per:.0f} B, "
        f"idle polls (every 3 s) {total(polls, 'sent') / per:.0f} B, heartbeats "
        f"{total(heartbeats, 'sent') / per:.0f} B; sent + received "
        f"{sent_per + received_per:.0f} B"
    )
    # The model and metrics themselves: the bodies of the pushed objects (content-addressed
    # protobuf objects: arrays as .npy, metrics, records and message heads).
    pushed = rpcs.get("push-object", [])
    payload_per = (total(pushed, "sent") - total(pushed, "sent_headers")) / per
    opened_per = sum(opened) / per
    tls_per = opened_per * handshake_sent + calls_per * TLS_RECORD_OVERHEAD
    print(
        f"  the pushed objects' bodies (the model, metrics and their records) are "
        f"{payload_per:.0f} B: the requests send {sent_per / max(payload_per, 1):.0f}x that"
    )
    print(
        f"  TLS on top (estimated): {opened_per:.1f} connections per board per round "
        f"(keep-alive ends while a ClientApp runs; the agent probes before each SuperNode "
        f"start) x {handshake_sent} B client handshake ({handshake_received} B back) + "
        f"{TLS_RECORD_OVERHEAD} B per request record = about {tls_per:.0f} B more sent"
    )
    verdict = "meets" if sent_per <= GOAL_BYTES_PER_BOARD_ROUND else "MISSES"
    print(
        f"\ngoal <= {GOAL_BYTES_PER_BOARD_ROUND:,} B sent per board per round: {sent_per:,.0f} B "
        f"({sent_per / GOAL_BYTES_PER_BOARD_ROUND:.2f}x the goal: {verdict} it)"
    )
    print(f"(took {time.perf_counter() - began:.0f} s)")

    summary: dict[str, object] = {
        "bench": "load",
        "boards": args.boards,
        "rounds": n_rounds,
        "rate_per_board": args.rate,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_during_mean": round(statistics.mean(sampler.loads or [0]), 2),
        "round_seconds": [round(s, 1) for s in round_seconds],
        "every_round_all_nodes": all_nodes,
        "server_cpu_s": round(server_cpu, 1),
        "server_cpu_share": round(server_cpu / run_seconds, 3),
        "server_rss_peak_mb": round(server_rss, 1),
        "daemon_rss_peak_mb": [round(min(daemon_rss), 1), round(max(daemon_rss), 1)],
        "daemon_cpu_percent": [round(min(daemon_cpu), 1), round(max(daemon_cpu), 1)],
        "board_tree_rss_peak_mb": [round(min(tree_rss), 1), round(max(tree_rss), 1)],
        "board_tree_cpu_s_per_round": [round(min(tree_cpu), 1), round(max(tree_cpu), 1)],
        "readings_sent": sent,
        "readings_lost": total_lost,
        "bytes_sent_per_board_round": round(sent_per),
        "bytes_received_per_board_round": round(received_per),
        "requests_per_board_round": round(calls_per, 1),
        "ratio_to_goal": round(sent_per / GOAL_BYTES_PER_BOARD_ROUND, 2),
        "payload_bytes_per_board_round": round(payload_per),
        "ratio_to_payload": round(sent_per / max(payload_per, 1), 1),
        "tls_connections_per_board_round": round(opened_per, 1),
        "tls_client_handshake_bytes": handshake_sent,
        "tls_estimated_extra_sent_per_board_round": round(tls_per),
        "key_curve": args.key_curve,
        "by_rpc_sent_per_board_round": {
            rpc: round(total(rows, "sent") / per) for rpc, rows in ordered
        },
    }
    print(json.dumps(summary))
    return 0 if total_lost == 0 and all_nodes else 1


if __name__ == "__main__":
    raise SystemExit(main())
