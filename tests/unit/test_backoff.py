"""The board's one backoff policy (sleepfed.common.backoff), used by the serial and BLE
sources and the federation session."""

from __future__ import annotations

import random
import statistics

import pytest

from sleepfed.common import backoff


def test_the_bound_doubles_from_first_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)  # the top of each range
    assert [backoff.delay(n, 0.2, 5.0) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.delay(0, 0.2, 5.0) == 0.2  # attempt numbers start at 1


def test_full_jitter_spreads_boards_over_the_whole_range() -> None:
    random.seed(7)
    waits = [backoff.delay(4, 1.0, 60.0) for _ in range(4000)]  # range [0, 8]
    assert 0.0 <= min(waits) < 0.1 and 7.9 < max(waits) <= 8.0
    assert 3.8 < statistics.mean(waits) < 4.2
