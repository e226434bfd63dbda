"""Raw acceleration → ActiGraph activity counts per 30-s epoch, the board's ``MOV`` readings.

Our own implementation (numpy and scipy only) of the count algorithm ActiGraph published in
Neishabouri et al., "Quantification of acceleration as activity counts in ActiGraph
wearable", Scientific Reports 12:11958 (2022), https://doi.org/10.1038/s41598-022-16003-x:
the pipeline of ActiLife and CentrePoint, its resampling, band-pass filter coefficients,
scaling, rectification, thresholds and accumulation (Brønd, Andersen and Arvidsson, Med Sci
Sports Exerc 49(11):2351-2360, 2017, had reverse-engineered an approximation of the filter).
Per axis, on samples in g:

1. To 30 Hz (:func:`to_30_hz`): insert ``L - 1`` zeros after each sample, low-pass with the
   first-order IIR ``y[n] = a·L·(u[n] + u[n-1]) - b·y[n-1]``, ``a = π / (π + 2L)``,
   ``b = (π - 2L) / (π + 2L)`` (rates that are not multiples of 30 Hz only; a weak filter, so
   some motion above 5 Hz aliases into the band, in ActiLife's counts as in ours), keep every
   ``M``-th sample (``30 = rate · L / M``: :data:`FACTORS`), round to 1 mg.
2. The band-pass filter (:data:`BPF_B`, :data:`BPF_A`: the 7th-order IIR coefficients
   ActiGraph published with the paper, to the digits of agcounts, its reference
   implementation; at 30 Hz the magnitude peaks at 0.76 Hz and is above half the peak from
   0.21 to 2.1 Hz), its state started as if the first sample had always been there (the
   steady state of a constant input, so gravity does not ring at the start).
3. Scaled by ``(3/4096) / (2.6/256) · 237.5 ≈ 17.127`` (:data:`GAIN`, ActiLife's),
   rectified, below 4 set to 0 (the dead band), above 128 set to 128 (saturation), floored
   to whole counts.
4. Down to 10 Hz: the floor of the mean of each 3 samples; summed over each epoch.

The counts reproduce ActiLife's exactly: the tests compare them with ActiLife 6.13.4's on a
real 100 Hz ActiGraph Link recording (every 5-s epoch and axis) and with ``agcounts``
(ActiGraph's own GPL-3.0 reference implementation, https://github.com/actigraph/agcounts)
on the recording and on synthetic signals at 30-100 Hz. ``agcounts`` is a test-only
dependency and never imported here. The vector magnitude ``sqrt(x² + y² + z²)`` of each
epoch's three axis counts is ActiLife's "Vector Magnitude"; a chest strap has no axis that
matches a wrist watch's.

Sample rates: the algorithm takes 30, 40, ..., 100 Hz. Of the H10's ACC rates (25, 50, 100,
200 Hz) 50 and 100 go in as they are; 25 Hz is upsampled ×2 and 200 Hz downsampled ÷2 with
``scipy.signal.resample_poly`` (a Kaiser-windowed polyphase FIR, the signal extended by its edge
values rather than zeros, so gravity does not step at the start) to 50 and 100 Hz. The counts'
band lies below 4 Hz, far inside the resampler's passband; on the same motion, counts from
25 and 200 Hz agree with those from 50 and 100 Hz within 2%, as much as sub-mG noise moves
them. Stream at 50 Hz: no resampling and the least radio traffic.

Not Walch 2019's counts: the data set's ``count_feature`` comes from the Apple Watch's z axis
with Walch's own filter (3-11 Hz Butterworth, 128 bins, 15-s epochs, Actiwatch-like scaling,
then a Gaussian smoothing over ±285 s; sleep_classifiers' ``activity_count_service.py``), a
different scale from ActiGraph's; a model trained on one should not be fed the other unscaled.

The band-pass filter has memory: counts of an epoch depend on the seconds before it.
:class:`EpochCounter` therefore counts each new epoch together with ``warmup_epochs`` before
it and keeps only the new one's, which the tests show equals the counts of the whole
recording at once to within one count.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter, lfilter_zi, resample_poly

EPOCH_SECONDS = 30
# rate (Hz) → (L, M): upsampled by L, then every M-th sample kept, to 30 Hz
FACTORS = {
    30: (1, 1), 40: (3, 4), 50: (3, 5), 60: (1, 2), 70: (3, 7), 80: (3, 8), 90: (1, 3), 100: (3, 10)
}  # fmt: skip
COUNT_RATES = tuple(FACTORS)
# H10 rate → (up, down) factors to a counting rate
RESAMPLING = {25: (2, 1), 200: (1, 2)}
# the band-pass filter at 30 Hz (Neishabouri et al. 2022): numerator b, denominator a
BPF_B = np.array(
    [-0.009341062898525, -0.025470289659360, -0.004235264826105, 0.044152415456420,
     0.036493718347760, -0.011893961934740, -0.022917390623150, -0.006788163862310]
)  # fmt: skip
BPF_A = np.array(
    [1.0, -3.63367395910957, 5.03689812757486, -3.09612247819666,
     0.50620507633883, 0.32421701566682, -0.15685485875559, 0.01949130205890]
)  # fmt: skip
GAIN = (3.0 / 4096.0) / (2.6 / 256.0) * 237.5
DEAD_BAND, SATURATION = 4.0, 128.0
# far beyond any accelerometer's range (H10 ±16 g); only keeps the arithmetic finite
MAX_ABS_G = 1e6


def counts_rate(sample_rate_hz: int) -> int:
    """The rate at which samples of ``sample_rate_hz`` are counted."""
    if sample_rate_hz in FACTORS:
        return sample_rate_hz
    if sample_rate_hz in RESAMPLING:
        up, down = RESAMPLING[sample_rate_hz]
        return sample_rate_hz * up // down
    known = (*COUNT_RATES, *RESAMPLING)
    raise ValueError(f"sample rate {sample_rate_hz} Hz: counts need one of {known}")


def to_30_hz(samples: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.float64]:
    """Step 1: (n, k) samples at ``rate`` (a key of :data:`FACTORS`) to 30 Hz, rounded to 1 mg."""
    up, down = FACTORS[rate]
    upsampled = np.zeros((len(samples) * up, samples.shape[1]))
    upsampled[::up] = samples
    if rate % 30:
        a = np.pi / (np.pi + 2 * up)
        b = (np.pi - 2 * up) / (np.pi + 2 * up)
        upsampled = lfilter([a * up, a * up], [1.0, b], upsampled, axis=0)
    return np.round(upsampled[::down], decimals=3)


def band_pass(samples_30_hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Step 2: the band-pass filter along axis 0, starting at rest on the first sample."""
    state = lfilter_zi(BPF_B, BPF_A)[:, np.newaxis] * samples_30_hz[:1]
    filtered, _ = lfilter(BPF_B, BPF_A, samples_30_hz, axis=0, zi=state)
    return np.asarray(filtered)


def epoch_sums(filtered: npt.NDArray[np.float64], epoch_seconds: int) -> npt.NDArray[np.int64]:
    """Steps 3-4: scaled, rectified, thresholded, to 10 Hz and summed over each whole epoch."""
    trimmed = np.floor(np.minimum(np.abs(filtered) * GAIN, SATURATION))
    trimmed[trimmed < DEAD_BAND] = 0
    at_10_hz = len(trimmed) // 3
    per_10_hz = np.floor(trimmed[: at_10_hz * 3].reshape(at_10_hz, 3, -1).sum(axis=1) / 3)
    block = epoch_seconds * 10
    n_epochs = at_10_hz // block
    epochs = per_10_hz[: n_epochs * block].reshape(n_epochs, block, -1).sum(axis=1)
    return epochs.astype(np.int64)


def axis_counts(
    samples_g: npt.ArrayLike, sample_rate_hz: int, epoch_seconds: int = EPOCH_SECONDS
) -> npt.NDArray[np.int64]:
    """ActiGraph counts of each whole epoch, (n_epochs, 3), from (n, 3) samples in g (PMD's mG
    / 1000). A trailing partial epoch is not counted."""
    samples = np.asarray(samples_g, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != 3:
        raise ValueError(f"samples must be (n, 3), not {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("samples must be finite")
    samples = np.clip(samples, -MAX_ABS_G, MAX_ABS_G)
    rate = counts_rate(sample_rate_hz)
    if rate != sample_rate_hz:
        up, down = RESAMPLING[sample_rate_hz]
        samples = resample_poly(samples, up, down, axis=0, padtype="edge")
    # whole epochs only: the filters are causal, so the samples after them change nothing
    # before, and a partial epoch's last 30 Hz samples cannot complete it
    whole = len(samples) // (rate * epoch_seconds) * rate * epoch_seconds
    if whole == 0:
        return np.zeros((0, 3), dtype=np.int64)
    return epoch_sums(band_pass(to_30_hz(samples[:whole], rate)), epoch_seconds)


def vector_magnitude(counts: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """ActiLife's vector magnitude of (n_epochs, 3) axis counts."""
    return np.sqrt(np.sum(np.square(np.asarray(counts, dtype=np.float64)), axis=1))


def activity_counts(
    samples_g: npt.ArrayLike, sample_rate_hz: int, epoch_seconds: int = EPOCH_SECONDS
) -> npt.NDArray[np.float64]:
    """Vector-magnitude counts of each whole epoch: the ``MOV`` value of each."""
    return vector_magnitude(axis_counts(samples_g, sample_rate_hz, epoch_seconds))


class EpochCounter:
    """Counts a stream of samples epoch by epoch: :meth:`add` returns the vector-magnitude
    counts of the epochs completed by the new samples, each counted with the
    ``warmup_epochs`` before it so that the filter has settled."""

    def __init__(self, sample_rate_hz: int, warmup_epochs: int = 1) -> None:
        counts_rate(sample_rate_hz)  # validates the rate
        self.sample_rate_hz = sample_rate_hz
        self.warmup_epochs = warmup_epochs
        self._epoch_samples = sample_rate_hz * EPOCH_SECONDS
        self._kept = np.zeros((0, 3))  # the warm-up epochs, then the epoch being filled
        self._completed = 0  # epochs counted so far

    def add(self, samples_g: npt.ArrayLike) -> list[float]:
        self._kept = np.concatenate([self._kept, np.asarray(samples_g, dtype=np.float64)])
        emitted: list[float] = []
        while True:
            warmup = min(self._completed, self.warmup_epochs)
            needed = (warmup + 1) * self._epoch_samples
            if len(self._kept) < needed:
                return emitted
            counts = activity_counts(self._kept[:needed], self.sample_rate_hz)
            emitted.append(float(counts[-1]))
            self._completed += 1
            drop = needed - min(self._completed, self.warmup_epochs) * self._epoch_samples
            self._kept = self._kept[drop:]
