"""FedBuff's arithmetic (sleepfed.server.app.fedbuff): the staleness discount, a version from
a full buffer, FedAvg as its special case, stale and oversized updates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleepfed.server.app.fedbuff import FedBuffBuffer, staleness_discount
from sleepfed.server.app.fedbuff_run import new_buffer
from sleepfed.server.app.privacy import PrivacySettings
from sleepfed.server.app.strategies import StrategySettings
from sleepfed.server.app.update_validation import ValidationRules

SHAPE = (1, 13)


def _model(value: float) -> list[np.ndarray]:
    return [np.full(SHAPE, value)]


def test_the_discount_is_one_over_the_root_of_one_plus_staleness() -> None:
    assert [staleness_discount(t) for t in (0, 3, 8)] == [1.0, 0.5, pytest.approx(1 / 3)]
    with pytest.raises(ValueError):
        staleness_discount(-1)


def test_a_full_buffer_makes_a_version_weighted_by_examples() -> None:
    buffer = FedBuffBuffer(_model(0.0), buffer_size=2, max_staleness=4)
    assert buffer.offer(1, 0, _model(1.0), examples=100) == "buffered"
    assert buffer.version == 0 and buffer.pending == 1
    assert buffer.offer(2, 0, _model(3.0), examples=300) == "aggregated"
    assert buffer.version == 1 and buffer.pending == 0
    np.testing.assert_allclose(buffer.model[0], 2.5)  # (100·1 + 300·3) / 400
    assert buffer.staleness_histogram() == {0: 2}


def test_a_stale_update_is_discounted_by_the_versions_since_its_base() -> None:
    buffer = FedBuffBuffer(_model(0.0), buffer_size=1, max_staleness=4)
    buffer.offer(1, 0, _model(1.0), examples=10)  # version 1: 1.0
    buffer.offer(2, 1, _model(2.0), examples=10)  # version 2: 2.0
    buffer.offer(3, 1, _model(5.0), examples=10)  # trained from version 1, one behind
    # its update is 5 − 1 = 4 from its base, discounted by s(1) = 1/√2
    np.testing.assert_allclose(buffer.model[0], 2.0 + 4.0 / math.sqrt(2))
    assert buffer.staleness_histogram() == {1: 1}


def test_too_stale_or_unknown_versions_are_rejected_and_counted() -> None:
    buffer = FedBuffBuffer(_model(0.0), buffer_size=1, max_staleness=1)
    for node in (1, 2, 3):
        buffer.offer(node, buffer.version, _model(float(node)), examples=5)
    assert buffer.version == 3
    before = buffer.model[0].copy()
    assert buffer.offer(9, 1, _model(100.0), examples=5) == "stale"  # 2 versions behind
    assert buffer.offer(9, 7, _model(100.0), examples=5) == "stale"  # a version never made
    assert buffer.rejected_stale == 2 and buffer.version == 3
    np.testing.assert_array_equal(buffer.model[0], before)
    # only the versions an update may still start from are kept
    assert buffer.kept_versions == [2, 3]
    assert buffer.offer(4, 2, _model(4.0), examples=5) == "aggregated"
    assert buffer.kept_versions == [3, 4]


def test_a_boards_claimed_examples_count_only_up_to_the_cap() -> None:
    buffer = FedBuffBuffer(_model(0.0), buffer_size=2, max_staleness=2, max_weight=100)
    buffer.offer(1, 0, _model(1.0), examples=100)
    buffer.offer(2, 0, _model(-1.0), examples=1e12)  # claims a trillion windows
    np.testing.assert_allclose(buffer.model[0], 0.0)  # counted as 100: an equal pull


def test_bad_updates_raise_and_leave_the_buffer_as_it_was() -> None:
    buffer = FedBuffBuffer(_model(0.0), buffer_size=2, max_staleness=2)
    for examples in (0, -3, math.nan, math.inf):
        with pytest.raises(ValueError):
            buffer.offer(1, 0, _model(1.0), examples=examples)
    with pytest.raises(ValueError):
        buffer.offer(1, 0, [np.zeros((1, 6))], examples=10)
    assert buffer.pending == 0 and buffer.version == 0
    with pytest.raises(ValueError):
        FedBuffBuffer(_model(0.0), buffer_size=0, max_staleness=1)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5), min_size=1, max_size=8),
    weights=st.lists(st.integers(1, 1000), min_size=8, max_size=8),
)
def test_fresh_updates_and_a_unit_rate_are_fedavg(values: list[float], weights: list[int]) -> None:
    rng = np.random.default_rng(len(values))
    start = [rng.normal(size=SHAPE)]
    boards = [[rng.normal(size=SHAPE) + v] for v in values]
    buffer = FedBuffBuffer(start, buffer_size=len(boards), max_staleness=0)
    for node, (arrays, weight) in enumerate(zip(boards, weights, strict=False)):
        buffer.offer(node, 0, arrays, examples=weight)
    used = weights[: len(boards)]
    fedavg = sum(w * b[0] for w, b in zip(used, boards, strict=True)) / sum(used)
    assert buffer.version == 1
    np.testing.assert_allclose(buffer.model[0], fedavg, rtol=1e-9, atol=1e-12)


def test_under_dp_a_board_counts_once_a_version_and_each_version_gets_its_noise() -> None:
    settings = StrategySettings(name="fedbuff", buffer_size=2, max_staleness=2)
    privacy = PrivacySettings(dp=True, clipping_norm=0.5, noise_multiplier=0.8)
    buffer = new_buffer(_model(0.0), settings, ValidationRules(), privacy)
    assert buffer.one_update_per_board and buffer.noise_stddev == pytest.approx(0.8 * 0.5 / 2)
    buffer.rng = np.random.default_rng(7)
    # a board's second update before the next version would double its share of the sum
    assert buffer.offer(1, 0, _model(0.0), examples=1.0) == "buffered"
    assert buffer.offer(1, 0, _model(0.0), examples=1.0) == "duplicate"
    assert buffer.pending == 1 and buffer.holds_update_of(1) and not buffer.holds_update_of(2)
    # zero updates: every version moves the model by its noise alone, η·σ·C/K per coordinate
    # (the noise goes on the mean update, which the server's learning rate η = 0.5 scales)
    steps = []
    for _ in range(200):
        before = buffer.model[0].copy()
        base = buffer.version
        if not buffer.pending:
            buffer.offer(1, base, [before], examples=1.0)
        assert buffer.offer(2, base, [before], examples=1.0) == "aggregated"
        steps.append(buffer.model[0] - before)
    noise = np.concatenate(steps).ravel()  # 2,600 draws
    assert buffer.version == 200
    assert noise.std() == pytest.approx(0.5 * 0.2, rel=0.05) and abs(noise.mean()) < 0.01
    # without DP no noise and any number of updates a board
    plain = new_buffer(_model(0.0), settings, ValidationRules())
    assert not plain.one_update_per_board and plain.noise_stddev == 0.0
