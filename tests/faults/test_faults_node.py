"""A SuperNode that the server hurts without ending it: the agent notices and restarts it.

Flower's SuperNode does not retry an HTTP 500 from the SuperLink. When the SuperLink's SQLite
state is locked for longer than its 5-s busy timeout (under load, or here: another process
holds the write lock, as a backup tool could), the node's pull of its messages fails, its
pulling ends, and its process stays up, never to see another message. The agent reads its
node's output while it runs, counts the fault, stops that node and starts a new one.

Real processes: ``sleepfed-server run`` (TLS SuperLink), two agent daemons with their
SuperNodes; the fault is a real lock on the SuperLink's real database file.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from sleepfed.board.federation.supernode import node_faults
from sleepfed.server.app.history import History
from tests.support.federation_helpers import (
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

BOARD_SUBJECTS = ["4426783", "8258170"]
HELD_OUT = ["1066528", "2638030"]
# Flower's SQLite busy timeout is 5 s; the lock is held past it and past a few of the node's
# pulls.
LOCK_SECONDS = 12.0


def test_node_output_faults_are_read_from_flower_s_own_lines() -> None:
    # lines as Flower 1.42's SuperNode writes them (ANSI colours included)
    sent_failed = (
        "\x1b[91mERROR \x1b[0m:     Failed to send message 3f1c: Server error '500 Internal "
        "Server Error' for url 'https://127.0.0.1:9092/v1/fleet/push-object'"
    )
    pull_failed = (
        "\x1b[91mERROR \x1b[0m:     Server error '500 Internal Server Error' for url "
        "'https://127.0.0.1:9092/v1/fleet/pull-messages'"
    )
    calm = "\x1b[92mINFO \x1b[0m:      Received successfully"
    assert node_faults("\n".join([calm, sent_failed, calm])) == (1, False)
    assert node_faults("\n".join([pull_failed])) == (0, True)
    assert node_faults("\n".join([sent_failed, sent_failed, pull_failed])) == (2, True)
    assert node_faults(calm) == (0, False)


@pytest.mark.slow
def test_a_node_whose_pull_failed_is_restarted_and_trains(tmp_path: Path, walch_dir: Path) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=1, min_nodes=2, walch_dir=walch_dir, held_out=HELD_OUT
    )
    # The SuperLink's state in a SQLite file (not the default, memory), so that the test can
    # hold that file's lock: Flower then answers the node's pull with HTTP 500, as it does
    # under load with its state in a file.
    text = server_config.read_text()
    server_config.write_text(
        text.replace("[server]\n", '[server]\nsuperlink_state = "sqlite"\n', 1)
    )
    boards = [
        write_board(
            tmp_path,
            f"board-{i}",
            port,
            certs["ca"],
            walch_dir=walch_dir,
            subject=subject,
            federation_extra="server_check_seconds = 1\n",
        )
        for i, subject in enumerate(BOARD_SUBJECTS)
    ]
    hurt = boards[0]
    # The production patience (75 s): the wedged node's deactivation can be held up by the
    # same lock, and Flower then counts it online for up to two heartbeats (60 s), refusing
    # the restarted node meanwhile; the agent waits that out instead of ending its session.
    hurt.write_text(
        hurt.read_text().replace(
            "activation_patience_seconds = 8", "activation_patience_seconds = 75"
        )
    )
    processes: list[subprocess.Popen[bytes]] = [start_server(server_config)]
    try:
        processes.append(start_agent(hurt))
        node_log = hurt.parent / "supernode.log"
        # board-0's node is connected and pulling; the run waits for a second board
        wait_for(
            lambda: node_log.exists() and "SuperNode ID" in node_log.read_text(),
            120,
            "board-0's node to connect",
        )
        time.sleep(3.0)
        database = tmp_path / "server" / "state" / "superlink.db"
        lock = sqlite3.connect(database, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            time.sleep(LOCK_SECONDS)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_for(
            lambda: board_state(hurt)["counters"].get("node_restarts", 0) >= 1,  # type: ignore[union-attr]
            60,
            "the agent to restart its wedged node",
        )
        log = (hurt.parent / "agent.log").read_text()
        assert "the server failed the node's pull" in log
        fault = board_state(hurt)["last_node_fault"]
        assert fault["counter"] == "node_restarts"  # type: ignore[index]
        # the restarted node is in (Flower prints the node's id once it is activated) ...
        wait_for(
            lambda: node_log.read_text().count("SuperNode ID") >= 2,
            150,
            "board-0's restarted node to be activated",
        )
        # ... and the second board arrives; the round needs both, and the restarted node takes part
        processes.append(start_agent(boards[1]))
        assert processes[0].wait(300) == 0, (server_config.parent / "server.log").read_text()[
            -3000:
        ]
        history = History(tmp_path / "server" / "state" / "history.db")
        rounds = [(r.global_round, r.train_nodes) for r in history.rounds()]
        history.close()
        # Usually both boards train. The old node's deactivation is held up by the same lock
        # and can reach the SuperLink just after the new node registered (a CI run saw 37 ms
        # between them); Flower then counts two online nodes, sends the old one the train
        # message, gets an error reply for it, and the round trains with the restarted node
        # alone. Either way the restarted node trained: without the restart it never would.
        assert len(rounds) == 1 and rounds[0][0] == 1 and rounds[0][1] in (1, 2), rounds
        assert board_state(hurt)["counters"]["rounds_trained"] == 1  # type: ignore[index]
    finally:
        stop(processes[::-1])
