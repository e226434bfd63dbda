"""One train message per board per round: the real ServerApp (sleepfed.server.app.server_app)
drives the boards' real ClientApp over prepared buffers in this process
(sleepfed.server.research.simulation.InProcessGrid), and every message is counted."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.labelled_windows import labelled_windows
from sleepfed.board.training import client_app
from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset, walch_subjects
from sleepfed.server.app import server_app
from sleepfed.server.app.history import History
from sleepfed.server.app.recording_strategy import pooled_evaluation, take_evaluations
from sleepfed.server.research.simulation import InProcessGrid, prepare_buffers

BOARDS = 3


class CountingGrid(InProcessGrid):
    """Counts the messages each board receives, by type, and keeps their configs."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.sent: list[tuple[int, str, dict[str, object]]] = []

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        messages = list(messages)
        for m in messages:
            assert not m.content.array_records, "the model travels packed in the config"
            config = dict(m.content.config_records.get("config", {}))
            self.sent.append((m.metadata.dst_node_id, m.metadata.message_type, config))
        return super().push_messages(messages)

    def per_board(self, kind: str) -> dict[int, int]:
        return {n: sum(1 for d, k, _ in self.sent if d == n and k == kind) for n in (1, 2, 3)}


def _run_config(tmp_path: Path, rounds: int) -> dict[str, object]:
    text = (resources.files("sleepfed.server.app") / "flower_app" / "pyproject.toml").read_text()
    defaults = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    return {
        **defaults,
        "num-rounds": rounds,
        "min-nodes": BOARDS,
        "history-path": str(tmp_path / "history.db"),
        client_app.SIM_BUFFER_DIR_KEY: str(tmp_path / "boards"),
    }


def _run(tmp_path: Path, rounds: int) -> CountingGrid:
    config = _run_config(tmp_path, rounds)
    grid = CountingGrid(client_app.app, BOARDS, config)
    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=config,  # type: ignore[arg-type]
    )
    server_app.main(grid, context)
    return grid


def _held_out(path: Path) -> tuple[np.ndarray, np.ndarray]:
    buffer = Buffer(path, readonly=True)
    try:
        features, labels, held_out, _ = labelled_windows(buffer)
    finally:
        buffer.close()
    return features[held_out], labels[held_out]


@pytest.fixture
def boards(tmp_path: Path, walch_dir: Path) -> list[Path]:
    subjects = walch_subjects(walch_dir)[:BOARDS]
    nights = walch_dataset(walch_dir, subjects)
    return prepare_buffers(tmp_path / "boards", [nights[s] for s in subjects])


def test_a_round_is_one_train_message_and_the_boards_scores_reach_the_history(
    tmp_path: Path, boards: list[Path]
) -> None:
    grid = _run(tmp_path, rounds=3)

    # three rounds: three train messages and one last evaluate message per board (not 3 + 3)
    assert grid.per_board("train") == {1: 3, 2: 3, 3: 3}
    assert grid.per_board("evaluate") == {1: 1, 2: 1, 3: 1}
    model_rounds = [c.get(client_app.MODEL_ROUND_KEY) for _, k, c in grid.sent if k == "train"]
    assert model_rounds == [None] * 3 + [1] * 3 + [2] * 3  # round 1 carries the initial model
    history = History(tmp_path / "history.db")
    rounds = history.rounds()
    history.close()
    assert [(r.global_round, r.train_nodes, r.eval_nodes) for r in rounds] == [
        (1, 3, 3),
        (2, 3, 3),
        (3, 3, 3),
    ]
    # each round's evaluation is its model scored on the boards' held-out windows, pooled
    held_out = [_held_out(path) for path in boards]
    for record in rounds:
        arrays = model.arrays_from_bytes(record.arrays)
        losses = [(model.log_loss(arrays, x, y), len(y)) for x, y in held_out]
        expected = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
        assert record.eval_metrics["eval-loss"] == pytest.approx(expected, rel=1e-9)
        assert 0.5 < record.eval_metrics["eval-accuracy"] <= 1.0
    # every board kept each round's model, the last one as the run's final model
    for path in boards:
        buffer = Buffer(path, readonly=True)
        try:
            assert [r[1] for r in buffer.model_receipts()] == [1, 2, 3]
            assert buffer.counters()["rounds_evaluated"] == 3
            assert buffer.counters()["rounds_trained"] == 3
            state = buffer.board_state()
        finally:
            buffer.close()
        assert (state.model_round, state.run_finished) == (3, "1")
        assert state.population_good_share is not None


def test_evaluation_only_and_a_resumed_run(tmp_path: Path, boards: list[Path]) -> None:
    _run(tmp_path, rounds=2)
    history = History(tmp_path / "history.db")
    before = history.rounds()[-1]
    history.close()

    # rounds = 0: the latest model goes to every board once, is scored, nothing trains
    grid = _run(tmp_path, rounds=0)
    assert grid.per_board("train") == {1: 0, 2: 0, 3: 0}
    assert grid.per_board("evaluate") == {1: 1, 2: 1, 3: 1}
    history = History(tmp_path / "history.db")
    after = history.rounds()
    history.close()
    assert [r.global_round for r in after] == [1, 2]
    assert after[-1].eval_nodes == BOARDS
    assert after[-1].eval_metrics["eval-loss"] == pytest.approx(before.eval_metrics["eval-loss"])

    # a resumed run's first train message carries the history's model (round 2); the boards
    # already scored it, and that evaluation is kept
    grid = _run(tmp_path, rounds=2)
    first = [c.get(client_app.MODEL_ROUND_KEY) for _, k, c in grid.sent if k == "train"][:3]
    assert first == [2, 2, 2]
    history = History(tmp_path / "history.db")
    rounds = history.rounds()
    history.close()
    assert [(r.global_round, r.eval_nodes) for r in rounds] == [(1, 3), (2, 3), (3, 3), (4, 3)]


def test_an_evaluation_only_run_with_no_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="evaluation-only run needs a model"):
        _run(tmp_path, rounds=0)


def _reply(node: int, metrics: dict[str, object]) -> Message:
    from flwr.app import ArrayRecord, MetricRecord

    message = Message(RecordDict(), dst_node_id=node, message_type="train")
    message.metadata.__dict__["_src_node_id"] = node
    content = RecordDict(
        {"arrays": ArrayRecord(model.initial_arrays()), "metrics": MetricRecord(metrics)}  # type: ignore[arg-type]
    )
    return Message(content, reply_to=message)


def test_a_boards_scores_are_taken_out_of_its_update_and_its_claims_are_bounded() -> None:
    honest = {"num-examples": 100, "eval-loss": 0.4, "eval-accuracy": 0.8, "eval-examples": 25}
    inflated = {"num-examples": 100, "eval-loss": 9.0, "eval-accuracy": 0.0, "eval-examples": 1e12}
    broken = {
        "num-examples": 100,
        "eval-loss": float("nan"),
        "eval-accuracy": 0.5,
        "eval-examples": 5,
    }
    replies = [_reply(1, honest), _reply(2, inflated), _reply(3, broken)]
    taken = take_evaluations(replies)
    assert sorted(taken) == [1, 2]  # NaN gives no scores
    for reply in replies:  # the update's own metrics are what is left
        assert set(reply.content["metrics"]) == {"num-examples"}
    # a board claiming 10^12 held-out windows weighs no more than the cap on examples
    pooled = pooled_evaluation(list(taken.values()), max_examples=25)
    assert pooled["eval-loss"] == pytest.approx((0.4 + 9.0) / 2)
    assert pooled_evaluation([], max_examples=25) == {}
