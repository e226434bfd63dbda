"""The person's own model on the board (sleepfed.board.nights.personal_model): made from each
new global model on a real person's labelled nights, used for the nightly prediction only
when it beats the global model on the board's held-out windows, retired when it does not fit
the global model's shape; and a buffer from before it migrates."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sleepfed.board.buffer.schema import MIGRATIONS
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.labelled_windows import labelled_windows
from sleepfed.board.nights.personal_model import MIN_TRAIN_WINDOWS
from sleepfed.board.nights.tracker import predict_nights
from sleepfed.model import logistic as model
from sleepfed.model.features import estimated_efficiency
from sleepfed.model.walch import walch_dataset, walch_subjects
from tests.support.helpers import run_agent, write_agent_config

# One real night each (Walch 2019): with a global model trained on six other people, the
# personal model wins on 8530312's held-out windows and loses on 1449548's.
WINS, LOSES = "8530312", "1449548"
NIGHT = "2026-11-24"


def _buffer(
    tmp_path: Path, walch_dir: Path, subject: str = WINS, labelled: int | None = None
) -> Buffer:
    """A buffer holding ``subject``'s real night, its windows labelled (the first
    ``labelled``)."""
    night = walch_dataset(walch_dir, [subject])[subject]
    buffer = Buffer(str(tmp_path / "buffer.db"))
    rows = [
        (float(start) * 30.0, [float(v) for v in feats], int(label) if label >= 0 else None)
        for start, feats, label in zip(
            night.start_epochs, night.features, night.labels, strict=True
        )
    ]
    if labelled is not None:
        rows = [(s, f, lab if i < labelled else None) for i, (s, f, lab) in enumerate(rows)]
    buffer.save_night(NIGHT, 0.0, 30.0 * len(rows), len(rows), rows, None)
    return buffer


def _global_model(walch_dir: Path, subject: str = WINS) -> model.Arrays:
    """A global model as the federation would send it: trained on other people's nights."""
    others = [s for s in walch_subjects(walch_dir) if s != subject][:6]
    nights = walch_dataset(walch_dir, others)
    features = np.concatenate([nights[s].features for s in others])
    labels = np.concatenate([nights[s].labels for s in others])
    keep = labels >= 0
    return model.train(model.initial_arrays(), features[keep], labels[keep], steps=200)


def test_a_personal_model_that_wins_predicts_the_persons_nights(
    tmp_path: Path, walch_dir: Path
) -> None:
    buffer = _buffer(tmp_path, walch_dir)
    global_arrays = _global_model(walch_dir)
    buffer.save_model(1, "run-1", model.arrays_to_bytes(global_arrays))
    ((night, efficiency, _),) = predict_nights(buffer)

    record = buffer.personal_model()
    assert record is not None and record.base_version == 1
    features, labels, held_out, _ = labelled_windows(buffer)
    assert record.train_windows == int((~held_out).sum()) >= MIN_TRAIN_WINDOWS
    assert record.held_out_windows == int(held_out.sum())
    # the scores are the two models' own on the held-out windows
    personal = model.arrays_from_bytes(record.arrays)
    test_x, test_y = features[held_out], labels[held_out]
    assert record.global_loss == pytest.approx(model.log_loss(global_arrays, test_x, test_y))
    assert record.personal_loss == pytest.approx(model.log_loss(personal, test_x, test_y))
    assert record.kept and record.personal_loss < record.global_loss, record
    # the night was predicted with the personal model
    version, _, _, kind, head = buffer.latest_predictions()[night]
    assert (version, kind, head) == (1, "personal", "full")
    rows = np.array([r[2] for r in buffer.windows(NIGHT)])
    assert efficiency == pytest.approx(
        estimated_efficiency(model.good_probability(personal, rows), None)
    )

    # a new global model: the personal model is made anew from it, and only it is kept
    buffer.save_model(2, "run-1", model.arrays_to_bytes(global_arrays))
    predict_nights(buffer)
    newer = buffer.personal_model()
    assert newer is not None and newer.base_version == 2
    assert buffer.conn.execute("SELECT COUNT(*) FROM personal_models").fetchone()[0] == 1
    buffer.close()


def test_a_personal_model_that_loses_is_kept_aside_and_the_global_model_predicts(
    tmp_path: Path, walch_dir: Path
) -> None:
    buffer = _buffer(tmp_path, walch_dir, LOSES)
    buffer.save_model(1, "run-1", model.arrays_to_bytes(_global_model(walch_dir, LOSES)))
    ((night, _, _),) = predict_nights(buffer)
    record = buffer.personal_model()
    assert record is not None and not record.kept
    assert record.personal_loss >= record.global_loss + 0.05  # 0.499 against 0.349
    assert buffer.latest_predictions()[night][3] == "global"
    buffer.close()


def test_too_few_labelled_windows_make_no_personal_model(tmp_path: Path, walch_dir: Path) -> None:
    buffer = _buffer(tmp_path, walch_dir, labelled=20)
    buffer.save_model(1, "run-1", model.arrays_to_bytes(_global_model(walch_dir)))
    ((night, _, _),) = predict_nights(buffer)
    assert buffer.personal_model() is None
    assert buffer.latest_predictions()[night][3] == "global"
    buffer.close()


def test_a_personal_model_of_another_shape_is_retired(tmp_path: Path, walch_dir: Path) -> None:
    buffer = _buffer(tmp_path, walch_dir)
    global_arrays = _global_model(walch_dir)
    buffer.save_model(1, "run-1", model.arrays_to_bytes(global_arrays))
    predict_nights(buffer)
    record = buffer.personal_model()
    assert record is not None and record.kept
    # as if made under a model of another shape, for the global model the board holds now
    wide = model.arrays_to_bytes([np.zeros((1, model.N_FEATURES + 4))])
    buffer.save_personal_model(replace(record, base_version=2, arrays=wide))
    buffer.save_model(2, "run-1", model.arrays_to_bytes(global_arrays))
    ((night, _, _),) = predict_nights(buffer)
    assert buffer.latest_predictions()[night][3] == "global"
    assert buffer.counters()["personal_model_retired"] == 1
    assert buffer.personal_model() is None
    buffer.close()


def test_a_buffer_from_before_migrates_and_its_predictions_were_global_and_full(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO predictions VALUES ('2026-11-20', 3, 0.9, 'good', 1.0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    buffer = Buffer(str(path))
    assert buffer.latest_predictions() == {"2026-11-20": (3, 0.9, "good", "global", "full")}
    assert buffer.nights_without_movement() == set()
    assert buffer.personal_model() is None
    buffer.close()


def test_status_shows_which_model_predicted_and_both_scores(
    tmp_path: Path, walch_dir: Path
) -> None:
    buffer = _buffer(tmp_path, walch_dir)
    buffer.save_model(1, "run-1", model.arrays_to_bytes(_global_model(walch_dir)))
    ((_, efficiency, _),) = predict_nights(buffer)
    record = buffer.personal_model()
    buffer.close()
    assert record is not None
    config = write_agent_config(tmp_path / "agent.toml", buffer=tmp_path / "buffer.db")

    result = run_agent("status", "--json", "--config", str(config))
    assert result.returncode == 1, result.stderr  # no daemon runs: the status still prints
    status = json.loads(result.stdout)
    personal = status["model"]["personal"]
    assert personal["used"] is True and personal["base_version"] == 1
    assert personal["held_out_loss"] == {
        "personal": record.personal_loss,
        "global": record.global_loss,
    }
    assert personal["held_out_windows"] == record.held_out_windows
    assert "arrays" not in json.dumps(personal)
    assert status["last_night"]["model_kind"] == "personal"

    text = run_agent("status", "--config", str(config)).stdout
    assert (
        f"personal model  used, from model 1: held-out loss {record.personal_loss:.3f} vs "
        f"global {record.global_loss:.3f}" in text
    ), text
    assert f"(efficiency {100 * efficiency:.0f}%, personal model)" in text, text
