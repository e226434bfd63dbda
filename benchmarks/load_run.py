"""One run of benchmarks/bench_load.py: the fleet of real boards started against one
``sleepfed-server run --once``, ingesting until the server exits and every session is over,
then what each board sent, acknowledged, stored and put on the wire."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from load_sampling import Sampler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


@dataclass
class LoadRun:
    """What the run leaves for the report (times are ``time.time()`` seconds)."""

    sampler: Sampler
    rounds: list[tuple[int, int, int, float]]  # (round, train nodes, eval nodes, created at)
    run_started: float
    measured_from: float
    server_ended: float
    ingest_seconds: float
    lost: dict[str, dict[str, object]]
    wire: dict[str, tuple[dict[str, RpcBytes], int, int]]
    handshake: tuple[int, int]
    marks: dict[str, float]
    # the SuperLink's HTTP 500s from its SQLite state (superlink_state = "sqlite")
    database_locked: int = 0
    server_exit: int = 0  # sleepfed-server run --once: 1 when its run failed


@dataclass
class Running:
    """The fleet's processes while they run (stopped in ``close`` whatever happened)."""

    fleet: Fleet
    sampler: Sampler = field(default_factory=Sampler)
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    server: subprocess.Popen[bytes] | None = None
    marks: dict[str, float] = field(default_factory=dict)
    began: float = 0.0  # time.time() when the server was started

    def start(self) -> float:
        """Server, then agents on their PTYs, then the replays; returns when ingest began."""
        self.began = began = time.time()
        self.server = start_server_synced(self.fleet)
        self.marks["keys_registered"] = time.time() - began
        self.agents = [start_agent(board.config) for board in self.fleet.boards]
        wait_connected(self.fleet, self.agents)
        self.marks["agents_connected"] = time.time() - began
        self.fleet.start_replays()
        pairs = zip(self.fleet.boards, self.agents, strict=True)
        self.sampler.agent_pids = {b.name: a.pid for b, a in pairs}
        self.sampler.server_pid = self.server.pid
        self.sampler.start()
        return time.time()  # the boards ingest from here on

    def wait_server(self, timeout: float, root: Path, may_fail: bool) -> float:
        """The server's exit (raises unless 0 or ``may_fail``), then every session over
        (≤ 120 s)."""
        assert self.server is not None
        if self.server.wait(timeout) != 0:
            log = (root / "server" / "server.log").read_text()[-3000:]
            if not may_fail:
                raise RuntimeError(f"server exited with {self.server.returncode}:\n{log}")
            print(f"server exited with {self.server.returncode}: its run failed")
        server_ended = time.time()
        deadline = time.time() + 120
        while not sessions_finished(self.fleet) and time.time() < deadline:
            time.sleep(1.0)
        self.marks["sessions_over"] = time.time() - self.began
        return server_ended

    def close(self) -> None:
        self.sampler.stop()
        stop([*self.agents, *([self.server] if self.server is not None else [])])
        self.fleet.close()


def readings_lost(fleet: Fleet) -> dict[str, dict[str, object]]:
    """Per board: sent, acknowledged, stored, lost (sent - min(acked, stored)), node faults."""
    lost: dict[str, dict[str, object]] = {}
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
    return lost


def database_locked(root: Path) -> int:
    """Lines of the SuperLink's log that report its SQLite state locked."""
    log = root / "server" / "state" / "superlink.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum("database is locked" in line for line in text.splitlines())


def run(args: argparse.Namespace, root: Path, walch: Path) -> LoadRun:
    fleet: Fleet = build_fleet(
        root,
        walch,
        args.boards,
        args.rounds,
        args.rate,
        args.key_curve,
        round_timeout=args.round_timeout,
        superlink_state=args.superlink_state,
    )
    running = Running(fleet)
    try:
        measured_from = running.start()
        server_ended = running.wait_server(args.timeout, root, args.may_fail)
        fleet.end_replays()
        running.sampler.stop()
        ingest_seconds = time.time() - measured_from
        return LoadRun(
            sampler=running.sampler,
            rounds=rounds_of(fleet),
            run_started=run_started_at(fleet),
            measured_from=measured_from,
            server_ended=server_ended,
            ingest_seconds=ingest_seconds,
            lost=readings_lost(fleet),
            wire={board.name: board_bytes(board) for board in fleet.boards},
            handshake=tls_handshake_bytes(fleet.certs),
            marks=running.marks,
            database_locked=database_locked(root),
            server_exit=running.server.returncode if running.server is not None else -1,
        )
    finally:
        running.close()
