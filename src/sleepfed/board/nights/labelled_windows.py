"""A board's labelled windows and their split: a deterministic 20% is held out.

The held-out windows score every model a board holds (the global one in each round, its
personal one after each new global model), and are never trained on: the same windows in
every round, chosen by a hash of the window's key, so no model sees them however often the
board trains.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

from sleepfed.board.buffer.store import Buffer
from sleepfed.model import logistic as model

HELD_OUT_SHARE_PERCENT = 20


def is_held_out(night: str, start_ts: float) -> bool:
    """Deterministic 20% of windows, stable across rounds (a hash of the window's key)."""
    key = f"{night}:{start_ts:.0f}".encode()
    return zlib.crc32(key) % 100 < HELD_OUT_SHARE_PERCENT


class LabelledWindows(NamedTuple):
    features: np.ndarray  # (n, F)
    labels: np.ndarray  # (n,) 1 Good, 0 Poor
    held_out: np.ndarray  # (n,) never trained on
    movement: np.ndarray  # (n,) False where the window's night has no movement reading


def labelled_windows(buffer: Buffer) -> LabelledWindows:
    """The buffer's labelled windows, which are held out, and which have movement."""
    rows = buffer.windows(labelled_only=True)
    if not rows:
        empty = np.zeros((0, model.N_FEATURES))
        none = np.zeros(0, dtype=bool)
        return LabelledWindows(empty, np.zeros(0, dtype=int), none, none)
    still_unknown = buffer.nights_without_movement()
    return LabelledWindows(
        np.array([r[2] for r in rows], dtype=float),
        np.array([r[3] for r in rows], dtype=int),
        np.array([is_held_out(r[0], r[1]) for r in rows], dtype=bool),
        np.array([r[0] not in still_unknown for r in rows], dtype=bool),
    )
