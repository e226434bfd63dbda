"""A Walch 2019 night as the readings a serial wearable sends (``SF1`` lines).

Per 30-s epoch ``e`` starting at ``t_e = night_start + 30 e``: one ``MOV`` at ``t_e + 1``
carrying ``count_feature[e]`` (so the device's per-epoch activity sum is exactly Walch's
feature), six identical ``HR`` at ``t_e + 2, 7, ..., 27`` carrying ``60 + 10 hr_feature[e]`` bpm
(an affine map, exact after the night's z-score), one ``RR`` consistent with that bpm 0.5 s
after each ``HR``, and the PSG stage as ``LBL`` at ``t_e + 15``. Epochs are laid out back to
back, as the project's Walch benchmark treats them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sleepfed.board.sources.protocol import VALUE_RANGES, Kind, Reading
from sleepfed.model.features import EPOCH_SECONDS, reference_efficiency
from sleepfed.model.walch import load_walch_subject, read_walch_night
from sleepfed_tools.replay.stats import ReplayStats

WALCH_HR_OFFSETS = (2.0, 7.0, 12.0, 17.0, 22.0, 27.0)
WALCH_RR_DELAY = 0.5
WALCH_MOV_OFFSET = 1.0
WALCH_LBL_OFFSET = 15.0
# One epoch's readings, (offset from the epoch start, kind), in time order.
_WALCH_EPOCH_TEMPLATE: tuple[tuple[float, Kind], ...] = tuple(
    sorted(
        [(WALCH_MOV_OFFSET, Kind.MOV), (WALCH_LBL_OFFSET, Kind.LBL)]
        + [(o, Kind.HR) for o in WALCH_HR_OFFSETS]
        + [(o + WALCH_RR_DELAY, Kind.RR) for o in WALCH_HR_OFFSETS]
    )
)


def walch_bpm(hr_feature: float) -> float:
    """The bpm carried for Walch's normalised heart-rate feature (affine, clipped to 25..250)."""
    low, high = VALUE_RANGES[Kind.HR]
    return min(max(60.0 + 10.0 * hr_feature, low), high)


def walch_readings(
    data_dir: str | Path,
    subject: str,
    night_start: float,
    stats: ReplayStats | None = None,
) -> Iterator[Reading]:
    """The readings of one Walch 2019 subject, in strictly increasing timestamp order."""
    stats = stats if stats is not None else ReplayStats()
    night = read_walch_night(data_dir, str(subject))
    # Plain floats: the readings carry Python numbers, as a serial parser would produce.
    columns = zip(night.count.tolist(), night.hr.tolist(), night.stages.tolist(), strict=True)
    for e, (count, hr_feature, stage) in enumerate(columns):
        yield from _epoch_readings(night_start + EPOCH_SECONDS * e, count, hr_feature, stage, stats)


def _epoch_readings(
    t_e: float, count: float, hr_feature: float, stage: float, stats: ReplayStats
) -> Iterator[Reading]:
    """One epoch's readings (``_WALCH_EPOCH_TEMPLATE``); out-of-range ones are counted."""
    mov_low, mov_high = VALUE_RANGES[Kind.MOV]
    lbl_high = VALUE_RANGES[Kind.LBL][1]
    bpm = walch_bpm(hr_feature)
    if bpm != 60.0 + 10.0 * hr_feature:
        stats.clipped += 1
    rr = 60000.0 / bpm
    label = round(stage)
    for offset, kind in _WALCH_EPOCH_TEMPLATE:
        if kind is Kind.MOV:
            if mov_low <= count <= mov_high:
                yield Reading(t_e + offset, Kind.MOV, count)
            else:
                stats.skip("mov_out_of_range")
        elif kind is Kind.HR:
            yield Reading(t_e + offset, Kind.HR, bpm)
        elif kind is Kind.RR:
            yield Reading(t_e + offset, Kind.RR, rr)
        elif 0 <= label <= lbl_high:
            yield Reading(t_e + offset, Kind.LBL, float(label))
        else:
            stats.skip("unlabelled_epoch")


def walch_labels(data_dir: str | Path, subject: str, night_start: float) -> Iterator[Reading]:
    """Only the PSG stage lines of a Walch night, as a reference device sends them."""
    return (r for r in walch_readings(data_dir, subject, night_start) if r.kind is Kind.LBL)


def reference_efficiency_walch(data_dir: str | Path, subject: str) -> float:
    """Share of the subject's labelled PSG epochs that are asleep (stage > 0)."""
    efficiency = reference_efficiency(load_walch_subject(data_dir, str(subject)))
    if efficiency is None:
        raise ValueError(f"walch subject {subject} has too few labelled epochs")
    return efficiency
