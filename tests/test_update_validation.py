"""Update validation: the rules on constructed replies, and bad updates from a real board."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from federation_helpers import (
    free_port,
    pki,
    start_agent,
    start_server,
    stop,
    write_board,
    write_server_config,
)
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from privacy_helpers import (
    board_update,
    fedavg,
    max_abs_difference,
    patient,
    start_adversarial_agent,
)

from agent import model
from server.history import History
from server.update_validation import ValidationRules, norm_limit, validate_replies

GLOBAL = [np.zeros((1, model.N_FEATURES)), np.zeros(1)]


def _reply(node: int, arrays: list[np.ndarray], weight: object = 100) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": weight})}
        if weight is not None
        else {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"train-loss": 0.5})}
    )
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # for Message()
    instruction = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    return Message(content=content, reply_to=instruction)  # a reply from ``node``


def _honest(node: int, scale: float) -> Message:
    return _reply(node, [np.full((1, model.N_FEATURES), 0.1 * scale), np.array([0.2 * scale])])


def test_each_rule_rejects_with_its_reason() -> None:
    bad_nan = [np.full((1, model.N_FEATURES), 0.1), np.array([np.inf])]
    replies = [
        _honest(1, 1.0),
        _honest(2, 1.2),
        _honest(3, 0.9),
        _reply(4, bad_nan),
        _reply(5, [np.zeros((1, 6)), np.zeros(1)]),
        _reply(6, [np.zeros((1, model.N_FEATURES), dtype=np.float32), np.zeros(1)]),
        _reply(7, [np.zeros((1, model.N_FEATURES))]),
        _reply(8, [g + 0.1 for g in GLOBAL], weight=None),
        _reply(9, [g + 0.1 for g in GLOBAL], weight=-3),
        _honest(10, 1000.0),
    ]
    accepted, rejections, norms = validate_replies(replies, GLOBAL, ValidationRules())
    assert [m.metadata.src_node_id for m in accepted] == [1, 2, 3]
    assert {r.node_id: r.reason for r in rejections} == {
        4: "non-finite",
        5: "shape",
        6: "dtype",
        7: "structure",
        8: "weight",
        9: "weight",
        10: "norm-outlier",
    }
    assert sorted(norms) == [1, 2, 3, 10]
    assert math.isclose(norms[1], math.sqrt(12 * 0.01 + 0.04))


def test_mad_rule_needs_three_updates_and_tolerates_honest_spread() -> None:
    assert norm_limit([1.0, 500.0], 3.5) is None  # two updates: no majority to lean on
    # median 2, MAD 1 → 2 + 3.5 * max(1.4826, 1.0)
    assert math.isclose(norm_limit([1.0, 2.0, 3.0], 3.5) or 0.0, 2 + 3.5 * 1.4826)
    # near-identical norms: the floor (half the median) keeps 2.5 acceptable
    assert (norm_limit([2.0, 2.01, 2.02, 2.5], 3.5) or 0.0) > 2.5
    capped = validate_replies(
        [_honest(1, 1.0), _honest(2, 50.0)], GLOBAL, ValidationRules(max_update_norm=1.0)
    )
    assert [r.reason for r in capped[1]] == ["norm-cap"]


BOARD_SUBJECTS = ["4426783", "8258170", "9106476"]
HELD_OUT = ["1066528", "2638030"]


@pytest.mark.slow
def test_bad_updates_from_a_real_board_are_rejected(tmp_path: Path, walch_dir: Path) -> None:
    """Board 2 sends NaN in round 1 and a 1000x update in round 2; both rounds aggregate
    exactly the two honest boards' FedAvg, and the history keeps the rejections."""
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=2, min_nodes=3, walch_dir=walch_dir, held_out=HELD_OUT
    )
    boards = [
        patient(
            write_board(tmp_path, f"board{i}", port, certs["ca"], walch_dir=walch_dir, subject=s)
        )
        for i, s in enumerate(BOARD_SUBJECTS)
    ]
    server = start_server(server_config)
    agents = [start_agent(boards[0]), start_agent(boards[1])]
    agents.append(start_adversarial_agent(boards[2], "1:nan,2:scale"))
    try:
        assert server.wait(480) == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
        history = History(tmp_path / "server" / "state" / "history.db")
        rounds = history.rounds()
        assert [r.global_round for r in rounds] == [1, 2]
        assert [r.train_nodes for r in rounds] == [2, 2]
        assert [r.eval_nodes for r in rounds] == [3, 3]
        assert [[x["reason"] for x in r.rejected] for r in rounds] == [
            ["non-finite"],
            ["norm-outlier"],
        ]
        bad_node = rounds[0].rejected[0]["node"]
        assert rounds[1].rejected[0]["node"] == bad_node
        previous = model.initial_arrays()
        for record in rounds:
            expected = fedavg([board_update(b, previous) for b in boards[:2]])
            got = model.arrays_from_bytes(record.arrays)
            assert max_abs_difference(got, expected) < 1e-9
            previous = got
        assert history.runs()[-1]["status"] == "finished"
    finally:
        stop([*agents, server])
