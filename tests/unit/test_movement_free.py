"""The model's movement-free head (sleepfed.model.logistic): what a board with a plain
heart-rate strap predicts with. It ignores movement, learns from heart rate and time alone on
real people's nights, is trained by boards without movement while they leave the full head as
it came, and a model saved before it existed loads with both heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sleepfed.model import logistic as model
from sleepfed.model.features import MOVEMENT_COLUMNS, epochs_from_readings
from sleepfed.model.walch import walch_dataset, walch_subjects
from sleepfed.server.app.held_out import held_out_scores

MOVEMENT = list(MOVEMENT_COLUMNS)


def _pooled(walch_dir: Path, subjects: list[str]) -> tuple[np.ndarray, np.ndarray]:
    nights = walch_dataset(walch_dir, subjects)
    x = np.vstack([n.features[n.labelled] for n in nights.values()])
    y = np.concatenate([n.labels[n.labelled] for n in nights.values()])
    return x, y


def test_the_movement_free_head_predicts_other_people_from_heart_rate_and_time(
    walch_dir: Path,
) -> None:
    subjects = walch_subjects(walch_dir)
    train_x, train_y = _pooled(walch_dir, subjects[:15])
    test_x, test_y = _pooled(walch_dir, subjects[15:])
    trained = model.train(model.initial_arrays(), train_x, train_y, steps=300)
    scores = held_out_scores(trained, test_x, test_y)
    print(f"held-out AUC: full {scores['auc']:.3f}, movement-free {scores['auc_no_movement']:.3f}")
    # heart rate and time carry most of it; movement adds what the full head has over it
    assert 0.75 < scores["auc_no_movement"] < scores["auc"] - 0.02
    # it never looks at movement: any movement values give the same probabilities
    scrambled = test_x.copy()
    scrambled[:, MOVEMENT] = np.random.default_rng(1).normal(size=(len(test_x), len(MOVEMENT)))
    assert np.array_equal(
        model.good_probability(trained, test_x, model.NO_MOVEMENT),
        model.good_probability(trained, scrambled, model.NO_MOVEMENT),
    )
    assert not np.array_equal(
        model.good_probability(trained, test_x), model.good_probability(trained, scrambled)
    )


def test_a_board_without_movement_trains_only_the_movement_free_head(walch_dir: Path) -> None:
    x, y = _pooled(walch_dir, walch_subjects(walch_dir)[:3])
    start = model.train(model.initial_arrays(), x, y, steps=5)
    without = model.train(start, x, y, movement=np.zeros(len(y), bool))
    assert np.array_equal(without[0][model.FULL], start[0][model.FULL])  # as it came
    assert not np.allclose(without[0][model.NO_MOVEMENT], start[0][model.NO_MOVEMENT])
    # a board with both kinds of night: the full head from its nights with movement only
    mixed = np.arange(len(y)) < len(y) // 2
    both = model.train(start, x, y, movement=mixed)
    only_moving = model.train(start, x[mixed], y[mixed])
    assert np.array_equal(both[0][model.FULL], only_moving[0][model.FULL])
    assert np.array_equal(both[0][model.NO_MOVEMENT], model.train(start, x, y)[0][1])


def test_a_night_without_a_movement_reading_is_flagged() -> None:
    hr = [(30.0 * e, 1, 60.0) for e in range(40)]
    assert not epochs_from_readings(hr, [], 0.0, 1200.0).has_movement
    with_movement = [*hr, (45.0, 3, 0.0)]  # one count of 0 is a reading: the person was still
    assert epochs_from_readings(with_movement, [], 0.0, 1200.0).has_movement


def test_a_model_from_before_the_movement_free_head_loads_with_both_heads() -> None:
    row = np.arange(1.0, model.N_FEATURES + 2).reshape(model.ONE_HEAD_SHAPE)
    loaded = model.arrays_from_bytes(model.arrays_to_bytes([row]))
    model.check_arrays(loaded)
    assert np.array_equal(loaded[0][model.FULL], row[0])
    free = row[0].copy()
    free[MOVEMENT] = 0.0
    assert np.array_equal(loaded[0][model.NO_MOVEMENT], free)
    # but a board refuses the old shape on the wire: boards and server upgrade together
    with pytest.raises(ValueError, match="shape"):
        model.check_arrays([row])
