"""The server's round history: versioned rounds, resume point and rollback (a real SQLite file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sleepfed.model import logistic as model
from sleepfed.server.app.history import History


def _add(history: History, global_round: int, value: float, run_id: str = "r1") -> None:
    arrays = [np.full(model.SHAPE, value)]
    history.add_round(
        global_round=global_round,
        run_id=run_id,
        server_round=global_round,
        arrays=model.arrays_to_bytes(arrays),
        train_metrics={"train-loss": 0.3},
        eval_metrics={},
        server_metrics={"auc": 0.8},
        train_nodes=3,
        eval_nodes=3,
    )


def test_rounds_persist_and_the_last_active_round_is_the_resume_point(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    history = History(path)
    for r in (1, 2, 3):
        _add(history, r, float(r))
    history.close()
    assert path.stat().st_mode & 0o777 == 0o600
    reopened = History(path)
    last = reopened.last_round()
    assert last is not None and last.global_round == 3
    assert model.intercept(model.arrays_from_bytes(last.arrays)) == 3.0
    assert [r.train_nodes for r in reopened.rounds()] == [3, 3, 3]


def test_rollback_keeps_the_rounds_but_resumes_from_the_chosen_one(tmp_path: Path) -> None:
    history = History(tmp_path / "history.db")
    for r in (1, 2, 3):
        _add(history, r, float(r))
    assert history.rollback(1) == 2
    last = history.last_round()
    assert last is not None and last.global_round == 1
    # The rolled-back rounds stay in the history, flagged.
    assert [(r.global_round, r.rolled_back) for r in history.rounds()] == [
        (1, False),
        (2, True),
        (3, True),
    ]
    # The next run numbers on from round 1; round 2 exists again, once active.
    _add(history, 2, 20.0, run_id="r2")
    assert [r.global_round for r in history.rounds(include_rolled_back=False)] == [1, 2]
    with pytest.raises(ValueError, match="no active round 7"):
        history.rollback(7)


def test_an_active_round_cannot_be_written_twice(tmp_path: Path) -> None:
    import sqlite3

    history = History(tmp_path / "history.db")
    _add(history, 1, 1.0)
    with pytest.raises(sqlite3.IntegrityError):
        _add(history, 1, 2.0)


def test_a_model_saved_as_the_earlier_two_arrays_loads_as_one(tmp_path: Path) -> None:
    """Histories and boards' buffers written before the model was one array hold
    ``[coef (1, F), intercept (1,)]``: they load as the one array, coefficients first, so a
    server resumes from such a history and a board predicts with such a model."""
    earlier = [np.full((1, model.N_FEATURES), 0.5), np.array([-1.0])]
    history = History(tmp_path / "history.db")
    history.add_round(
        global_round=1, run_id="r1", server_round=1, arrays=model.arrays_to_bytes(earlier),
        train_metrics={}, eval_metrics={}, server_metrics={}, train_nodes=1, eval_nodes=1,
    )  # fmt: skip
    last = history.last_round()
    assert last is not None
    loaded = model.arrays_from_bytes(last.arrays)
    model.check_arrays(loaded)
    assert model.intercept(loaded) == -1.0
    assert (model.coefficients(loaded) == 0.5).all()
    features = np.ones((1, model.N_FEATURES))
    expected = 1.0 / (1.0 + np.exp(-(0.5 * model.N_FEATURES - 1.0)))
    assert model.good_probability(loaded, features) == pytest.approx([expected])
