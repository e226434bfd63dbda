"""The federation benchmarks/bench_memory.py measures: a TLS SuperLink (``sleepfed-server run
--once``, one round, two boards) and two agent daemons, sampled through the round's phases:
idle (the daemons up, the server not yet), the round (server start to exit and the boards'
sessions over) and after (between rounds)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from memory_sampling import Series

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.federation_helpers import (  # noqa: E402
    board_state,
    free_port,
    pki,
    start_agent,
    start_server,
    stop,
    write_board,
    write_server_config,
)

INTERVAL = 0.2
IDLE_SECONDS = 5.0
AFTER_SECONDS = 5.0
ROUND_TIMEOUT = 150.0
BOARD_SUBJECTS = ["4426783", "8258170"]
HELD_OUT = ["1066528", "2638030", "8000685", "8692923"]


@dataclass
class FederationRun:
    """What one measured round leaves: the samples, the phases' times, the boards' ends."""

    series: dict[str, Series]
    server: Series
    marks: dict[str, float]
    states: dict[str, dict[str, object]]
    logs: dict[str, str]


def _heartbeat(config: Path) -> bool:
    try:
        return bool(board_state(config).get("heartbeat_at"))
    except Exception:
        return False


def _session_over(config: Path, pid: int) -> bool:
    state = board_state(config)
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return True
    return state.get("last_session_outcome") == "finished" and not children


@dataclass
class Federation:
    """Two boards and (once the round starts) the server, with their RSS series."""

    root: Path
    server_config: Path
    boards: list[Path]
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    server: subprocess.Popen[bytes] | None = None
    series: dict[str, Series] = field(default_factory=dict)
    server_series: Series = field(default_factory=Series)
    marks: dict[str, float] = field(default_factory=dict)
    began: float = field(default_factory=time.monotonic)

    def sample(self, phase: str) -> None:
        for board, agent in zip(self.boards, self.agents, strict=True):
            self.series[board.parent.name].add(phase, agent.pid)
        if self.server is not None:
            self.server_series.add(phase, self.server.pid)

    def sample_for(self, seconds: float, phase: str) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample(phase)
            time.sleep(INTERVAL)

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic() - self.began

    def wait_agents_up(self) -> None:
        """Idle: the daemons are up, their night extracted (pre-filled), the server not yet."""
        deadline = time.monotonic() + 60
        while not all(_heartbeat(b) for b in self.boards):
            if time.monotonic() > deadline or any(a.poll() is not None for a in self.agents):
                raise RuntimeError("agents did not start: see " + str(self.root / "board0"))
            time.sleep(0.2)

    def run_round(self) -> None:
        """The round: from starting the server until it exits (run --once)."""
        self.mark("server_start")
        self.server = start_server(self.server_config)
        deadline = time.monotonic() + ROUND_TIMEOUT
        while self.server.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"round not over in {ROUND_TIMEOUT:.0f}s")
            self.sample("round")
            time.sleep(INTERVAL)
        self.mark("server_exit")
        if self.server.returncode != 0:
            log = (self.root / "server" / "server.log").read_text()[-2000:]
            raise RuntimeError(f"server exited with {self.server.returncode}:\n{log}")

    def wait_sessions_over(self) -> None:
        """Between rounds: each board's session over and its SuperNode gone."""
        pairs = list(zip(self.boards, self.agents, strict=True))
        deadline = time.monotonic() + 60
        while not all(_session_over(b, a.pid) for b, a in pairs):
            if time.monotonic() > deadline:
                break
            self.sample("round")
            time.sleep(INTERVAL)
        self.mark("sessions_over")

    def stop(self) -> None:
        stop([*self.agents, *([self.server] if self.server is not None else [])])


def _federation(root: Path, walch: Path) -> Federation:
    certs = pki(root)
    port = free_port()
    server_config = write_server_config(
        root, port, certs, rounds=1, min_nodes=2, walch_dir=walch, held_out=HELD_OUT
    )
    boards = [
        write_board(root, f"board{i}", port, certs["ca"], walch_dir=walch, subject=subject)
        for i, subject in enumerate(BOARD_SUBJECTS)
    ]
    return Federation(root, server_config, boards, series={b.parent.name: Series() for b in boards})


def run_federation(root: Path, walch: Path) -> FederationRun:
    federation = _federation(root, walch)
    federation.agents = [start_agent(b) for b in federation.boards]
    federation.began = time.monotonic()
    try:
        federation.wait_agents_up()
        federation.sample_for(IDLE_SECONDS, "idle")
        federation.run_round()
        federation.wait_sessions_over()
        time.sleep(1.0)
        federation.sample_for(AFTER_SECONDS, "after")
        states = {b.parent.name: board_state(b) for b in federation.boards}
    finally:
        federation.stop()
    boards = federation.boards
    logs = {b.parent.name: (b.parent / "agent.log").read_text(errors="replace") for b in boards}
    return FederationRun(
        federation.series, federation.server_series, federation.marks, states, logs
    )
