"""Six real boards in three time zones whose night windows never overlap: FedBuff makes
versions from each zone in turn, synchronous FedAvg with ``min_nodes = 6`` none.

Each board is a real ``sleepfed-agent run`` (P-256 node key, TLS, node authentication) with
``board.timezone`` its zone and ``federation.window = "01:00-05:00"`` local time: Berlin's
window is 00:00-04:00 UTC, Los Angeles' 09:00-13:00, Tokyo's 16:00-20:00. All six read one
stepped wall clock (``SLEEPFED_CLOCK_OFFSET_FILE``, sleepfed.board.service.clock): the test
moves it to 01:30 in each zone in turn, as a day would, and on once that zone's two boards
have trained. The server's clock is not moved: it has no windows.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from sleepfed.board.service.clock import OFFSET_FILE_ENV
from sleepfed.model.walch import walch_subjects
from sleepfed.server.app.history import History
from tests.support.federation_helpers import (
    agent_status,
    board_state,
    free_port,
    pki,
    start_agent,
    start_server,
    stop,
    wait_for,
    write_board,
    write_server_config,
)
from tests.support.helpers import run_agent, run_server
from tests.system.test_federation import HELD_OUT

WINDOW = "01:00-05:00"
# (zone, the board clock's UTC moment when that zone's window is open: 01:30 local there)
PHASES = [
    ("Europe/Berlin", "2026-12-07T00:30:00+00:00"),
    ("America/Los_Angeles", "2026-12-07T09:30:00+00:00"),
    ("Asia/Tokyo", "2026-12-07T16:30:00+00:00"),
]
# 22:00 in Berlin, 13:00 in Los Angeles, 06:00 in Tokyo: every window closed
BEFORE = "2026-12-06T21:00:00+00:00"
BOARDS_PER_ZONE = 2
VERSIONS = 8  # K = 2: more than two zones' first trainings make, so Tokyo's boards end it
PHASE_TIMEOUT = 240.0


@dataclass
class Fleet:
    root: Path
    strategy: str
    boards: dict[str, list[Path]] = field(default_factory=dict)  # zone -> agent configs
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # zone -> real time

    def step_clock(self, utc: str) -> None:
        """The boards' wall clock to ``utc`` from now on."""
        moment = datetime.fromisoformat(utc).timestamp()
        (self.root / "clock-offset").write_text(repr(moment - time.time()))

    def history(self) -> tuple[list[object], list[dict[str, object]]]:
        history = History(self.root / "server" / "state" / "history.db")
        try:
            return history.rounds(), history.runs()
        finally:
            history.close()


def _trained(config: Path) -> int:
    counters = board_state(config)["counters"]
    return int(counters.get("rounds_trained", 0))  # type: ignore[union-attr]


def _start(
    fleet: Fleet, walch_dir: Path, federation: str, min_nodes: int
) -> list[subprocess.Popen[bytes]]:
    certs = pki(fleet.root)
    port = free_port()
    server_config = write_server_config(
        fleet.root,
        port,
        certs,
        rounds=VERSIONS,
        min_nodes=min_nodes,
        walch_dir=walch_dir,
        held_out=HELD_OUT,
        round_timeout=600.0,
    )
    server_config.write_text(server_config.read_text().replace("[federation]\n", federation))
    subjects = iter(s for s in walch_subjects(walch_dir) if s not in HELD_OUT)
    for zone, _ in PHASES:
        city = zone.split("/")[1].lower()
        fleet.boards[zone] = [
            write_board(
                fleet.root,
                f"{city}{i}",
                port,
                certs["ca"],
                walch_dir=walch_dir,
                subject=next(subjects),
                window=WINDOW,
                timezone=zone,
            )
            for i in range(BOARDS_PER_ZONE)
        ]
    fleet.step_clock(BEFORE)
    env = {OFFSET_FILE_ENV: str(fleet.root / "clock-offset")}
    server = start_server(server_config)
    return [server] + [start_agent(b, env) for boards in fleet.boards.values() for b in boards]


def _phases(fleet: Fleet, durations: list[float] | None) -> None:
    """Each zone's window in turn: until its boards trained (``durations`` None) or for the
    given seconds each; the real-time span of each phase in ``fleet.spans``."""
    time.sleep(10)  # the agents are up, every window closed: nobody joins
    for index, (zone, moment) in enumerate(PHASES):
        fleet.step_clock(moment)
        started = time.time()
        if durations is None:
            wait_for(
                lambda z=zone: all(_trained(b) >= 1 for b in fleet.boards[z]),  # type: ignore[misc]
                PHASE_TIMEOUT,
                f"the boards in {zone} to train in their window",
            )
        else:
            time.sleep(durations[index])
        fleet.spans[zone] = (started, time.time())


@pytest.mark.slow
def test_fedbuff_trains_across_time_zones_where_fedavg_waits(
    tmp_path: Path, walch_dir: Path
) -> None:
    fedbuff = Fleet(tmp_path / "fedbuff", "fedbuff")
    processes = _start(
        fedbuff, walch_dir, '[federation]\nstrategy = "fedbuff"\nbuffer_size = 2\n', min_nodes=1
    )
    try:
        _phases(fedbuff, None)
        server = processes[0]
        assert server.wait(PHASE_TIMEOUT) == 0, (
            fedbuff.root / "server" / "server.log"
        ).read_text()[-3000:]
        last_zone = PHASES[-1][0]
        fedbuff.spans[last_zone] = (fedbuff.spans[last_zone][0], time.time())
        rounds, runs = fedbuff.history()
        states = {b: board_state(b) for boards in fedbuff.boards.values() for b in boards}
        statuses = {b: agent_status(b) for b in fedbuff.boards[last_zone]}
        text = run_agent("status", "--config", str(fedbuff.boards[last_zone][0])).stdout
    finally:
        stop(processes)
    # the operator's commands read the versions as rounds
    server_config = str(fedbuff.root / "server" / "server.toml")
    listed = run_server("history", "--config", server_config)
    lines = listed.stdout.splitlines()
    assert listed.returncode == 0 and len(lines) == VERSIONS, listed
    assert all("  staleness " in line and "held-out AUC" in line for line in lines), lines
    report = fedbuff.root / "report.html"
    written = run_server("report", "--config", server_config, "--out", str(report))
    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == f"wrote {report}: {VERSIONS} rounds"

    assert [r.global_round for r in rounds] == list(range(1, VERSIONS + 1))  # type: ignore[attr-defined]
    assert runs[-1]["status"] == "finished"
    for zone, boards in fedbuff.boards.items():
        start, end = fedbuff.spans[zone]
        for board in boards:
            state = states[board]
            assert state["counters"]["rounds_trained"] >= 1, board  # type: ignore[index]
            # it trained inside its own window only: never after the clock left it
            assert start <= float(state["last_train_at"]) <= end, (board, state, start, end)  # type: ignore[arg-type]
            assert 0 <= int(state["last_trained_from"]) < VERSIONS  # type: ignore[call-overload]
    # the last zone's boards hold the last version; status says what they trained from
    for board, status in statuses.items():
        assert status["model"]["round"] == VERSIONS, status  # type: ignore[index]
        trained_from = status["rounds"]["last_trained_from"]  # type: ignore[index]
        assert trained_from == states[board]["last_trained_from"] and trained_from >= 2
    first = statuses[fedbuff.boards[last_zone][0]]
    trained_from = first["rounds"]["last_trained_from"]  # type: ignore[index]
    assert f"from global round {trained_from} at " in text, text
    assert f"(global round {VERSIONS})" in text, text

    # the baseline: the same boards, windows and phase lengths under synchronous FedAvg
    fedavg = Fleet(tmp_path / "fedavg", "fedavg")
    processes = _start(fedavg, walch_dir, "[federation]\n", min_nodes=6)
    try:
        _phases(fedavg, [end - start for start, end in fedbuff.spans.values()])
        rounds, runs = fedavg.history()
        joined = [
            board_state(b).get("session_started_at")
            for boards in fedavg.boards.values()
            for b in boards
        ]
    finally:
        stop(processes)
    # never six boards online at once: no round, and the run never finished
    assert rounds == [] and all(run["status"] != "finished" for run in runs), (rounds, runs)
    assert all(joined), joined  # yet every board joined in its window
