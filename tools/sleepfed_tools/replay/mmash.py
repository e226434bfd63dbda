"""An MMASH night as the readings a serial wearable sends (``SF1`` lines).

The in-bed part of the 24-h recording (first In Bed - 30 min .. last Out Bed + 30 min from
``sleep.csv``; 22:00 .. 08:00 when there is no bout): every beat as ``RR`` (beats sharing a
second spread evenly inside it), every 1-Hz actigraph row as ``MOV`` (Vector Magnitude) and,
when plausible, ``HR``. Clock offsets are kept, relative to the first emitted reading, which
lands on ``night_start``. MMASH has no PSG labels and no light channel.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from sleepfed.board.sources.protocol import VALUE_RANGES, Kind, Reading
from sleepfed_tools.replay.stats import ReplayStats

MMASH_MARGIN_S = 30 * 60
MMASH_DEFAULT_WINDOW = (22 * 3600, 86400 + 8 * 3600)  # 22:00 day 1 .. 08:00 day 2
# Inside one second of MMASH data: MOV at +0.00, HR at +0.02, beats spread over [+0.05, +0.95).
_MMASH_HR_FRACTION = 0.02
_MMASH_BEAT_START, _MMASH_BEAT_SPAN = 0.05, 0.9

# (seconds since 00:00 of day 1, kind, value): a reading before it is moved to night_start.
_Event = tuple[float, Kind, float]


def _mmash_user_dir(data_dir: str | Path, user: str) -> Path:
    name = str(user)
    if not name.startswith("user_"):
        name = f"user_{name}"
    folder = Path(data_dir) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no MMASH user folder {folder}")
    return folder


def mmash_users(data_dir: str | Path) -> list[str]:
    folders = [p for p in Path(data_dir).glob("user_*") if (p / "RR.csv").exists()]
    return [p.name for p in sorted(folders, key=lambda p: int(p.name.split("_")[1]))]


def _mmash_day(text: str) -> int:
    day = int(float(text))
    return 2 if day == -29 else day  # users 8 and 9 write day 2 as -29


def _clock_seconds(text: str) -> int:
    parts = [int(p) for p in text.strip().split(":")]
    while len(parts) < 3:
        parts.append(0)
    hours, minutes, seconds = parts[:3]
    return hours * 3600 + minutes * 60 + seconds


def _recording_second(day: int, clock: str) -> int:
    """Seconds since 00:00 of the recording's first day (day 1)."""
    return (day - 1) * 86400 + _clock_seconds(clock)


def mmash_night_window(data_dir: str | Path, user: str) -> tuple[int, int]:
    """``(start, end)`` in seconds since 00:00 of day 1: the in-bed span padded by 30 min."""
    folder = _mmash_user_dir(data_dir, user)
    bouts: list[tuple[int, int]] = []
    with (folder / "sleep.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not (row.get("In Bed Time") or "").strip():
                continue
            start = _recording_second(_mmash_day(row["In Bed Date"]), row["In Bed Time"])
            end = _recording_second(_mmash_day(row["Out Bed Date"]), row["Out Bed Time"])
            if end < start:  # out-of-bed day written one too low (users 3, 5, 13, ...)
                end += 86400
            bouts.append((start, end))
    if not bouts:  # user_11: no sleep bout
        return MMASH_DEFAULT_WINDOW
    return min(b[0] for b in bouts) - MMASH_MARGIN_S, max(b[1] for b in bouts) + MMASH_MARGIN_S


def _beat_events(folder: Path, window: tuple[int, int], stats: ReplayStats) -> Iterator[_Event]:
    """The window's beats as RR, those sharing a second spread evenly inside it."""
    start, end = window
    rr_low, rr_high = VALUE_RANGES[Kind.RR]
    beats_by_second: dict[int, list[float]] = {}
    with (folder / "RR.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            second = _recording_second(_mmash_day(row["day"]), row["time"])
            if start <= second < end:
                beats_by_second.setdefault(second, []).append(float(row["ibi_s"]) * 1000.0)
    for second, beats in beats_by_second.items():
        step = _MMASH_BEAT_SPAN / len(beats)
        for i, ms in enumerate(beats):
            if rr_low <= ms <= rr_high:
                yield second + _MMASH_BEAT_START + i * step, Kind.RR, ms
            else:
                stats.skip("rr_out_of_range")


def _actigraph_events(
    folder: Path, window: tuple[int, int], stats: ReplayStats
) -> Iterator[_Event]:
    """The window's 1-Hz actigraph rows as MOV (Vector Magnitude) and HR, when in range."""
    start, end = window
    hr_low, hr_high = VALUE_RANGES[Kind.HR]
    mov_low, mov_high = VALUE_RANGES[Kind.MOV]
    with (folder / "Actigraph.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            second = _recording_second(_mmash_day(row["day"]), row["time"])
            if not start <= second < end:
                continue
            magnitude = float(row["Vector Magnitude"])
            if mov_low <= magnitude <= mov_high:
                yield float(second), Kind.MOV, magnitude
            else:
                stats.skip("mov_out_of_range")
            bpm = float(row["HR"])
            if hr_low <= bpm <= hr_high:
                yield second + _MMASH_HR_FRACTION, Kind.HR, bpm
            else:
                stats.skip("hr_out_of_range")


def mmash_readings(
    data_dir: str | Path,
    user: str,
    night_start: float,
    stats: ReplayStats | None = None,
) -> Iterator[Reading]:
    """The night-window readings of one MMASH user, in strictly increasing timestamp order."""
    stats = stats if stats is not None else ReplayStats()
    folder = _mmash_user_dir(data_dir, user)
    window = mmash_night_window(data_dir, user)
    events = [*_beat_events(folder, window, stats), *_actigraph_events(folder, window, stats)]
    events.sort(key=lambda ev: ev[0])
    if not events:
        return
    first = events[0][0]
    for seconds, kind, value in events:
        yield Reading(night_start + (seconds - first), kind, value)
