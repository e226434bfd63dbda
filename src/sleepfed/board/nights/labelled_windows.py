"""A board's labelled windows and their split: a deterministic 20% is held out.

The held-out windows score every model a board holds (the global one in each round, its
personal one after each new global model), and are never trained on: the same windows in
every round, chosen by a hash of the window's key, so no model sees them however often the
board trains.
"""

from __future__ import annotations

import zlib

import numpy as np

from sleepfed.board.buffer.store import Buffer
from sleepfed.model import logistic as model

HELD_OUT_SHARE_PERCENT = 20


def is_held_out(night: str, start_ts: float) -> bool:
    """Deterministic 20% of windows, stable across rounds (a hash of the window's key)."""
    key = f"{night}:{start_ts:.0f}".encode()
    return zlib.crc32(key) % 100 < HELD_OUT_SHARE_PERCENT


def labelled_windows(buffer: Buffer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, held-out mask) of the buffer's labelled windows."""
    rows = buffer.windows(labelled_only=True)
    if not rows:
        empty = np.zeros((0, model.N_FEATURES))
        return empty, np.zeros(0, dtype=int), np.zeros(0, dtype=bool)
    features = np.array([r[2] for r in rows], dtype=float)
    labels = np.array([r[3] for r in rows], dtype=int)
    held_out = np.array([is_held_out(r[0], r[1]) for r in rows], dtype=bool)
    return features, labels, held_out
