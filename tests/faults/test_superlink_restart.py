"""A restarted SuperLink.

With its state in a SQLite file (``superlink_state = "sqlite"``) it does not believe the
previous process's nodes are still online: Flower's own link state (its real SQLite schema) is
written and read back here, and a node that was online when the SuperLink stopped is offline
after ``mark_leftover_nodes_offline``, so the next round does not pick it and the returning
board can activate at once. With its state in memory (the default) a SuperLink killed mid-run
is restarted by ``sleepfed-server run``, every board is registered with it again, and the
run's remaining rounds are done by the next run (real server, real agents).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from flwr.server.superlink.linkstate import LinkState, LinkStateFactory
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager

from sleepfed.server.app.history import History
from sleepfed.server.fleet.superlink import mark_leftover_nodes_offline
from tests.support.federation_helpers import (
    PYTHON,
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


def _link_state(database: Path) -> LinkState:
    factory = LinkStateFactory(str(database), NoOpFederationManager(), ObjectStoreFactory())
    return factory.state()


def _statuses(state: LinkState) -> dict[int, str]:
    return {info.node_id: info.status for info in state.get_node_info()}


def test_nodes_left_online_are_offline_after_a_restart(tmp_path: Path) -> None:
    database = tmp_path / "superlink.db"
    before = _link_state(database)
    left_online = before.create_node("owner", "owner", b"board-a key", 30.0)
    never_active = before.create_node("owner", "owner", b"board-b key", 30.0)
    assert before.activate_node(left_online, 30.0)
    # the board's new node, a few seconds later, is refused: the old one still counts
    assert not before.activate_node(left_online, 30.0)

    assert mark_leftover_nodes_offline(database) == 1

    after = _link_state(database)
    assert _statuses(after) == {left_online: "offline", never_active: "registered"}
    assert after.activate_node(left_online, 30.0)  # the returning board gets in at once
    assert mark_leftover_nodes_offline(database) == 1  # and is reset again by the next start


def test_no_database_or_no_node_table_is_not_an_error(tmp_path: Path) -> None:
    assert mark_leftover_nodes_offline(tmp_path / "absent.db") == 0
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert mark_leftover_nodes_offline(empty) == 0


# -- the SuperLink alone dies mid-run (its state in memory, the default) ---------------------

SUBJECTS = ["4426783", "8258170"]
HELD_OUT = ["1066528", "2638030"]


def _superlink_pid(server: subprocess.Popen[bytes]) -> int:
    children = psutil.Process(server.pid).children(recursive=True)
    return next(c.pid for c in children if "flower-superlink" in " ".join(c.cmdline()))


def _registered(server_config: Path) -> dict[str, tuple[str, str]]:
    """board id -> (status, node id) as ``sleepfed-server boards list --json`` says."""
    result = subprocess.run(
        [PYTHON, "-m", "sleepfed.server.ops.cli", "boards", "list", "--config",
         str(server_config), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return {b["board_id"]: (b["status"], str(b["node_id"])) for b in json.loads(result.stdout)}


@pytest.mark.slow
def test_a_superlink_killed_mid_run_comes_back_knowing_every_board_and_the_run_completes(
    tmp_path: Path, walch_dir: Path
) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=2, min_nodes=2, walch_dir=walch_dir, held_out=HELD_OUT
    )
    boards = [
        write_board(tmp_path, f"board-{i}", port, certs["ca"], walch_dir=walch_dir, subject=s,
                    retry_max=8.0, federation_extra="server_check_seconds = 1\n"
                    "server_lost_seconds = 8\n")
        for i, s in enumerate(SUBJECTS)
    ]  # fmt: skip
    history_path = tmp_path / "server" / "state" / "history.db"
    log = tmp_path / "server" / "server.log"
    server = start_server(server_config)
    agents = [start_agent(b) for b in boards]
    try:

        def rounds() -> list[int]:
            history = History(history_path)
            try:
                return [r.global_round for r in history.rounds()]
            finally:
                history.close()

        wait_for(lambda: history_path.exists() and rounds() == [1], 400, "round 1")
        before = _registered(server_config)
        os.kill(_superlink_pid(server), signal.SIGKILL)
        assert server.wait(600) == 0, log.read_text()[-3000:]
        after = _registered(server_config)
        history = History(history_path)
        records, runs = history.rounds(), history.runs()
        history.close()
    finally:
        stop([*agents, server])
    text = log.read_text()
    assert "superlink exited" in text and "restarting it" in text, text[-3000:]
    # the new SuperLink knew no board: each was registered again, with a new node id
    assert {b: s for b, (s, _) in after.items()} == {
        "board-0": "registered",
        "board-1": "registered",
    }
    assert all(after[b][1] != before[b][1] for b in before), (before, after)
    # the interrupted run's ServerApp went with its SuperLink; the next run did round 2
    assert [r.global_round for r in records] == [1, 2]
    assert [r.train_nodes for r in records] == [2, 2]
    assert [r["status"] for r in runs] == ["interrupted", "finished"], runs
    assert all(board_state(b).get("model_round") == 2 for b in boards)
