"""FedBuff over the real transport: ``strategy = "fedbuff"`` in server.toml, a TLS SuperLink
with node authentication and three real agents; every version is a round of the history."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleepfed.board.buffer.store import Buffer
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

BOARD_SUBJECTS = ["4426783", "8258170", "9106476"]
HELD_OUT = ["1066528", "2638030", "8000685", "8692923"]
VERSIONS = 4


@pytest.mark.slow
def test_fedbuff_makes_versions_from_real_boards(tmp_path: Path, walch_dir: Path) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=VERSIONS, min_nodes=3, walch_dir=walch_dir, held_out=HELD_OUT
    )
    text = server_config.read_text()
    server_config.write_text(
        text.replace("[federation]\n", '[federation]\nstrategy = "fedbuff"\nbuffer_size = 2\n')
    )
    boards = [
        write_board(tmp_path, f"board{i}", port, certs["ca"], walch_dir=walch_dir, subject=s)
        for i, s in enumerate(BOARD_SUBJECTS)
    ]
    server = start_server(server_config)
    agents = [start_agent(b) for b in boards]
    try:
        assert server.wait(300) == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
        history = History(tmp_path / "server" / "state" / "history.db")
        rounds = history.rounds()
        runs = history.runs()
        history.close()
        assert [r.global_round for r in rounds] == list(range(1, VERSIONS + 1))
        assert all(1 <= r.train_nodes <= 2 for r in rounds)  # K = 2 updates a version
        assert all(0.6 <= r.server_metrics["auc"] <= 1.0 for r in rounds)
        assert runs[-1]["status"] == "finished"
        # every board keeps the last version, and trained
        wait_for(
            lambda: all(board_state(b).get("model_round") == VERSIONS for b in boards),
            60,
            "every board to keep the last version",
        )
        for board in boards:
            buffer = Buffer(board.parent / "buffer.db", readonly=True)
            try:
                assert buffer.counters()["rounds_trained"] >= 1, board
            finally:
                buffer.close()
    finally:
        stop([*agents, server])
