"""Virtual boards for scale runs: real people's nights resampled into non-IID partitions.

Each virtual board holds a random subset of ONE subject's labelled windows (one person per
board, as on a real board), and that subset is label-skewed: the share of Good and Poor
windows it keeps is drawn from a Dirichlet prior, so some boards see mostly Poor windows and
others almost none. Boards are assigned to subjects round-robin, so every person backs about
``boards / subjects`` boards. Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepfed.model.features import NightWindows

DEFAULT_KEEP_RANGE = (0.4, 0.9)
DEFAULT_LABEL_ALPHA = 0.5
MIN_WINDOWS = 8


@dataclass(frozen=True)
class VirtualBoard:
    subject: str
    windows: NightWindows


def _skewed_keep(
    labels: np.ndarray, keep_share: float, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Per-window keep mask: ``keep_share`` of the night, Good/Poor weighted by a
    Dirichlet(alpha, alpha) draw (alpha < 1: strong skew)."""
    weights = rng.dirichlet([alpha, alpha])
    keep_probability = keep_share * weights / weights.max()
    per_window = np.where(labels == 1, keep_probability[1], keep_probability[0])
    return rng.random(len(labels)) < per_window


def resample_boards(
    nights: dict[str, NightWindows],
    boards: int,
    *,
    seed: int = 0,
    keep_range: tuple[float, float] = DEFAULT_KEEP_RANGE,
    label_alpha: float = DEFAULT_LABEL_ALPHA,
) -> list[VirtualBoard]:
    """``boards`` label-skewed subsets of the subjects' labelled windows (see module doc)."""
    if boards < 1:
        raise ValueError(f"boards must be >= 1, not {boards}")
    subjects = sorted(s for s, night in nights.items() if night.labelled.sum() >= MIN_WINDOWS)
    if not subjects:
        raise ValueError(f"no subject has {MIN_WINDOWS} labelled windows")
    rng = np.random.default_rng(seed)
    result = []
    for index in range(boards):
        subject = subjects[index % len(subjects)]
        night = nights[subject]
        labelled = np.flatnonzero(night.labelled)
        keep = _skewed_keep(night.labels[labelled], rng.uniform(*keep_range), label_alpha, rng)
        chosen = labelled[keep]
        if len(chosen) < MIN_WINDOWS:  # too small a board: top it up at random
            rest = np.setdiff1d(labelled, chosen)
            extra = rng.choice(rest, MIN_WINDOWS - len(chosen), replace=False)
            chosen = np.sort(np.concatenate([chosen, extra]))
        windows = NightWindows(
            features=night.features[chosen],
            labels=night.labels[chosen],
            start_epochs=night.start_epochs[chosen],
        )
        result.append(VirtualBoard(subject, windows))
    return result


def poor_shares(boards: list[VirtualBoard]) -> np.ndarray:
    """Share of Poor windows on each board (the label skew)."""
    return np.array([float((b.windows.labels == 0).mean()) for b in boards])
