"""The federation for real: a TLS SuperLink started by ``sleepfed-server run`` and agent
daemons whose supervised SuperNodes train on their own buffers, all on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from sleepfed.board.nights.labelled_windows import labelled_windows
from sleepfed.model import logistic as model
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

BOARD_SUBJECTS = ["4426783", "8258170", "9106476"]
HELD_OUT = ["1066528", "2638030", "8000685", "8692923"]


@pytest.mark.slow
def test_three_boards_two_rounds_over_tls(tmp_path: Path, walch_dir: Path) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=2, min_nodes=3, walch_dir=walch_dir, held_out=HELD_OUT
    )
    # board0 has a P-384 key, as boards enrolled before P-256 became the default do
    boards = [
        write_board(
            tmp_path, f"board{i}", port, certs["ca"], walch_dir=walch_dir, subject=s,
            curve="p384" if i == 0 else "p256",
        )
        for i, s in enumerate(BOARD_SUBJECTS)
    ]  # fmt: skip
    server = start_server(server_config)
    agents = [start_agent(b) for b in boards]
    try:
        assert server.wait(300) == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
        history = History(tmp_path / "server" / "state" / "history.db")
        rounds = history.rounds()
        assert [r.global_round for r in rounds] == [1, 2]
        assert [r.train_nodes for r in rounds] == [3, 3]
        assert [r.eval_nodes for r in rounds] == [3, 3]
        keys = [(tmp_path / f"board{i}" / "node.key").read_bytes() for i in range(3)]
        curves = [serialization.load_ssh_private_key(k, None).curve.name for k in keys]  # type: ignore[union-attr]
        assert curves == ["secp384r1", "secp256r1", "secp256r1"]  # both kinds trained
        first, second = (model.arrays_from_bytes(r.arrays) for r in rounds)
        assert not np.allclose(first[0], 0.0), "round 1 left the initial (zero) model"
        assert not np.allclose(first[0], second[0]), "round 2 did not change the global model"
        for record in rounds:
            assert 0.65 <= record.server_metrics["auc"] <= 1.0
            assert 0.5 <= record.server_metrics["accuracy"] <= 1.0
            assert 0.0 < record.train_metrics["train-loss"] < 0.7
            assert 0.5 <= record.eval_metrics["eval-accuracy"] <= 1.0
        assert history.runs()[-1]["status"] == "finished"

        # Every board keeps the final global model, predicts its night, and leaves.
        def done(config: Path) -> bool:
            state = board_state(config)
            return state.get("last_session_outcome") == "finished"

        wait_for(lambda: all(done(b) for b in boards), 60, "every board to end its session")
        for config in boards:
            status = agent_status(config)
            assert status["model"]["round"] == 2  # type: ignore[index]
            assert status["last_night"]["predicted_quality"] in ("good", "poor")  # type: ignore[index]
            counters = board_state(config)["counters"]
            assert counters["rounds_trained"] == 2  # type: ignore[index]
            assert counters["rounds_evaluated"] == 2  # type: ignore[index]
        from sleepfed.board.buffer.store import Buffer

        buffer = Buffer(boards[0].parent / "buffer.db", readonly=True)
        latest = buffer.latest_model()
        buffer.close()
        assert latest is not None
        board_arrays = model.arrays_from_bytes(latest[3])
        assert len(board_arrays) == 1 and np.allclose(board_arrays[0], second[0])
        # The prior of the night estimates: the median of the boards' shares of Good training
        # windows (one vote per board), from their train metrics, sent back with the evaluate
        # messages.
        shares = []
        for config in boards:
            buffer = Buffer(config.parent / "buffer.db", readonly=True)
            _, labels, held_out, _ = labelled_windows(buffer)
            buffer.close()
            shares.append(float(labels[~held_out].mean()))
        prior = float(np.median(shares))
        assert rounds[-1].train_metrics["good-share"] == pytest.approx(prior)
        for config in boards:
            share = board_state(config)["population_good_share"]
            assert share == pytest.approx(prior) and 0.5 < prior < 1.0
            shown = agent_status(config)["model"]["population_good_share"]  # type: ignore[index]
            assert shown == pytest.approx(prior)
        # Between windows no node runs: the supervised SuperNode is gone.
        assert all(a.poll() is None for a in agents), "an agent died"
    finally:
        stop([*agents, server])


@pytest.mark.slow
def test_agent_joins_when_the_server_starts_late(tmp_path: Path, walch_dir: Path) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=1, min_nodes=2, walch_dir=walch_dir, held_out=HELD_OUT
    )
    boards = [
        write_board(
            tmp_path, f"board{i}", port, certs["ca"], walch_dir=walch_dir, subject=s, retry_max=3
        )
        for i, s in enumerate(BOARD_SUBJECTS[:2])
    ]
    agents = [start_agent(b) for b in boards]
    server = None
    try:
        wait_for(
            lambda: all(
                board_state(b)["counters"].get("federation_retries", 0) >= 2 for b in boards
            ),  # type: ignore[union-attr]
            40,
            "both boards to retry against the absent server",
        )
        assert all(a.poll() is None for a in agents)
        # The server restarts from its history: seed it with a round 7 to resume from, its
        # model saved as the two arrays (coef, intercept) of histories from before the model
        # was one array.
        history_path = tmp_path / "server" / "state" / "history.db"
        seeded = History(history_path)
        seed = [np.full((1, model.N_FEATURES), 0.01), np.array([1.5])]
        seeded.add_round(
            global_round=7,
            run_id="earlier",
            server_round=7,
            arrays=model.arrays_to_bytes(seed),
            train_metrics={},
            eval_metrics={},
            server_metrics={},
            train_nodes=2,
            eval_nodes=2,
        )
        seeded.close()
        server = start_server(server_config)
        assert server.wait(240) == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
        history = History(history_path)
        assert [(r.global_round, r.train_nodes) for r in history.rounds()] == [(7, 2), (8, 2)]
        assert history.runs()[-1]["start_round"] == 7
        # Local training warm-starts from the seeded model: round 8 stays near it, far from 0.
        resumed = model.arrays_from_bytes(history.rounds()[-1].arrays)
        assert [a.shape for a in resumed] == [model.SHAPE]
        assert abs(model.intercept(resumed) - 1.5) < abs(model.intercept(resumed) - 0.0)
        wait_for(
            lambda: all(board_state(b).get("last_session_outcome") == "finished" for b in boards),
            60,
            "both boards to finish their session",
        )
        for config in boards:
            assert agent_status(config)["model"]["round"] == 8  # type: ignore[index]
            attempts = board_state(config)["last_session_attempts"]
            assert isinstance(attempts, list) and len(attempts) >= 3
            gaps = np.diff(attempts)
            assert (gaps <= 3.0 + 1.0).all(), f"backoff exceeded its cap: {gaps}"
    finally:
        stop([*agents, *([server] if server else [])])


def _window_ending_in(seconds: float) -> str:
    now = datetime.now(UTC)
    start, end = now - timedelta(seconds=30), now + timedelta(seconds=seconds)
    return f"{start:%H:%M:%S}-{end:%H:%M:%S}"


def test_wrong_address_gives_up_at_the_window_end(tmp_path: Path) -> None:
    closed_port = free_port()  # nothing listens there
    window_seconds = 8.0
    config = write_board(
        tmp_path,
        "board",
        closed_port,
        tmp_path / "no-ca.pem",
        walch_dir=None,
        subject=None,
        window=_window_ending_in(window_seconds),
        retry_max=1.0,
    )
    # a board needs labelled windows to join: give it one extracted night
    from sleepfed.board.buffer.store import Buffer

    buffer = Buffer(config.parent / "buffer.db")
    buffer.save_night("2026-11-24", 0.0, 1.0, 20, [(0.0, [0.0] * model.N_FEATURES, 1)], None)
    buffer.close()
    window_end = time.time() + window_seconds
    agent = start_agent(config)
    try:
        wait_for(
            lambda: board_state(config).get("last_session_outcome") == "gave_up",
            30,
            "the board to give up",
        )
        state = board_state(config)
        attempts = state["last_session_attempts"]
        assert isinstance(attempts, list) and len(attempts) >= 3
        assert max(attempts) <= window_end + 0.5, "an attempt was made after the window closed"
        assert float(state["last_session_ended_at"]) <= window_end + 3.0  # type: ignore[arg-type]
        assert state["counters"]["federation_retries"] >= 2  # type: ignore[index]
        assert not (config.parent / "supernode.log").exists(), (
            "a node was started for a dead address"
        )
        time.sleep(1.5)
        assert agent.poll() is None, "the daemon must keep running"
        assert (
            board_state(config)["last_session_outcome"] == "gave_up"
        )  # no new session in this window
    finally:
        stop([agent])


def test_wrong_ca_is_refused_without_retrying(tmp_path: Path) -> None:
    """The board pins CA B; the server presents a certificate of CA A."""
    server_certs = pki(tmp_path / "a")
    other_ca = pki(tmp_path / "b")["ca"]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_certs["cert"], server_certs["key"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    handshakes: list[str] = []

    def serve() -> None:
        listener.settimeout(20)
        try:
            while True:
                conn, _ = listener.accept()
                try:
                    with context.wrap_socket(conn, server_side=True):
                        handshakes.append("ok")
                except (ssl.SSLError, OSError) as error:
                    handshakes.append(type(error).__name__)
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    config = write_board(
        tmp_path, "board", port, other_ca, walch_dir=None, subject=None, window="always"
    )
    from sleepfed.board.buffer.store import Buffer

    buffer = Buffer(config.parent / "buffer.db")
    buffer.save_night("2026-11-24", 0.0, 1.0, 20, [(0.0, [0.0] * model.N_FEATURES, 1)], None)
    buffer.close()
    agent = start_agent(config)
    try:
        wait_for(
            lambda: board_state(config).get("last_session_outcome") == "refused",
            30,
            "the board to refuse the server",
        )
        state = board_state(config)
        assert len(state["last_session_attempts"]) == 1  # type: ignore[arg-type]
        assert state["counters"].get("federation_retries", 0) == 0  # type: ignore[union-attr]
        assert len(handshakes) == 1
        assert agent.poll() is None
    finally:
        stop([agent])
        listener.close()
