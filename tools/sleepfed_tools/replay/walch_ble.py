"""A Walch 2019 night as the notifications a BLE wearable sends, and pushing them through a
BLE peripheral (the BlueZ stand-in).

Over BLE the heart rate is a whole number of bpm, so the replay spreads Walch's normalised
feature wider than over serial (z-scores are unchanged by the affine map; the rounding to
whole bpm is the only loss: at most 0.0125 in hr_feature units).
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sleepfed.board.sources.ble_parsing import (
    CURRENT_TIME,
    HEART_RATE_MEASUREMENT,
    MOVEMENT,
    format_current_time,
)
from sleepfed.board.sources.protocol import VALUE_RANGES, Kind
from sleepfed.model.features import EPOCH_SECONDS
from sleepfed.model.walch import read_walch_night

BLE_BPM_OFFSET, BLE_BPM_SCALE = 50.0, 40.0


def walch_ble_bpm(hr_feature: float) -> int:
    low, high = VALUE_RANGES[Kind.HR]
    return round(min(max(BLE_BPM_OFFSET + BLE_BPM_SCALE * hr_feature, low), high))


def heart_rate_measurement(bpm: int) -> bytes:
    """A Heart Rate Measurement value: contact detected, the bpm (uint16 above 255) and one RR
    interval consistent with it, in 1/1024 s."""
    rr = round(60.0 / bpm * 1024)
    flags = 0x06 | 0x10 | (0x01 if bpm > 255 else 0)
    value = bytes([flags]) + bpm.to_bytes(2 if bpm > 255 else 1, "little")
    return value + struct.pack("<H", rr)


def walch_ble_notifications(
    data_dir: str | Path, subject: str, night_start: float, tz: dt.tzinfo = dt.UTC
) -> Iterator[tuple[str, bytes]]:
    """``(characteristic UUID, value)`` notifications a BLE wearable would send for one
    Walch night: per epoch, Current Time then the movement counts (float32) at +1 s, and
    Current Time then a Heart Rate Measurement (contact detected, one RR interval) at +2 s.
    The PSG labels are not part of it: a reference device sends them (``walch_labels``)."""
    night = read_walch_night(data_dir, str(subject))
    for e, (count, hr_feature) in enumerate(zip(night.count, night.hr, strict=True)):
        t_e = night_start + EPOCH_SECONDS * e
        yield CURRENT_TIME, format_current_time(t_e + 1.0, tz)
        yield MOVEMENT, struct.pack("<f", float(count))
        yield CURRENT_TIME, format_current_time(t_e + 2.0, tz)
        yield HEART_RATE_MEASUREMENT, heart_rate_measurement(walch_ble_bpm(float(hr_feature)))


def replay_ble(
    notifications: Iterable[tuple[str, bytes]],
    notify: Callable[[str, bytes], bool],
    wait_notifying: Callable[[str], None],
) -> int:
    """Push notifications through a BLE peripheral (the BlueZ stand-in). ``notify`` returns
    False when the agent is not subscribed (e.g. the link dropped): then wait until it is
    again (``wait_notifying`` raises on time-out) and resend, so nothing is skipped."""
    sent = 0
    for uuid, value in notifications:
        while not notify(uuid, value):
            wait_notifying(uuid)
        sent += 1
    return sent
