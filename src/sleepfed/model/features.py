"""The feature definition shared by boards, the server and the benchmarks.

A night is cut into 30-second **epochs** and 10-minute **windows** (20 epochs). Per epoch:

* ``activity``: movement counts in the epoch (device: sum of its ``MOV`` readings;
  Walch 2019: ``count_feature``), used as ``log1p(activity)``;
* ``hr``: heart rate normalised against the person's own baseline: the epoch's value
  z-scored over the whole night (device: mean bpm of the epoch's ``HR`` readings, or
  60000 / mean ``RR`` when the sensor sends only RR intervals; Walch: ``hr_feature``).
  A z-score is unchanged by any affine map of its input, which is what lets the replay
  tool carry Walch's normalised ``hr_feature`` as bpm over the serial line exactly;
* ``hours``: hours since the night's first reading (Walch: the epoch's position, 30 s each;
  its ``time_feature`` has gaps that the replayed stream does not carry);
* circadian cosine ``-cos(2*pi*(hours - 5)/24)``: the very formula behind Walch's
  ``cosine_feature`` (it is a function of time since the start of the recording);
* ``asleep`` (target only): reference stage > 0 (device: ``LBL`` readings; Walch: PSG).

A window is **Good** (1) when >= 85% of its labelled epochs are asleep, else **Poor** (0);
it carries no label unless >= 15 of its 20 epochs are labelled. A night's estimated sleep
efficiency is the expected share of its windows that are Good (``estimated_efficiency``);
the night is Good at >= 85%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPOCH_SECONDS = 30.0
WINDOW_EPOCHS = 20
WINDOW_SECONDS = EPOCH_SECONDS * WINDOW_EPOCHS
GOOD_WINDOW_ASLEEP_SHARE = 0.85
GOOD_NIGHT_EFFICIENCY = 0.85
MIN_LABELLED_EPOCHS = 15

FEATURE_NAMES = (
    "activity_mean",
    "activity_max",
    "activity_std",
    "still_share",
    "activity_prev_window",
    "activity_next_window",
    "hr_mean",
    "hr_std",
    "hr_prev_window",
    "hr_next_window",
    "circadian_cosine",
    "hours_since_start",
)
N_FEATURES = len(FEATURE_NAMES)
# The features a night without any MOV reading (a plain heart-rate strap) cannot have: the
# model's movement-free head (sleepfed.model.logistic) sees them as 0.
MOVEMENT_COLUMNS = tuple(
    i for i, name in enumerate(FEATURE_NAMES) if name.startswith(("activity", "still"))
)

# Kinds as stored in the buffer (sleepfed.board.sources.protocol.Kind values), repeated here so
# that the
# feature code has no dependency on the wire protocol.
_HR, _RR, _MOV = 1, 2, 3


@dataclass
class EpochSeries:
    """Per-epoch values of one night; NaN where a value is missing."""

    activity: np.ndarray
    hr: np.ndarray
    hours: np.ndarray
    asleep: np.ndarray  # 1.0 asleep, 0.0 awake, NaN unlabelled
    # False for a night without a single MOV reading: its activity is unknown, not still.
    has_movement: bool = True

    def __len__(self) -> int:
        return len(self.activity)


@dataclass
class NightWindows:
    features: np.ndarray  # (n_windows, N_FEATURES)
    labels: np.ndarray  # (n_windows,) 1 Good, 0 Poor, -1 unlabelled
    start_epochs: np.ndarray  # (n_windows,)
    has_movement: bool = True

    @property
    def labelled(self) -> np.ndarray:
        return self.labels >= 0


def circadian_cosine(hours: np.ndarray) -> np.ndarray:
    return -np.cos(2.0 * math.pi * (hours - 5.0) / 24.0)


def _zscore(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if finite.sum() < 2:
        return np.zeros_like(values)
    mean = values[finite].mean()
    std = values[finite].std()
    out = (values - mean) / std if std > 1e-9 else values - mean
    out[~finite] = 0.0
    return out


def _neighbour(values: np.ndarray, step: int) -> np.ndarray:
    """The value of the window ``step`` away, or the window's own value at the edges."""
    out = values.copy()
    if step < 0:
        out[-step:] = values[:step]
    else:
        out[:-step] = values[step:]
    return out


def night_windows(series: EpochSeries) -> NightWindows:
    """Window features and labels of one night (only complete 10-minute windows)."""
    n_windows = len(series) // WINDOW_EPOCHS
    if n_windows == 0:
        return NightWindows(
            np.zeros((0, N_FEATURES)),
            np.zeros(0, dtype=int),
            np.zeros(0, dtype=int),
            series.has_movement,
        )
    used = n_windows * WINDOW_EPOCHS
    activity = np.log1p(np.nan_to_num(series.activity[:used], nan=0.0).clip(min=0.0))
    hr = _zscore(series.hr[:used].astype(float))
    shape = (n_windows, WINDOW_EPOCHS)
    act_w, hr_w = activity.reshape(shape), hr.reshape(shape)
    hours_mid = series.hours[:used].reshape(shape).mean(axis=1)
    act_mean, hr_mean = act_w.mean(axis=1), hr_w.mean(axis=1)
    features = np.column_stack(
        [
            act_mean,
            act_w.max(axis=1),
            act_w.std(axis=1),
            (act_w < 1e-6).mean(axis=1),
            _neighbour(act_mean, -1),
            _neighbour(act_mean, 1),
            hr_mean,
            hr_w.std(axis=1),
            _neighbour(hr_mean, -1),
            _neighbour(hr_mean, 1),
            circadian_cosine(hours_mid),
            hours_mid / 10.0,
        ]
    )
    asleep = series.asleep[:used].reshape(shape)
    labelled = np.isfinite(asleep).sum(axis=1)
    share = np.where(labelled > 0, np.nansum(asleep, axis=1) / np.maximum(labelled, 1), 0.0)
    labels = np.where(
        labelled >= MIN_LABELLED_EPOCHS, (share >= GOOD_WINDOW_ASLEEP_SHARE).astype(int), -1
    )
    return NightWindows(features, labels, np.arange(n_windows) * WINDOW_EPOCHS, series.has_movement)


def reference_efficiency(series: EpochSeries) -> float | None:
    """Sleep efficiency from the reference labels: share of labelled epochs asleep."""
    finite = np.isfinite(series.asleep)
    if finite.sum() < MIN_LABELLED_EPOCHS:
        return None
    return float(series.asleep[finite].mean())


def at_prior(good_probabilities: np.ndarray, good_share: float) -> np.ndarray:
    """A balanced model's probabilities (they assume Good and Poor windows equally common)
    moved to the prior ``good_share`` = π: odds × π/(1−π)."""
    p = np.clip(good_probabilities, 1e-9, 1.0 - 1e-9)
    odds = p / (1.0 - p) * (good_share / (1.0 - good_share))
    return odds / (1.0 + odds)


def estimated_efficiency(good_probabilities: np.ndarray, good_share: float | None = None) -> float:
    """A night's estimated sleep efficiency: the share of its windows that are Good.

    The model balances its classes, so its probabilities assume Good and Poor windows are
    equally common. With ``good_share`` (the federation's share of Good windows, π) they are
    moved back to that prior (odds × π/(1−π)) and the estimate is their mean: the expected
    share of Good windows. Without it (no round has sent one yet), the share of windows whose
    probability is ≥ 0.5, which runs low for good sleepers (on Walch 2019, leave-subjects-out:
    MAE 16.9 points against the PSG share of Good windows, 7.8 calibrated;
    tests/unit/test_features.py).
    """
    if len(good_probabilities) == 0:
        return float("nan")
    if good_share is None or not 0.0 < good_share < 1.0:
        return float((good_probabilities >= 0.5).mean())
    return float(at_prior(good_probabilities, good_share).mean())


def night_quality(efficiency: float) -> str:
    return "good" if efficiency >= GOOD_NIGHT_EFFICIENCY else "poor"


# -- from raw device readings ---------------------------------------------------------------
def epochs_from_readings(
    readings: list[tuple[float, int, float]],
    labels: list[tuple[float, int]],
    start_ts: float,
    end_ts: float,
) -> EpochSeries:
    """Epoch series from buffered readings ``(ts, kind, value)`` and labels ``(ts, stage)``."""
    n_epochs = max(math.floor((end_ts - start_ts) / EPOCH_SECONDS) + 1, 0)
    activity = np.zeros(n_epochs)
    has_movement = False
    hr_sum, hr_count = np.zeros(n_epochs), np.zeros(n_epochs)
    rr_sum, rr_count = np.zeros(n_epochs), np.zeros(n_epochs)
    if readings:
        data = np.asarray(readings, dtype=float)
        index = ((data[:, 0] - start_ts) // EPOCH_SECONDS).astype(int)
        inside = (index >= 0) & (index < n_epochs)
        data, index = data[inside], index[inside]
        kinds, values = data[:, 1].astype(int), data[:, 2]
        for kind, sums, counts in ((_HR, hr_sum, hr_count), (_RR, rr_sum, rr_count)):
            mask = kinds == kind
            np.add.at(sums, index[mask], values[mask])
            np.add.at(counts, index[mask], 1)
        mask = kinds == _MOV
        np.add.at(activity, index[mask], values[mask])
        has_movement = bool(mask.any())
    with np.errstate(invalid="ignore", divide="ignore"):
        hr = np.where(hr_count > 0, hr_sum / hr_count, np.nan)
        from_rr = np.where(rr_count > 0, 60000.0 / (rr_sum / rr_count), np.nan)
    hr = np.where(np.isnan(hr), from_rr, hr)
    asleep = np.full(n_epochs, np.nan)
    for ts, stage in labels:
        i = int((ts - start_ts) // EPOCH_SECONDS)
        if 0 <= i < n_epochs:
            asleep[i] = 1.0 if stage > 0 else 0.0
    hours = np.arange(n_epochs) * EPOCH_SECONDS / 3600.0
    return EpochSeries(activity, hr, hours, asleep, has_movement)
