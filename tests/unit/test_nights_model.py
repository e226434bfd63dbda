"""Nightly predictions from the buffer's latest model, and a model that cannot be used."""

from __future__ import annotations

from pathlib import Path

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.tracker import predict_nights
from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset

SUBJECT = "4426783"


def _buffer_with_a_night(tmp_path: Path, walch_dir: Path) -> Buffer:
    night = walch_dataset(walch_dir, [SUBJECT])[SUBJECT]
    buffer = Buffer(str(tmp_path / "buffer.db"))
    rows = [
        (float(start) * 30.0, [float(v) for v in feats], None)
        for start, feats in zip(night.start_epochs, night.features, strict=True)
    ]
    buffer.save_night("2026-11-24", 0.0, 30.0 * len(rows), len(rows), rows, None)
    return buffer


def test_a_corrupt_model_is_counted_once_and_the_next_good_one_predicts(
    tmp_path: Path, walch_dir: Path
) -> None:
    buffer = _buffer_with_a_night(tmp_path, walch_dir)
    buffer.save_model(1, "run-1", b"not a numpy archive")
    assert predict_nights(buffer) == []
    assert predict_nights(buffer) == []  # the idle path runs every second: counted once
    assert buffer.counters()["model_unusable"] == 1
    assert buffer.latest_predictions() == {}

    wrong_shape = [model.initial_arrays()[0][:, :5]]
    buffer.save_model(2, "run-1", model.arrays_to_bytes(wrong_shape))
    assert predict_nights(buffer) == []
    assert buffer.counters()["model_unusable"] == 2

    buffer.save_model(3, "run-1", model.arrays_to_bytes(model.initial_arrays()))
    ((night, efficiency, quality),) = predict_nights(buffer)
    assert night == "2026-11-24" and 0.0 <= efficiency <= 1.0 and quality in ("good", "poor")
    assert buffer.latest_predictions()[night][0] == 3
    buffer.close()
