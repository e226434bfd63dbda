"""The person's own model, made and used on the board; it never leaves it.

After each new global model a board with enough labelled windows (``MIN_TRAIN_WINDOWS`` of
both classes to train on, ``MIN_HELD_OUT_WINDOWS`` held out) fine-tunes that model
on its training windows (:mod:`sleepfed.model.personalisation`: a proximal fit that stays
near the global model where the person's few nights say little) and scores both models on
its held-out windows (:mod:`sleepfed.board.nights.labelled_windows`, the windows no round
ever trains on). The personal model predicts the person's nights only if its held-out log
loss is lower than the global model's; either way both scores are kept for ``status``.

It lives in the buffer's ``personal_models`` table, which nothing that talks to the server
reads: the ClientApp sends only the arrays it trained from the global model
(``tests/system/test_never_leaks.py`` searches a round's traffic for the personal model's
bytes). It is made anew from every global model, so a personal model of an earlier global
model (of another shape, if the federation changed the model) is never used; one whose
arrays do not fit the global model's shape is retired (deleted, counted, logged).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from sleepfed.board.buffer.model_tables import PersonalModelRecord
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.labelled_windows import labelled_windows
from sleepfed.model import logistic as model
from sleepfed.model.personalisation import personalise

log = logging.getLogger("sleepfed.nights")

MIN_TRAIN_WINDOWS = 30  # about one night (48 windows, 20% held out)
# Log loss scores a model on held-out windows of one class too (its calibration): a night's
# few held-out windows are often all Good.
MIN_HELD_OUT_WINDOWS = 5


def _accuracy(
    arrays: model.Arrays, features: np.ndarray, labels: np.ndarray, movement: np.ndarray
) -> float:
    predicted = (model.probability_by_window(arrays, features, movement) >= 0.5).astype(int)
    return float((predicted == labels).mean())


def make_personal_model(
    buffer: Buffer, base_version: int, global_arrays: model.Arrays
) -> PersonalModelRecord | None:
    """Fine-tune global model ``base_version`` on the board's training windows and score
    both on its held-out windows; None if the board has too few windows of both classes."""
    features, labels, held_out, movement = labelled_windows(buffer)
    train_x, train_y = features[~held_out], labels[~held_out]
    test_x, test_y, test_movement = features[held_out], labels[held_out], movement[held_out]
    if (
        len(train_y) < MIN_TRAIN_WINDOWS
        or len(test_y) < MIN_HELD_OUT_WINDOWS
        or len(np.unique(train_y)) < 2
    ):
        return None
    personal = personalise(global_arrays, train_x, train_y, movement=movement[~held_out])
    global_loss = model.log_loss(global_arrays, test_x, test_y, test_movement)
    personal_loss = model.log_loss(personal, test_x, test_y, test_movement)
    return PersonalModelRecord(
        base_version=base_version,
        arrays=model.arrays_to_bytes(personal),
        train_windows=len(train_y),
        held_out_windows=len(test_y),
        global_loss=global_loss,
        personal_loss=personal_loss,
        global_accuracy=_accuracy(global_arrays, test_x, test_y, test_movement),
        personal_accuracy=_accuracy(personal, test_x, test_y, test_movement),
        kept=personal_loss < global_loss,
        made_at=time.time(),
    )


def model_for_predictions(
    buffer: Buffer, version: int, global_arrays: model.Arrays
) -> tuple[model.Arrays, str]:
    """The arrays that predict the person's nights under global model ``version``, and
    their kind: the personal model when it beat the global one, else the global model."""
    record = buffer.personal_model()
    if record is None or record.base_version != version:
        record = make_personal_model(buffer, version, global_arrays)
        if record is None:
            return global_arrays, "global"
        buffer.save_personal_model(record)
        log.info(
            "personal model from model=%d: held-out loss %.3f (global %.3f) on %d windows, %s",
            version,
            record.personal_loss,
            record.global_loss,
            record.held_out_windows,
            "kept" if record.kept else "not kept",
        )
    if not record.kept:
        return global_arrays, "global"
    arrays = model.arrays_from_bytes(record.arrays)
    if [a.shape for a in arrays] != [a.shape for a in global_arrays]:
        buffer.retire_personal_model()
        buffer.bump_counters({"personal_model_retired": 1})
        log.warning("personal model retired: its arrays do not fit model=%d's shape", version)
        return global_arrays, "global"
    return arrays, "personal"
