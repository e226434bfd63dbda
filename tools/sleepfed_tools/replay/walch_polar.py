"""A Walch 2019 night as a Polar H10 would send it: heart rate and Current Time as
``walch_ble`` sends them, and the movement as PMD ACC frames whose counts follow the night.

**Synthesised, not recorded.** Walch's movement is the Apple Watch's own count, not raw
acceleration, so the frames are made up to reproduce it. Each 30-s epoch is gravity on z
(1000 mG) plus, centred in the epoch, a burst of 1-Hz motion of up to ``BURST_MG`` on x
under a half-sine envelope. The burst's
length is chosen so that the board's counter (sleepfed.board.sources.activity_counts: ActiGraph
counts, vector magnitude) gives the epoch's Walch count, from a table of burst length →
counts made with that counter. Counts of an epoch also carry a little of the epoch before
(the counter's filter has memory), so the board's values follow the night within a few
counts, not exactly.

The strap's clock runs from 0 at the night's start; the board anchors it to the Current Time
of the epoch's first notification (sleepfed.board.sources.ble_pmd).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from sleepfed.board.sources.activity_counts import activity_counts
from sleepfed.board.sources.ble_parsing import (
    CURRENT_TIME,
    HEART_RATE_MEASUREMENT,
    format_current_time,
)
from sleepfed.board.sources.polar_pmd import PMD_DATA, build_acc_frame
from sleepfed.model.features import EPOCH_SECONDS
from sleepfed.model.walch import read_walch_night
from sleepfed_tools.replay.walch_ble import heart_rate_measurement, walch_ble_bpm

RATE = 50  # Hz: counted without resampling
BURST_MG = 100.0
GRAVITY_MG = 1000
FRAME_SAMPLES = 100  # a delta-compressed frame of the burst stays within the ATT MTU
EPOCH_SAMPLES = RATE * int(EPOCH_SECONDS)
MAX_FRAME_BYTES = 244  # a notification within the stand-in's ATT MTU of 247


def _epoch(burst_samples: int) -> np.ndarray:
    """One epoch's samples (mG, int): gravity on z, a centred 1-Hz burst on x."""
    samples = np.zeros((EPOCH_SAMPLES, 3), dtype=np.int64)
    samples[:, 2] = GRAVITY_MG
    start = (EPOCH_SAMPLES - burst_samples) // 2
    t = np.arange(burst_samples) / RATE
    # a half-sine envelope: the burst starts and ends at rest, so no delta is large
    envelope = np.sin(np.pi * (np.arange(burst_samples) + 0.5) / max(burst_samples, 1))
    samples[start : start + burst_samples, 0] = np.round(
        BURST_MG * envelope * np.sin(2 * np.pi * t)
    )
    return samples


@functools.cache
def burst_table() -> tuple[np.ndarray, np.ndarray]:
    """(burst lengths in samples, the counts of an epoch with that burst after a quiet one)."""
    lengths = np.arange(0, EPOCH_SAMPLES + 1, 5)
    quiet = _epoch(0)
    counts = np.array(
        [activity_counts(np.concatenate([quiet, _epoch(n)]) / 1000.0, RATE)[-1] for n in lengths]
    )
    return lengths, counts


def burst_for(count: float) -> int:
    """The burst length whose epoch counts come closest to ``count``."""
    lengths, counts = burst_table()
    return int(lengths[int(np.argmin(np.abs(counts - count)))])


def epoch_frames(samples: np.ndarray, first_index: int) -> list[bytes]:
    """Delta-compressed ACC frames of one epoch; each frame's timestamp is its last sample's
    on the strap's clock (ns, sample ``first_index`` of the night at 0 + its time)."""
    frames = []
    for start in range(0, len(samples), FRAME_SAMPLES):
        chunk = samples[start : start + FRAME_SAMPLES]
        last = first_index + start + len(chunk) - 1
        frame = build_acc_frame(round(last * 1e9 / RATE), chunk, compressed=True)
        assert len(frame) <= MAX_FRAME_BYTES, len(frame)
        frames.append(frame)
    return frames


def walch_polar_notifications(
    data_dir: str | Path, subject: str, night_start: float, tz: dt.tzinfo = dt.UTC
) -> Iterator[tuple[str, list[bytes]]]:
    """``(characteristic UUID, values)`` a Polar H10 would send for one Walch night, per
    epoch: Current Time at +1 s, the epoch's ACC frames, then Current Time at +2 s and a Heart
    Rate Measurement. The PSG labels come from a reference device (``walch_labels``)."""
    night = read_walch_night(data_dir, str(subject))
    for e, (count, hr_feature) in enumerate(zip(night.count, night.hr, strict=True)):
        t_e = night_start + EPOCH_SECONDS * e
        yield CURRENT_TIME, [format_current_time(t_e + 1.0, tz)]
        yield PMD_DATA, epoch_frames(_epoch(burst_for(float(count))), e * EPOCH_SAMPLES)
        yield CURRENT_TIME, [format_current_time(t_e + 2.0, tz)]
        yield HEART_RATE_MEASUREMENT, [heart_rate_measurement(walch_ble_bpm(float(hr_feature)))]


def replay_polar(
    notifications: Iterable[tuple[str, list[bytes]]],
    notify_many: Callable[[str, list[bytes]], int],
    wait_ready: Callable[[str], None],
) -> int:
    """Push a Polar night through a BLE peripheral (the BlueZ stand-in); returns the values
    sent. ``notify_many`` returns how many went out: none when the board is not subscribed or
    (PMD data) no measurement runs; then ``wait_ready(uuid)`` (it raises on time-out) and
    the values are sent again, so nothing is skipped."""
    sent = 0
    for uuid, values in notifications:
        while notify_many(uuid, values) != len(values):
            wait_ready(uuid)
        sent += len(values)
    return sent
