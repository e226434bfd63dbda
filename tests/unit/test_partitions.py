"""Virtual boards for scale runs: one person each, label-skewed, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sleepfed.model.features import NightWindows
from sleepfed.model.walch import walch_dataset
from sleepfed.server.research.partitions import MIN_WINDOWS, poor_shares, resample_boards


@pytest.fixture(scope="module")
def nights(walch_dir: Path) -> dict[str, NightWindows]:
    return walch_dataset(walch_dir)


def test_boards_are_skewed_subsets_of_one_person(nights: dict[str, NightWindows]) -> None:
    boards = resample_boards(nights, 210, seed=3)
    assert len(boards) == 210
    assert {b.subject for b in boards} == {
        s for s, n in nights.items() if n.labelled.sum() >= MIN_WINDOWS
    }
    for board in boards:
        night = nights[board.subject]
        assert len(board.windows.labels) >= MIN_WINDOWS
        assert len(board.windows.labels) <= night.labelled.sum()
        # every window on the board is one of that person's windows, same features and label
        for start, features, label in zip(
            board.windows.start_epochs, board.windows.features, board.windows.labels, strict=True
        ):
            (row,) = np.flatnonzero(night.start_epochs == start)
            assert np.array_equal(night.features[row], features)
            assert night.labels[row] == label >= 0
    # label skew: Poor shares spread far wider across boards than across people
    people = np.array([float((n.labels[n.labelled] == 0).mean()) for n in nights.values()])
    shares = poor_shares(boards)
    assert shares.std() > 1.5 * people.std()
    assert (shares == 0).sum() >= 20 and (shares >= 0.5).sum() >= 10


def test_same_seed_same_boards(nights: dict[str, NightWindows]) -> None:
    first, second = resample_boards(nights, 50, seed=7), resample_boards(nights, 50, seed=7)
    other = resample_boards(nights, 50, seed=8)
    assert all(
        np.array_equal(a.windows.start_epochs, b.windows.start_epochs)
        for a, b in zip(first, second, strict=True)
    )
    assert not all(
        np.array_equal(a.windows.start_epochs, b.windows.start_epochs)
        for a, b in zip(first, other, strict=True)
    )


def test_refuses_nonsense(nights: dict[str, NightWindows]) -> None:
    with pytest.raises(ValueError, match="boards must be"):
        resample_boards(nights, 0)
    with pytest.raises(ValueError, match="no subject"):
        resample_boards({}, 5)
