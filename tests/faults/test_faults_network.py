"""Fault tests: the server goes away in the middle of a round, and a board's network is cut
in the middle of a round. Real processes: ``sleepfed-server run`` (TLS SuperLink), agent
daemons with their supervised SuperNodes, replayed wearables on PTYs, and (for the cut)
boards in their own network namespaces joined to the host by veth pairs.

Times are scaled down through the boards' [federation] settings (production defaults in
brackets): a running node checks the server every second [30 s] and is stopped after 8 s
without it [120 s]; retries back off from 0.5 s [1 s] doubling up to 8 s [60 s], full jitter.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sleepfed.provisioning.pki import ensure_demo_pki
from sleepfed.server.app.history import History
from tests.support.federation_helpers import (
    PYTHON,
    board_state,
    free_port,
    pki,
    start,
    start_agent,
    start_server,
    stop,
    wait_for,
    write_board,
    write_server_config,
)
from tests.support.network_namespaces import NetworkLab, skip_unless_possible

BOARD_SUBJECTS = ["4426783", "8258170", "9106476"]
HELD_OUT = ["1066528", "2638030", "8000685", "8692923"]
RETRY_INITIAL = 0.5  # write_board's retry_initial_seconds
RETRY_MAX = 8.0
SERVER_WATCH = "server_check_seconds = 1\nserver_lost_seconds = 8\n"
SERVER_DOWN_SECONDS = 40.0
CUT_SECONDS = 15.0
RETRY_LINE = re.compile(
    r"federation attempt=\d+ failed \((.*)\); retrying in ([0-9.]+)s \(backoff step (\d+)\)"
)


def received_messages(config: Path) -> int:
    """Messages (train or evaluate) the board's SuperNode has taken from the server."""
    log = config.parent / "supernode.log"
    return log.read_text(errors="replace").count("Receiving:") if log.exists() else 0


def readings(config: Path) -> int:
    counters = board_state(config)["counters"]
    assert isinstance(counters, dict)
    return sum(int(v) for k, v in counters.items() if k.startswith("accepted_"))


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def crash(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and everything it started (SuperLink, SuperExec, ServerApp): no
    goodbye, no cleanup, as in a power cut."""
    for pid in [process.pid, *descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(30)


def start_replay(walch_dir: Path, subject: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A wearable replaying a real night into a PTY at 20 readings/s; returns its path."""
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "sleepfed_tools.replay",
            "--data",
            str(walch_dir),
            "--subject",
            subject,
            "--pty",
            "--wait-open",
            "60",
            "--rate",
            "20",
            "--night-start",
            str(time.time()),
            "--linger",
            "600",
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline().decode().split()
    assert first[:1] == ["PTY"], f"replay said {first}"
    return process, first[1]


def add_serial_source(config: Path, port: str) -> None:
    with config.open("a") as handle:
        handle.write(f'\n[[sources]]\ntype = "serial"\nname = "wearable"\nport = "{port}"\n')


@pytest.mark.slow
def test_server_killed_mid_round_resumes_and_boards_rejoin(tmp_path: Path, walch_dir: Path) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=2, min_nodes=2, walch_dir=walch_dir, held_out=HELD_OUT
    )
    history_path = tmp_path / "server" / "state" / "history.db"
    processes: list[subprocess.Popen[bytes]] = []
    boards: list[Path] = []
    try:
        for i, subject in enumerate(BOARD_SUBJECTS[:2]):
            replay, pty = start_replay(walch_dir, subject, tmp_path / f"replay{i}.log")
            processes.append(replay)
            config = write_board(
                tmp_path,
                f"board{i}",
                port,
                certs["ca"],
                walch_dir=walch_dir,
                subject=subject,
                retry_max=RETRY_MAX,
                federation_extra=SERVER_WATCH,
            )
            add_serial_source(config, pty)
            boards.append(config)
        server = start_server(server_config)
        processes.append(server)
        agents = [start_agent(b) for b in boards]
        processes += agents
        # Round 2 is under way: both boards took its train message (one message a round).
        wait_for(lambda: all(received_messages(b) >= 2 for b in boards), 480, "round 2 to start")
        assert [r.global_round for r in History(history_path).rounds()] == [1]
        crash(server)
        killed_at = time.time()
        shutil.copy(server_config.parent / "server.log", server_config.parent / "server-1.log")
        at_kill = [readings(b) for b in boards]

        time.sleep(SERVER_DOWN_SECONDS)
        assert all(a.poll() is None for a in agents), "an agent died while the server was gone"
        at_restart = [readings(b) for b in boards]
        assert all(after > before for before, after in zip(at_kill, at_restart, strict=True)), (
            f"boards stopped collecting while the server was gone: {at_kill} -> {at_restart}"
        )
        retried = [board_state(b).get("session_attempts") or [] for b in boards]
        for attempts in retried:
            assert isinstance(attempts, list)
            assert sum(1 for t in attempts if t > killed_at) >= 4, f"few retries: {attempts}"

        restarted_at = time.time()
        server = start_server(server_config)
        processes.append(server)
        assert server.wait(300) == 0, (server_config.parent / "server.log").read_text()[-3000:]

        # The server resumed the interrupted run: no duplicate and no missing global round.
        history = History(history_path)
        rounds = history.rounds()
        assert [r.global_round for r in rounds] == [1, 2]
        assert [r.train_nodes for r in rounds] == [2, 2]
        runs = history.runs()
        assert [r["status"] for r in runs] == ["interrupted", "finished"]
        assert (runs[1]["start_round"], runs[1]["planned_rounds"]) == (1, 1)
        round_2_at = rounds[1].created_at
        history.close()

        wait_for(
            lambda: all(board_state(b).get("last_session_outcome") == "finished" for b in boards),
            60,
            "both boards to finish their session",
        )
        for config, before in zip(boards, at_restart, strict=True):
            state = board_state(config)
            assert state["model_round"] == 2
            assert readings(config) > before, "collection stopped after the rejoin"
            attempts = [float(t) for t in state["last_session_attempts"]]  # type: ignore[union-attr]
            down = [t for t in attempts if killed_at < t < restarted_at]
            rejoin = attempts[-1]  # the attempt whose node finished the run
            assert rejoin >= restarted_at
            # tenacity's wait_random_exponential: the n-th sleep is uniform in
            # [0, min(max, initial * 2**(n-1))], n counted afresh from the retry that stopped
            # the node whose server was lost; the agent logs each one.
            retries = list(RETRY_LINE.finditer((config.parent / "agent.log").read_text()))
            assert len(retries) >= len(down)
            for match in retries:
                step, sleep = int(match[3]), float(match[2])
                assert sleep <= min(RETRY_MAX, RETRY_INITIAL * 2 ** (step - 1)) + 1e-6
            lost = [m for m in retries if "node stopped" in m[1]]
            assert lost and lost[-1][3] == "1", "the backoff did not start afresh"
            after = retries[retries.index(lost[-1]) :]
            assert [int(m[3]) for m in after[:4]] == [1, 2, 3, 4]
            gaps = [b - a for a, b in itertools.pairwise(down)]
            assert max(gaps) > 2 * RETRY_INITIAL, f"no backoff between attempts: {gaps}"
            print(
                f"{config.parent.name}: attempts after the crash at +"
                + ", +".join(f"{t - killed_at:.1f}" for t in down)
                + f" s; node started {rejoin - restarted_at:.1f} s after the restart; round 2 "
                f"persisted {round_2_at - restarted_at:.1f} s after it"
            )
    finally:
        stop(processes[::-1])


@pytest.mark.slow
def test_board_cut_off_mid_round_rejoins_later(tmp_path: Path, walch_dir: Path) -> None:
    skip_unless_possible()
    lab = NetworkLab()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        links = [lab.add_board(name) for name in ("a", "b", "c")]
        server_host = links[0].host_address  # the only address the SuperLink binds
        for link in links:
            lab.route(link, server_host)
        certs = ensure_demo_pki(tmp_path / "pki", [server_host])
        port = free_port()
        server_config = write_server_config(
            tmp_path,
            port,
            certs,
            rounds=2,
            # all three are sampled for round 1 (with 2, the round could start before board c
            # or b connected); Flower does not require min_nodes replies, so the round ends
            # with two once the cut board's node expires, and round 2 waits for three again
            min_nodes=3,
            walch_dir=walch_dir,
            held_out=HELD_OUT,
            round_timeout=90,
            host=server_host,
        )
        boards = [
            write_board(
                tmp_path,
                f"board-{link.namespace.rsplit('-', 1)[1]}",
                port,
                certs["ca"],
                walch_dir=walch_dir,
                subject=subject,
                retry_max=4.0,
                server_host=server_host,
                federation_extra=SERVER_WATCH,
            )
            for link, subject in zip(links, BOARD_SUBJECTS, strict=True)
        ]
        server = start_server(server_config)
        processes.append(server)
        agents = [
            start(
                [
                    *link.exec_prefix(),
                    PYTHON,
                    "-m",
                    "sleepfed.board.service.cli",
                    "run",
                    "--config",
                    str(b),
                ],
                b.parent / "agent.log",
            )
            for link, b in zip(links, boards, strict=True)
        ]
        processes += agents
        cut_board, cut_link = boards[2], links[2]
        wait_for(lambda: received_messages(cut_board) >= 1, 300, "board c to take round 1")
        lab.cut(cut_link)
        cut_at = time.time()
        wait_for(
            lambda: "node stopped" in (cut_board.parent / "agent.log").read_text(),
            60,
            "the cut board to notice and stop its node",
        )
        time.sleep(max(0.0, cut_at + CUT_SECONDS - time.time()))
        lab.restore(cut_link)
        restored_at = time.time()

        assert server.wait(300) == 0, (server_config.parent / "server.log").read_text()[-3000:]
        history = History(tmp_path / "server" / "state" / "history.db")
        rounds = history.rounds()
        assert [r.global_round for r in rounds] == [1, 2]
        # Round 1 completed without the cut board; it rejoined and trained round 2.
        assert [r.train_nodes for r in rounds] == [2, 3]
        assert history.runs()[-1]["status"] == "finished"
        round_1_at = rounds[0].created_at
        history.close()
        wait_for(
            lambda: all(board_state(b).get("last_session_outcome") == "finished" for b in boards),
            60,
            "every board to finish its session",
        )
        state = board_state(cut_board)
        assert state["last_train_round"] == 2
        assert state["model_round"] == 2
        attempts = [float(t) for t in state["last_session_attempts"]]  # type: ignore[union-attr]
        rejoin = attempts[-1]  # the attempt whose node trained round 2
        assert rejoin >= restored_at
        assert all(a.poll() is None for a in agents), "an agent died"
        print(
            f"cut at 0 s; round 1 persisted at +{round_1_at - cut_at:.1f} s without the cut "
            f"board; link back at +{restored_at - cut_at:.1f} s; the board's attempts at +"
            + ", +".join(f"{t - cut_at:.1f}" for t in attempts if t > cut_at)
            + f" s; node started {rejoin - restored_at:.1f} s after the link came back"
        )
    finally:
        stop(processes[::-1])
        lab.close()


def test_interrupted_run_is_marked_and_its_end_returned(tmp_path: Path) -> None:
    history = History(tmp_path / "history.db")
    try:
        history.start_run("first", 0, 3)
        history.finish_run("first", "finished")
        assert history.interrupt_unfinished_runs() is None
        history.start_run("second", 3, 4)  # killed: never finished
        assert history.interrupt_unfinished_runs() == 7
        assert [r["status"] for r in history.runs()] == ["finished", "interrupted"]
        assert history.interrupt_unfinished_runs() is None
    finally:
        history.close()
