"""ActiGraph counts per 30-s epoch (sleepfed.board.sources.activity_counts, our implementation
of Neishabouri et al. 2022) against ActiLife's own counts of a real recording
(tests/data/actilife_link_100hz), against agcounts (ActiGraph's GPL reference implementation, a
test-only dependency: its vectorised and serial code paths) on that recording and on synthetic
motion at every rate from 30 to 100 Hz, values pinned from agcounts 0.2.6, the algorithm's known
behaviour (still → 0, band-pass, monotone in amplitude), the resampled H10 rates, the streaming
counter against the batch, and random input (hypothesis)."""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from agcounts.extract import get_counts
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sleepfed.board.sources import activity_counts as ac
from sleepfed.board.sources import polar_pmd as pmd

ACTILIFE = Path(__file__).resolve().parents[1] / "data" / "actilife_link_100hz"


def actilife_example() -> tuple[np.ndarray, np.ndarray]:
    """3 min of an ActiGraph Link at 100 Hz (g) and ActiLife 6.13.4's 5-s counts, axes in
    agcounts' x, y, z order (ActiLife's Axis2, Axis1, Axis3)."""
    raw = np.loadtxt(ACTILIFE / "raw_xyz_256ths_g.csv.gz", delimiter=",", skiprows=1) / 256
    actilife = np.loadtxt(ACTILIFE / "actilife_5s_counts.csv", delimiter=",", skiprows=1)
    return raw, actilife[:, [1, 0, 2]].astype(np.int64)


def test_equals_actilife_on_a_real_recording() -> None:
    raw, actilife = actilife_example()
    assert raw.shape == (18_000, 3) and actilife.shape == (36, 3)
    np.testing.assert_array_equal(ac.axis_counts(raw, 100, epoch_seconds=5), actilife)
    assert actilife[:3].tolist() == [[92, 171, 261], [46, 253, 389], [27, 391, 381]]


def agcounts(samples: np.ndarray, rate: int, epoch: int, fast: bool = True) -> np.ndarray:
    """agcounts' counts (its serial path prints a line per axis: kept out of the test log)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return np.asarray(get_counts(samples, freq=rate, epoch=epoch, fast=fast))


@pytest.mark.parametrize("epoch", [1, 5, 30, 60])
def test_equals_agcounts_on_the_real_recording(epoch: int) -> None:
    raw, _ = actilife_example()
    ours = ac.axis_counts(raw, 100, epoch_seconds=epoch)
    assert ours.shape == (180 // epoch, 3) and ours.sum() > 0
    np.testing.assert_array_equal(ours, agcounts(raw, 100, epoch))
    np.testing.assert_array_equal(ours, agcounts(raw, 100, epoch, fast=False))


def motion(rate: int, seconds: int, seed: int = 7) -> np.ndarray:
    """Synthetic wrist-like motion in the ActiGraph Link's units (1/256 g, ±8 g): a slow
    random drift around gravity; bursts of 2.3 Hz swings, 9 Hz vibration (which the anti-aliasing
    filter lets partly through at rates that are not multiples of 30 Hz) and noise in a random
    30% of the seconds; a 3 g, 1 Hz minute that saturates the per-sample counts; a still
    minute (counts 0: the dead band)."""
    rng = np.random.default_rng(seed)
    n = rate * seconds
    t = (np.arange(n) / rate)[:, np.newaxis]
    drift = np.cumsum(rng.normal(0, 0.05, (n, 3)), axis=0)
    drift -= np.linspace(drift[0], drift[-1], n)
    bursts = (rng.random((seconds, 1)) < 0.3).repeat(rate, axis=0)
    swing = 0.8 * np.sin(2 * np.pi * 2.3 * t) + 0.4 * np.sin(2 * np.pi * 9 * t)
    samples = 0.2 * drift + bursts * (swing + rng.normal(0, 0.3, (n, 3)))
    samples += (t // 60 == 1) * 3 * np.sin(2 * np.pi * t)
    samples *= t // 60 != 3
    samples[:, 2] += 1
    return np.round(np.clip(samples, -8, 8) * 256) / 256


@pytest.mark.parametrize("rate", [30, 40, 50, 60, 70, 80, 90, 100])
def test_equals_agcounts_on_synthetic_motion(rate: int) -> None:
    samples = motion(rate, seconds=300)
    for epoch in (5, 30):
        ours = ac.axis_counts(samples, rate, epoch_seconds=epoch)
        assert ours.shape == (300 // epoch, 3)
        np.testing.assert_array_equal(ours, agcounts(samples, rate, epoch))
    assert ours[2:4].min() > 20_000 and ours[7].max() == 0  # saturated, still
    np.testing.assert_array_equal(ours, agcounts(samples, rate, 30, fast=False))


def test_agcounts_is_not_imported_by_the_product() -> None:
    """agcounts is GPL-3.0+ and test-only: no module under src/ imports it."""
    src = Path(__file__).resolve().parents[2] / "src"
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("agcounts") for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("agcounts"), path


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([25, 30, 40, 50, 60, 70, 80, 90, 100, 200]),
    samples=hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 700), st.just(3)),
        elements=st.floats(allow_nan=False, allow_infinity=False),
    ),
)
def test_random_finite_input_gives_non_negative_counts(rate: int, samples: np.ndarray) -> None:
    counts = ac.axis_counts(samples, rate, epoch_seconds=1)
    assert counts.dtype == np.int64 and counts.shape == (len(samples) // rate, 3)
    # each 10 Hz value is at most the saturation, 128
    assert counts.min(initial=0) >= 0 and counts.max(initial=0) <= 1280
    assert np.all(ac.activity_counts(samples, rate, epoch_seconds=1) >= 0)


def test_non_finite_input_is_refused() -> None:
    samples = night(50, 2)
    samples[70, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        ac.axis_counts(samples, 50)


def test_30_s_epochs_of_the_real_recording() -> None:
    """30-s counts are the sums of six 5-s ones (the 10 Hz counts are whole numbers)."""
    raw, actilife = actilife_example()
    expected = ac.vector_magnitude(actilife.reshape(6, 6, 3).sum(axis=1))
    np.testing.assert_allclose(ac.activity_counts(raw, 100), expected, rtol=1e-12)
    counter, streamed = ac.EpochCounter(100), []
    for start in range(0, len(raw), 36):
        streamed += counter.add(raw[start : start + 36])
    np.testing.assert_allclose(streamed, expected, atol=1)


def night(rate: int, epochs: int = 10) -> np.ndarray:
    """A still sleeper (1 g on z, a slow 0.05 g sway on y) who moves every third epoch
    (0.3 g at 1 Hz on x), quantised to the H10's 1 mG; the same motion at any rate."""
    t = np.arange(epochs * 30 * rate) / rate
    moving = (t // 30) % 3 == 1
    x = 0.3 * np.sin(2 * np.pi * 1.0 * t) * moving
    y = 0.05 * np.sin(2 * np.pi * 0.5 * t + 0.3)
    z = 1.0 + 0.1 * np.sin(2 * np.pi * 0.25 * t) * moving
    return np.round(np.stack([x, y, z], axis=1) * 1000) / 1000


def sine(frequency: float, amplitude: float, rate: int = 50, seconds: int = 120) -> np.ndarray:
    t = np.arange(seconds * rate) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * frequency * t), 0 * t, 0 * t + 1.0], axis=1)


@pytest.mark.parametrize("rate", [30, 50, 100])
def test_equals_agcounts_vectorised_and_serial(rate: int) -> None:
    samples = night(rate, epochs=6)
    ours = ac.axis_counts(samples, rate)
    np.testing.assert_array_equal(ours, agcounts(samples, rate, 30))
    # agcounts' serial implementation, the one its tests check the vectorised one against
    np.testing.assert_array_equal(ours, agcounts(samples, rate, 30, fast=False))


def test_pinned_values_of_agcounts_0_2_6() -> None:
    """Regression pins (computed with agcounts 0.2.6, not an outside reference): a change of
    our implementation that moves the counts fails here even where agcounts is not installed."""
    moving, after = [2963, 0, 0], [29, 0, 0]
    expected = [[0, 0, 0], moving, after] * 3 + [[0, 0, 0]]
    assert ac.axis_counts(night(50), 50).tolist() == expected
    np.testing.assert_array_equal(ac.activity_counts(night(50), 50), [0, 2963, 29] * 3 + [0])


def test_still_is_zero() -> None:
    rng = np.random.default_rng(1)
    still = np.round((np.array([0.0, 0.0, 1.0]) + rng.normal(0, 0.002, (50 * 300, 3))) * 1000)
    assert ac.activity_counts(still / 1000, 50).tolist() == [0.0] * 10


def test_band_pass() -> None:
    per_epoch = {f: ac.axis_counts(sine(f, 0.3), 50)[1:, 0] for f in (0.5, 1.0, 2.0, 4.0, 8.0)}
    assert per_epoch[1.0].tolist() == [3000, 3000, 3000]
    assert per_epoch[0.5].tolist() == [2880, 2880, 2880]
    assert per_epoch[2.0].tolist() == [1380, 1380, 1380]
    assert per_epoch[4.0].max() <= 1 and per_epoch[8.0].max() == 0  # vibration is not motion


def test_monotone_in_amplitude_above_the_dead_band() -> None:
    counts = [ac.axis_counts(sine(1.0, a), 50)[1, 0] for a in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)]
    assert counts[0] == 0  # below ActiGraph's threshold
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert counts[1:] == [600, 1860, 4080, 8460, 17220]


@pytest.mark.parametrize(("rate", "native"), [(25, 50), (200, 100)])
def test_resampled_rates_agree_with_native_ones(rate: int, native: int) -> None:
    resampled, direct = (
        ac.activity_counts(night(rate), rate),
        ac.activity_counts(night(native), native),
    )
    assert ac.counts_rate(rate) == native
    np.testing.assert_allclose(resampled, direct, rtol=0.02, atol=1)
    assert resampled[0] == 0  # no step from zero padding at the start


def test_vector_magnitude() -> None:
    np.testing.assert_allclose(ac.vector_magnitude([[3, 4, 0], [0, 0, 0], [1, 2, 2]]), [5, 0, 3])


@pytest.mark.parametrize("rate", [50, 200])
def test_streaming_equals_the_whole_night(rate: int) -> None:
    samples = night(rate, epochs=12)
    counter, streamed = ac.EpochCounter(rate), []
    frame = 36 if rate == 200 else 9  # about what an H10 ACC frame holds
    for start in range(0, len(samples), frame):
        streamed += counter.add(samples[start : start + frame])
    np.testing.assert_allclose(streamed, ac.activity_counts(samples, rate), atol=1)
    assert len(streamed) == 12


def test_pmd_frames_to_counts() -> None:
    """mG samples through PMD frames (raw and delta) and back, divided by 1000, into counts."""
    samples_mg = np.round(night(50, epochs=3) * 1000).astype(np.int64)
    counter, counts = ac.EpochCounter(50), []
    for i, start in enumerate(range(0, len(samples_mg), 36)):
        chunk = samples_mg[start : start + 36]
        frame = pmd.build_acc_frame(start * 20_000_000, chunk, compressed=i % 2 == 1)
        counts += counter.add(pmd.parse_acc_frame(frame).samples / 1000)
    assert counts == [0.0, 2963.0, 29.0]


@pytest.mark.parametrize("rate", [10, 20, 32, 150, 400])
def test_unsupported_rates(rate: int) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        ac.axis_counts(night(50, 1), rate)


def test_bad_shapes_and_short_input() -> None:
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        ac.axis_counts(np.zeros((100, 2)), 50)
    assert ac.axis_counts(np.zeros((50 * 29, 3)), 50).shape == (0, 3)
    assert ac.axis_counts(night(50, 2)[: 50 * 59], 50).shape == (1, 3)  # partial epoch dropped


@pytest.mark.parametrize(("rate", "n"), [(50, 149), (40, 119), (100, 299), (70, 209)])
def test_a_nearly_whole_epoch_is_not_counted(rate: int, n: int) -> None:
    """Found by hypothesis: every M-th of the L-times upsampled samples reaches one more 30 Hz
    sample than the whole epochs hold (agcounts' vectorised path counts the partial epoch
    then; its serial path does not). The earlier epochs are as if the input had ended with
    them."""
    samples = motion(rate, 3)[:n]
    ours = ac.axis_counts(samples, rate, epoch_seconds=1)
    assert len(ours) == 2 and len(agcounts(samples, rate, 1)) == 3
    np.testing.assert_array_equal(ours, agcounts(samples, rate, 1, fast=False))
    np.testing.assert_array_equal(ours, ac.axis_counts(samples[: 2 * rate], rate, 1))
