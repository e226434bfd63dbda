"""The people ``sleepfed-server evaluate`` compares the methods on: one subject's night of a
Walch-format folder, in windows, with the windows a board would train on and hold out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepfed.board.nights.labelled_windows import is_held_out
from sleepfed.model.features import (
    WINDOW_EPOCHS,
    EpochSeries,
    NightWindows,
    night_windows,
    reference_efficiency,
)
from sleepfed.model.walch import load_walch_subject, walch_subjects
from sleepfed.server.research.simulation import simulated_night_name


@dataclass
class Person:
    """One subject: their night's windows, which of them a board trains on, PSG truth."""

    subject: str
    night: NightWindows
    asleep_share: np.ndarray  # per window: share of its labelled epochs asleep (NaN if none)
    reference_efficiency: float | None
    trains_on: np.ndarray  # labelled and not held out by the board's rule
    held_out: np.ndarray  # labelled and held out

    @property
    def train_xy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.night.features[self.trains_on], self.night.labels[self.trains_on]

    @property
    def labelled_xy(self) -> tuple[np.ndarray, np.ndarray]:
        mask = self.night.labelled
        return self.night.features[mask], self.night.labels[mask]


def _asleep_share(series: EpochSeries, n_windows: int) -> np.ndarray:
    asleep = series.asleep[: n_windows * WINDOW_EPOCHS].reshape(n_windows, WINDOW_EPOCHS)
    counted = np.isfinite(asleep).sum(axis=1)
    return np.where(counted > 0, np.nansum(asleep, axis=1) / np.maximum(counted, 1), np.nan)


def load_people(data_dir: str | Path, subjects: Sequence[str] | None = None) -> list[Person]:
    """Every (or the named) subject of a Walch-format folder, in the board's night naming."""
    chosen = list(subjects) if subjects is not None else walch_subjects(data_dir)
    people = []
    for subject in chosen:
        series = load_walch_subject(data_dir, subject)
        night = night_windows(series)
        # the name the prepared buffer gives this night
        # (sleepfed.server.research.simulation.prepare_buffers)
        name = simulated_night_name(subject, 0)
        held = np.array(
            [is_held_out(name, float(s) * 30.0) for s in night.start_epochs],
            dtype=bool,
        )
        people.append(
            Person(
                subject=subject,
                night=night,
                asleep_share=_asleep_share(series, len(night.labels)),
                reference_efficiency=reference_efficiency(series),
                trains_on=night.labelled & ~held,
                held_out=night.labelled & held,
            )
        )
    return people
