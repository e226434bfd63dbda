"""The Walch 2019 data set: the one reader of its files, shared by the server's evaluation,
the tests and the replay tool (``tools/sleepfed_tools/replay``).

Each subject is one lab night, one file per feature, one value per line and one line per
30-second epoch (``{id}_count_feature.out``, ``{id}_hr_feature.out``, ...; see
``../shared/data/README.md``). Epochs are taken as consecutive, as the replay sends them:
``time_feature`` has gaps of up to 31 minutes in 14 subjects, which a device would never see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepfed.model.features import EPOCH_SECONDS, EpochSeries, NightWindows, night_windows

WALCH_FILES = ("count_feature", "hr_feature", "time_feature", "psg_labels")


@dataclass(frozen=True)
class WalchNight:
    """One subject's columns as read, cut to the length of the shortest column used."""

    count: np.ndarray  # count_feature: activity counts of the epoch
    hr: np.ndarray  # hr_feature: heart rate, normalised over the night (not bpm)
    stages: np.ndarray  # psg_labels: 0 wake, 1..5 asleep, negative unscored

    def __len__(self) -> int:
        return len(self.count)


def walch_subjects(data_dir: str | Path) -> list[str]:
    """Subject ids in a folder in the Walch 2019 format (every file of the set present)."""
    folder = Path(data_dir)
    ids = {p.name.split("_", 1)[0] for p in folder.glob("*_psg_labels.out")}
    return sorted(i for i in ids if all((folder / f"{i}_{f}.out").exists() for f in WALCH_FILES))


def read_walch_night(data_dir: str | Path, subject: str) -> WalchNight:
    """The columns of one subject. ``time_feature`` is read, so a subject whose file is
    missing or unreadable fails here, but not used (epochs are consecutive)."""
    folder = Path(data_dir)
    count, hr, _, stages = (
        np.loadtxt(folder / f"{subject}_{name}.out", ndmin=1) for name in WALCH_FILES
    )
    n = min(len(count), len(hr), len(stages))
    return WalchNight(count[:n], hr[:n], stages[:n])


def load_walch_subject(data_dir: str | Path, subject: str) -> EpochSeries:
    """One subject's night as the epoch series the features are computed from."""
    night = read_walch_night(data_dir, subject)
    asleep = np.where(night.stages < 0, np.nan, (night.stages > 0).astype(float))
    hours = np.arange(len(night)) * EPOCH_SECONDS / 3600.0
    return EpochSeries(night.count, night.hr, hours, asleep)


def walch_dataset(
    data_dir: str | Path, subjects: list[str] | None = None
) -> dict[str, NightWindows]:
    """Window features of every (or the named) Walch subject, keyed by subject id."""
    subjects = subjects if subjects is not None else walch_subjects(data_dir)
    return {s: night_windows(load_walch_subject(data_dir, s)) for s in subjects}
