"""A board revoked while a run is live, and a fleet proxy that dies mid-run: real boards, a
real ``sleepfed-server run``, the operator's own ``sleepfed-server boards revoke``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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

Attack = Callable[[str, str, str, bool], None]
SUBJECTS = {"board-a": "4426783", "board-b": "8258170", "board-c": "9106476"}
HELD_OUT = ["1066528", "2638030"]
SLOW_TRAIN_SECONDS = 25
HERE = Path(__file__).resolve().parent


def _slow_board_env() -> dict[str, str]:
    """board-a trains round 1 slowly: round 1 stays open while the operator revokes."""
    return {
        "SLEEPFED_CLIENTAPP": "slow_board_client_app:app",
        "SLEEPFED_TEST_TRAIN_DELAY": f"1:{SLOW_TRAIN_SECONDS}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }


def _counter(config: Path, name: str) -> int:
    counters = board_state(config)["counters"]
    assert isinstance(counters, dict)
    return int(counters.get(name, 0))


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_a_board_revoked_between_rounds_gets_nothing_and_a_dead_proxy_comes_back(
    tmp_path: Path, walch_dir: Path, attack: Attack
) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=3, min_nodes=2, walch_dir=walch_dir, held_out=HELD_OUT,
        round_timeout=300,
    )  # fmt: skip
    boards = {
        name: write_board(tmp_path, name, port, certs["ca"], walch_dir=walch_dir, subject=subject)
        for name, subject in SUBJECTS.items()
    }
    a, b, c = boards.values()
    server = start_server(server_config)
    agents = [start_agent(a, env=_slow_board_env()), start_agent(b)]
    log = tmp_path / "server" / "server.log"
    proxy_pid_file = tmp_path / "server" / "state" / "fleet-proxy" / "nginx.pid"
    try:
        # Round 1: board-b has trained and sent its update while board-a's training takes 25 s.
        wait_for(lambda: _counter(b, "rounds_trained") == 1, 300, "board-b to end round 1")
        revoked = subprocess.run(
            [sys.executable, "-m", "sleepfed.server.ops.cli", "boards", "revoke", "--config",
             str(server_config), "board-b"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        revoked_at = time.time()
        assert revoked.returncode == 0 and "revoked board-b" in revoked.stdout, revoked.stdout
        agents.append(start_agent(c))  # round 2 needs two boards: board-a and board-c

        # Round 2 ends: the fleet proxy is killed; the server restarts it and round 3 runs.
        history_path = tmp_path / "server" / "state" / "history.db"

        def rounds_done() -> int:
            history = History(history_path)
            try:
                return len(history.rounds())
            finally:
                history.close()

        wait_for(lambda: rounds_done() >= 2, 400, "round 2")
        old_proxy = int(proxy_pid_file.read_text())
        os.kill(old_proxy, signal.SIGKILL)
        wait_for(
            lambda: (
                proxy_pid_file.exists()
                and proxy_pid_file.read_text().strip() not in ("", str(old_proxy))
                and _accepts(port)
            ),
            30,
            "the server to restart its fleet proxy",
        )

        assert server.wait(600) == 0, log.read_text()[-3000:]
        history = History(history_path)
        rounds = history.rounds()
        history.close()
        # Round 1 may count board-b's update or not: it was sent before the revocation, but
        # Flower may drop a reply of a node that is unregistered by the time the ServerApp
        # collects the round. No later message reaches it: round 1's model is scored by
        # board-a and board-c with round 2's updates, and so on.
        figures = [(r.global_round, r.train_nodes, r.eval_nodes) for r in rounds]
        assert figures[0] in ((1, 2, 2), (1, 1, 2)), rounds
        assert figures[1:] == [(2, 2, 2), (3, 2, 2)], rounds
        # The revocation was in force before round 1 was recorded, so before round 2 began.
        assert rounds[0].created_at > revoked_at
        wait_for(
            lambda: board_state(b).get("last_session_outcome") == "refused",
            120,
            "board-b's agent to report refused",
        )
        trained_b = _counter(b, "rounds_trained"), _counter(b, "rounds_evaluated")
        held = trained_b == (1, 0) and board_state(b).get("last_session_outcome") == "refused"
        attack("board revoked between rounds 1 and 2 of a live run",
               "no further message; its agent reports refused",
               f"trained/evaluated {trained_b[0]}/{trained_b[1]}, "
               f"{board_state(b).get('last_session_outcome')}", held)  # fmt: skip
        assert held, trained_b
        assert _counter(a, "rounds_trained") == 3 and _counter(c, "rounds_trained") == 2
        assert "fleet_proxy exited" in log.read_text() and "restarting" in log.read_text()
        # The server stopped: its proxy stopped with it.
        new_proxy = int(proxy_pid_file.read_text()) if proxy_pid_file.exists() else 0
        wait_for(lambda: not _accepts(port), 30, "the boards' port to close")
        assert new_proxy == 0 or not Path(f"/proc/{new_proxy}").exists()
    finally:
        stop([*agents, server])
