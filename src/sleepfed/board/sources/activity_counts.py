"""Raw acceleration → ActiGraph activity counts per 30-s epoch, the board's ``MOV`` readings.

The counts are ActiGraph's, as computed by the open ``agcounts`` package (ActiGraph LLC,
https://github.com/actigraph/agcounts; Brønd, Andersen and Arvidsson, Med Sci Sports Exerc
49(11):2351-2360, 2017; Neishabouri et al., BMC Res Notes 15:321, 2022), which reproduces
ActiLife's counts exactly (the tests: a real 100 Hz recording, every 5-s epoch and axis as
ActiLife 6.13.4 counted it): ``agcounts.extract.get_counts`` with its legacy ActiGraph resampling
(``use_mne=False``), per axis, then the vector magnitude ``sqrt(x² + y² + z²)`` of each epoch's
three axis counts (ActiLife's "Vector Magnitude"), since a chest strap has no axis that
matches a wrist watch's.

``agcounts`` is an optional extra (``sleepfed[actigraphy]``) and imported only when counts are
computed: it is GPL-3.0-or-later (sleepfed is Apache-2.0) and pulls in mne and pandas (about
110 MB) although its counting path uses only numpy and scipy. Whether boards ship it is a
project decision; nothing else in the board needs it.

Sample rates: agcounts takes 30, 40, ..., 100 Hz. Of the H10's ACC rates (25, 50, 100, 200 Hz)
50 and 100 go in as they are; 25 Hz is upsampled ×2 and 200 Hz downsampled ÷2 with
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
from scipy.signal import resample_poly

EPOCH_SECONDS = 30
AGCOUNTS_RATES = (30, 40, 50, 60, 70, 80, 90, 100)
# H10 rate → (up, down) factors to an agcounts rate
RESAMPLING = {25: (2, 1), 200: (1, 2)}


def counts_rate(sample_rate_hz: int) -> int:
    """The rate at which samples of ``sample_rate_hz`` reach agcounts."""
    if sample_rate_hz in AGCOUNTS_RATES:
        return sample_rate_hz
    if sample_rate_hz in RESAMPLING:
        up, down = RESAMPLING[sample_rate_hz]
        return sample_rate_hz * up // down
    known = (*AGCOUNTS_RATES, *RESAMPLING)
    raise ValueError(f"sample rate {sample_rate_hz} Hz: counts need one of {known}")


def axis_counts(
    samples_g: npt.ArrayLike, sample_rate_hz: int, epoch_seconds: int = EPOCH_SECONDS
) -> npt.NDArray[np.int64]:
    """ActiGraph counts of each whole epoch, (n_epochs, 3), from (n, 3) samples in g (PMD's mG
    / 1000). A trailing partial epoch is not counted."""
    from agcounts.extract import get_counts  # GPL, optional: see the module docstring

    samples = np.asarray(samples_g, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != 3:
        raise ValueError(f"samples must be (n, 3), not {samples.shape}")
    rate = counts_rate(sample_rate_hz)
    if rate != sample_rate_hz:
        up, down = RESAMPLING[sample_rate_hz]
        samples = resample_poly(samples, up, down, axis=0, padtype="edge")
    if len(samples) < rate * epoch_seconds:
        return np.zeros((0, 3), dtype=np.int64)
    counts = get_counts(samples, freq=rate, epoch=epoch_seconds, fast=True, use_mne=False)
    return np.asarray(counts, dtype=np.int64).reshape(-1, 3)


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
