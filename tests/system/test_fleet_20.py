"""Twenty real boards, three rounds: every board in every round, nothing lost, no round at its
timeout, and what a board sends per round bounded (see BYTES_PER_ROUND_LIMIT).

Each board is a real ``sleepfed-agent run`` with an enrolled P-256 node key, a serial source
on its own PTY fed by a replay of a real Walch 2019 subject while it federates, and TLS to
the server's public address with node authentication (tests/support/load_fleet.py). The first
``CAPTURED`` boards reach the server through a capture proxy, which counts their bytes per
Fleet RPC; the other sixteen talk to the server's address directly (twenty proxies in the
test's own process would cost more CPU than the boards they measure, on two cores).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from tests.support.federation_helpers import board_state
from tests.support.load_fleet import (
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
    wait_connected,
)

BOARDS = 20
ROUNDS = 3
CAPTURED = 4
RATE = 5.0  # readings/s per board: a replay that keeps going through every round
ROUND_TIMEOUT = 400.0
# Issue 14 asks for <= 20 KB sent per board per round: the whole is bounded by that, polls
# and heartbeats included (they grow with a round's length: a waiting node polls every 3 s
# and beats every ~24 s). What the messages cost is bounded more tightly: about 13 KB with
# the model's arrays packed (benchmarks/results/load*.json), 19 KB before.
# A pull-object answered "not yet available" is the same: its count grows with the server's
# load, not with what the message holds (tests/support/load_fleet.board_bytes).
TIME_DRIVEN = (
    "pull-messages (empty poll)",
    "send-node-heartbeat",
    "pull-object (not yet available)",
)
MESSAGE_BYTES_LIMIT = 15_000
BYTES_PER_ROUND_LIMIT = 20_000
# Flower objects per message with the arrays packed (sleepfed.common.packed_arrays): in, a
# Message, RecordDict and ConfigRecord; out, a train reply adds its MetricRecord, an
# evaluate reply carries no arrays (Message, RecordDict, MetricRecord). At most: the
# SuperLink asks only for the objects it lacks, and objects are named by their content, so an
# update equal to another board's (boards holding the same night) is not pushed twice.
# Unpacked, the array alone was three objects more each way: 24 pulled, 21 pushed.
OBJECTS_PULLED = 3 * (ROUNDS + 1)
OBJECTS_PUSHED = 4 * ROUNDS + 3


@pytest.mark.slow
def test_twenty_boards_train_every_round_and_lose_nothing(tmp_path: Path, walch_dir: Path) -> None:
    fleet = build_fleet(
        tmp_path, walch_dir, BOARDS, ROUNDS, RATE, round_timeout=ROUND_TIMEOUT, captured=CAPTURED
    )
    agents = []
    server = None
    try:
        server = start_server_synced(fleet)
        agents = [start_agent(board.config) for board in fleet.boards]
        wait_connected(fleet, agents)
        fleet.start_replays()
        ingest_started = time.monotonic()
        code = server.wait(ROUNDS * ROUND_TIMEOUT + 300)
        assert code == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
        deadline = time.monotonic() + 120
        while not sessions_finished(fleet) and time.monotonic() < deadline:
            time.sleep(1.0)
        ingest_seconds = time.monotonic() - ingest_started
        fleet.end_replays()
        assert all(a.poll() is None for a in agents), "an agent died"
        counts = {b.name: (b.sent, fleet.acked(b), stored_readings(b)) for b in fleet.boards}
        faults = {b.name: node_faults(b) for b in fleet.boards}
        models = {b.name: board_state(b.config).get("model_round") for b in fleet.boards}
        wire = {b.name: board_bytes(b) for b in fleet.boards[:CAPTURED]}
        started = run_started_at(fleet)
    finally:
        stop([*agents, *([server] if server is not None else [])])
        fleet.close()

    rounds = rounds_of(fleet)
    # every board trained in every round, and scored every round's model
    assert [(r, t, e) for r, t, e, _ in rounds] == [(n, BOARDS, BOARDS) for n in (1, 2, 3)], rounds
    assert models == {b.name: ROUNDS for b in fleet.boards}, models
    # no round waited out its timeout (a lost reply makes a round wait for it)
    ends = [started] + [created for *_, created in rounds]
    seconds = [b - a for a, b in itertools.pairwise(ends)]
    assert all(s < ROUND_TIMEOUT for s in seconds), seconds
    # no reply lost, no node restarted after a server error
    assert all(f == {"node_replies_lost": 0, "node_restarts": 0} for f in faults.values()), faults
    for board in fleet.boards:
        assert not board.replay_error, f"{board.name}: {board.replay_error}"
        sent, acked, stored = counts[board.name]
        # the replay kept its rate through the rounds (paced, so at most RATE/s), ...
        assert sent >= 0.8 * RATE * ingest_seconds, f"{board.name}: only {sent} sent"
        # ... and every reading sent was acknowledged and is in the buffer
        assert acked == sent and stored == sent, (board.name, sent, acked, stored)
    for name, (table, used, _) in wire.items():
        calls = {rpc: row.calls for rpc, row in table.items()}
        # each round one train message in and one reply out, and the last model in one
        # evaluate message (sleepfed.server.app.round_loop); one session
        assert calls.get("pull-messages (message)") == ROUNDS + 1, (name, calls)
        assert calls.get("push-messages") == ROUNDS + 1, (name, calls)
        assert calls.get("activate-node") == 1, (name, calls)
        assert ROUNDS + 1 <= calls.get("pull-object", 0) <= OBJECTS_PULLED, (name, calls)
        assert ROUNDS + 1 <= calls.get("push-object", 0) <= OBJECTS_PUSHED, (name, calls)
        assert used >= 1, name
        per_round = {rpc: round(row.sent / ROUNDS) for rpc, row in table.items()}
        sent = sum(per_round.values())
        messages = sum(v for rpc, v in per_round.items() if rpc not in TIME_DRIVEN)
        assert messages <= MESSAGE_BYTES_LIMIT, (name, messages, per_round, calls)
        assert sent <= BYTES_PER_ROUND_LIMIT, (name, sent, per_round, calls)
