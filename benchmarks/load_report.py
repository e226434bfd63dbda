"""The report of benchmarks/bench_load.py, one step per part: rounds, CPU and RSS, readings
lost, and bytes per board per round by Fleet RPC; each step prints its lines and returns its
figures for the final JSON line and the results file."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import psutil
from load_run import LoadRun
from load_sampling import spread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sleepfed.board.buffer.counter_classes import NODE_FAULT_CLASSES  # noqa: E402
from tests.support.load_fleet import RpcBytes  # noqa: E402

MB = 2**20
GOAL_BYTES_PER_BOARD_ROUND = 20_000  # issue 14's goal
# TLS 1.3 record: 5 B header + 1 B content type + 16 B AEAD tag (one record per request).
TLS_RECORD_OVERHEAD = 22
# Flower 1.42 RPCs made once per session (node start/stop, the run's description and app).
SESSION_RPCS = {"register-node", "activate-node", "deactivate-node", "get-run", "get-fab"}
Figures = dict[str, object]


def total(rows: list[RpcBytes], key: str) -> float:
    return sum(getattr(r, key) for r in rows)


@dataclass
class Wire:
    """Every board's bytes by Fleet RPC, and the TLS connections they used and opened."""

    rpcs: dict[str, list[RpcBytes]]
    connections: list[int]
    opened: list[int]
    boards: int
    per: int  # board-rounds: the divisor of every "per board per round" figure

    @classmethod
    def of(cls, run: LoadRun, n_rounds: int) -> Wire:
        rpcs: dict[str, list[RpcBytes]] = {}
        connections: list[int] = []
        opened: list[int] = []
        for table, used, all_connections in run.wire.values():
            connections.append(used)
            opened.append(all_connections)
            for rpc, row in table.items():
                rpcs.setdefault(rpc, []).append(row)
        boards = len(run.wire)
        return cls(rpcs, connections, opened, boards, max(boards * max(n_rounds, 1), 1))

    def per_round(self, rows: list[RpcBytes], key: str) -> float:
        return total(rows, key) / self.per

    def ordered(self) -> list[tuple[str, list[RpcBytes]]]:
        return sorted(self.rpcs.items(), key=lambda item: -total(item[1], "sent"))

    def all_rows(self) -> list[RpcBytes]:
        return [r for rows in self.rpcs.values() for r in rows]


def print_header(
    args: argparse.Namespace, loads: list[float], load_before: tuple[float, float, float]
) -> None:
    print(
        f"sleepfed bench_load: {args.boards} boards x {args.rate:.0f} readings/s, "
        f"{args.rounds} rounds, TLS + node auth ({args.key_curve} keys), one capture proxy "
        "per board\n"
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM; load average before "
        f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} (1/5/15 min), "
        f"during the run {statistics.mean(loads or [0]):.2f} mean (1 min)"
    )


def report_rounds(run: LoadRun, boards: int) -> Figures:
    previous = run.run_started
    round_seconds = []
    print("\nrounds (history): round, train/eval nodes, seconds since the previous end")
    for number, train_nodes, eval_nodes, created in run.rounds:
        round_seconds.append(created - previous)
        print(f"  {number:3d}  {train_nodes:3d}/{eval_nodes:<3d} {created - previous:8.1f} s")
        previous = created
    all_nodes = all(t == boards and e == boards for _, t, e, _ in run.rounds)
    run_seconds = run.server_ended - run.measured_from
    marks = run.marks
    print(
        f"  first round counted from the ServerApp's start (includes the {boards} agents "
        f"starting and joining); {run_seconds:.0f} s from all agents ingesting to the server's "
        f"exit; setup: keys registered after {marks['keys_registered']:.0f} s, agents on their "
        f"PTYs after {marks['agents_connected'] - marks['keys_registered']:.0f} s more; every "
        f"round had all nodes: {all_nodes}"
    )
    return {
        "round_seconds": [round(s, 1) for s in round_seconds],
        "every_round_all_nodes": all_nodes,
        "run_seconds": round(run_seconds, 1),
        "round_nodes": [[t, e] for _, t, e, _ in run.rounds],
        "keys_registered_seconds": round(marks["keys_registered"], 1),
    }


def _min_max_median(values: list[float]) -> tuple[list[float], float]:
    return [round(min(values), 1), round(max(values), 1)], round(statistics.median(values), 1)


def report_cpu_rss(run: LoadRun, run_seconds: float, n_rounds: int) -> Figures:
    sampler = run.sampler
    server_cpu = sampler.server.tree_cpu(sampler.server_start)
    server_rss = max(sampler.server.tree_rss, default=0) / MB
    print(
        f"\nserver tree: CPU {server_cpu:.0f} s over {run_seconds:.0f} s "
        f"({server_cpu / run_seconds:.0%} of one core), RSS peak {server_rss:.0f} MB"
    )
    daemon_rss = [max(t.own_rss, default=0) / MB for t in sampler.boards.values()]
    daemon_cpu = [100 * t.own_cpu / run.ingest_seconds for t in sampler.boards.values()]
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
    figures: Figures = {
        "server_cpu_s": round(server_cpu, 1),
        "server_cpu_share": round(server_cpu / run_seconds, 3),
        "server_rss_peak_mb": round(server_rss, 1),
    }
    for key, values in (
        ("daemon_rss_peak_mb", daemon_rss),
        ("daemon_cpu_percent", daemon_cpu),
        ("board_tree_rss_peak_mb", tree_rss),
        ("board_tree_cpu_s_per_round", tree_cpu),
    ):
        figures[key], figures[f"{key}_median"] = _min_max_median(values)
    return figures


def report_readings(run: LoadRun) -> Figures:
    lost = run.lost
    ingest = run.ingest_seconds
    sent = sum(int(v["sent"]) for v in lost.values())  # type: ignore[call-overload]
    total_lost = sum(int(v["lost"]) for v in lost.values())  # type: ignore[call-overload]
    rates = [int(v["sent"]) / ingest for v in lost.values()]  # type: ignore[call-overload]
    errors = {k: v["replay_error"] for k, v in lost.items() if v["replay_error"]}
    faults: Figures = {}
    for fault in NODE_FAULT_CLASSES:
        counted = {k: v[fault] for k, v in lost.items() if v[fault]}
        print(f"{fault}: {sum(counted.values())} {counted or ''}")  # type: ignore[arg-type]
        faults[fault] = counted
    print(
        f"\nreadings: {sent:,} sent over {ingest:.0f} s ({spread(rates)} readings/s per board), "
        f"lost {total_lost} (sent - min(acknowledged, stored)); replay errors: {errors or 'none'}"
    )
    return {"readings_sent": sent, "readings_lost": total_lost, "node_faults": faults}


def report_bytes_by_rpc(wire: Wire, n_rounds: int) -> Figures:
    """The per-RPC table, its total and the mean request."""
    print(
        f"\nbytes per board per round (decrypted HTTP/1.1; mean over {wire.boards} boards x "
        f"{n_rounds} rounds):"
    )
    print(f"  {'rpc':30} {'calls':>6} {'sent':>8} {'headers':>8} {'received':>9}")
    by_rpc: dict[str, dict[str, float]] = {}
    for rpc, rows in wire.ordered():
        per = {f.name: wire.per_round(rows, f.name) for f in fields(RpcBytes)}
        print(
            f"  {rpc:30} {per['calls']:6.1f} {per['sent']:8.0f} "
            f"{per['sent_headers']:8.0f} {per['received']:9.0f}"
        )
        by_rpc[rpc] = {k: round(v, 1) if k == "calls" else round(v) for k, v in per.items()}
    all_rows = wire.all_rows()
    sent_per = wire.per_round(all_rows, "sent")
    received_per = wire.per_round(all_rows, "received")
    headers_per = wire.per_round(all_rows, "sent_headers")
    calls_per = wire.per_round(all_rows, "calls")
    print(f"  {'total':30} {calls_per:6.1f} {sent_per:8.0f} {headers_per:8.0f} {received_per:9.0f}")
    mean_request = total(all_rows, "sent") / max(total(all_rows, "calls"), 1)
    mean_headers = total(all_rows, "sent_headers") / max(total(all_rows, "calls"), 1)
    print(
        f"  a request is {mean_request:.0f} B on average, {mean_headers:.0f} B of it the "
        f"request line and headers (Flower's signed-identity headers on every call); "
        f"{statistics.mean(wire.connections or [0]):.1f} TLS connections per board"
    )
    return {
        "bytes_sent_per_board_round": round(sent_per),
        "bytes_received_per_board_round": round(received_per),
        "headers_sent_per_board_round": round(headers_per),
        "requests_per_board_round": round(calls_per, 1),
        "by_rpc_per_board_round": by_rpc,
    }


def report_bytes_overheads(wire: Wire, handshake: tuple[int, int]) -> Figures:
    """Where the bytes go beyond the model: sessions, polls, heartbeats, headers, TLS."""
    handshake_sent, handshake_received = handshake
    all_rows = wire.all_rows()
    sent_per = wire.per_round(all_rows, "sent")
    calls_per = wire.per_round(all_rows, "calls")
    session_rows = [r for rpc, rows in wire.rpcs.items() if rpc in SESSION_RPCS for r in rows]
    polls = wire.rpcs.get("pull-messages (empty poll)", [])
    heartbeats = wire.rpcs.get("send-node-heartbeat", [])
    print(
        f"  per round: once-per-session calls {wire.per_round(session_rows, 'sent'):.0f} B, "
        f"idle polls (every 3 s) {wire.per_round(polls, 'sent'):.0f} B, heartbeats "
        f"{wire.per_round(heartbeats, 'sent'):.0f} B; sent + received "
        f"{sent_per + wire.per_round(all_rows, 'received'):.0f} B"
    )
    # The model and metrics themselves: the bodies of the pushed objects (content-addressed
    # protobuf objects: arrays as .npy, metrics, records and message heads).
    pushed = wire.rpcs.get("push-object", [])
    payload_per = (total(pushed, "sent") - total(pushed, "sent_headers")) / wire.per
    opened_per = sum(wire.opened) / wire.per
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
    return {
        "ratio_to_goal": round(sent_per / GOAL_BYTES_PER_BOARD_ROUND, 2),
        "payload_bytes_per_board_round": round(payload_per),
        "ratio_to_payload": round(sent_per / max(payload_per, 1), 1),
        "tls_connections_per_board_round": round(opened_per, 1),
        "tls_client_handshake_bytes": handshake_sent,
        "tls_estimated_extra_sent_per_board_round": round(tls_per),
        "by_rpc_sent_per_board_round": {
            rpc: round(wire.per_round(rows, "sent")) for rpc, rows in wire.ordered()
        },
    }
