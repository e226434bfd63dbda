"""Parsers for the Bluetooth LE characteristics the agent reads. Pure functions over bytes:
anything malformed raises :class:`sleepfed.board.sources.protocol.LineRejected` with a counted
reason.

* Heart Rate Measurement (0x2A37, service 0x180D), little-endian: a flags byte (bit 0: the
  heart rate is a uint16, else a uint8; bits 1-2: sensor contact, 0b10 = supported but not
  in contact, 0b11 = in contact, 0b0x = not supported; bit 3: a uint16 energy expended in
  kJ follows; bit 4: RR intervals follow; bits 5-7 reserved, must be 0), the heart rate,
  the energy, then zero or more RR intervals, uint16 each in 1/1024 s.
* Illuminance (0x2AFB, Environmental Sensing 0x181A): uint24, 0.01 lux; 0xFFFFFF unknown.
* Movement (sleepfed's own characteristic, see docs/protocol.md): float32 little-endian activity
  counts since the previous notification.
* Current Time (0x2A2B, Current Time Service 0x1805), 10 bytes: year uint16, month, day,
  hours, minutes, seconds, day of week, fractions of 1/256 s, adjust reason. It is the
  device's local time; a board stamps readings with the device's clock when the device
  offers it (see sleepfed.board.sources.ble_notifications).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, tzinfo

from sleepfed.board.sources.protocol import LineRejected

HEART_RATE_SERVICE = "0000180d-0000-1000-8000-00805f9b34fb"
HEART_RATE_MEASUREMENT = "00002a37-0000-1000-8000-00805f9b34fb"
ENVIRONMENTAL_SENSING_SERVICE = "0000181a-0000-1000-8000-00805f9b34fb"
ILLUMINANCE = "00002afb-0000-1000-8000-00805f9b34fb"
MOVEMENT_SERVICE = "7e1a0001-5c1e-4f2a-9b9e-5f1eedc0ffee"
MOVEMENT = "7e1a0002-5c1e-4f2a-9b9e-5f1eedc0ffee"

BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"  # Battery service 0x180F
CURRENT_TIME_SERVICE = "00001805-0000-1000-8000-00805f9b34fb"
CURRENT_TIME = "00002a2b-0000-1000-8000-00805f9b34fb"

ILLUMINANCE_UNKNOWN = 0xFFFFFF
RR_UNITS_PER_SECOND = 1024.0


class BleReason:
    """Rejection reasons of BLE payloads (counted as ``rejected_<reason>``)."""

    EMPTY = "ble_empty"
    RESERVED_FLAGS = "ble_reserved_flags"
    WRONG_LENGTH = "ble_wrong_length"
    TRUNCATED_RR = "ble_truncated_rr"
    BAD_TIME = "ble_bad_time"


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    bpm: int
    contact: bool | None  # None: the sensor does not report contact
    energy_kj: int | None
    rr_ms: tuple[float, ...]


def parse_heart_rate_measurement(data: bytes) -> HeartRateMeasurement:
    if not data:
        raise LineRejected(BleReason.EMPTY, "0x2A37 notification without bytes")
    flags = data[0]
    if flags & 0xE0:
        raise LineRejected(BleReason.RESERVED_FLAGS, f"0x2A37 flags 0x{flags:02x}")
    hr_wide, energy_present, rr_present = flags & 0x01, flags & 0x08, flags & 0x10
    contact_bits = (flags >> 1) & 0x03
    offset = 1
    hr_size = 2 if hr_wide else 1
    if len(data) < offset + hr_size:
        raise LineRejected(BleReason.WRONG_LENGTH, f"0x2A37 of {len(data)} bytes: {data.hex()}")
    bpm = int.from_bytes(data[offset : offset + hr_size], "little")
    offset += hr_size
    energy = None
    if energy_present:
        if len(data) < offset + 2:
            raise LineRejected(BleReason.WRONG_LENGTH, f"0x2A37 energy missing: {data.hex()}")
        energy = int.from_bytes(data[offset : offset + 2], "little")
        offset += 2
    rest = data[offset:]
    if not rr_present and rest:
        raise LineRejected(BleReason.WRONG_LENGTH, f"0x2A37 {len(rest)} extra bytes: {data.hex()}")
    if len(rest) % 2:
        raise LineRejected(BleReason.TRUNCATED_RR, f"0x2A37 odd RR bytes: {data.hex()}")
    rr = tuple(
        int.from_bytes(rest[i : i + 2], "little") * 1000.0 / RR_UNITS_PER_SECOND
        for i in range(0, len(rest), 2)
    )
    contact = None if contact_bits < 2 else contact_bits == 3
    return HeartRateMeasurement(bpm, contact, energy, rr)


def parse_illuminance(data: bytes) -> float | None:
    """Lux, or None when the sensor reports the value as unknown."""
    if len(data) != 3:
        raise LineRejected(BleReason.WRONG_LENGTH, f"0x2AFB of {len(data)} bytes: {data.hex()}")
    raw = int.from_bytes(data, "little")
    return None if raw == ILLUMINANCE_UNKNOWN else raw / 100.0


def parse_battery_level(data: bytes) -> float:
    """Percent (uint8; the range 0-100 is checked as for any reading)."""
    if len(data) != 1:
        raise LineRejected(BleReason.WRONG_LENGTH, f"0x2A19 of {len(data)} bytes: {data.hex()}")
    return float(data[0])


def parse_movement(data: bytes) -> float:
    if len(data) != 4:
        raise LineRejected(BleReason.WRONG_LENGTH, f"movement of {len(data)} bytes: {data.hex()}")
    return float(struct.unpack("<f", data)[0])


def parse_current_time(data: bytes, tz: tzinfo) -> float:
    """Unix seconds of a Current Time value, read as local time in ``tz``."""
    if len(data) != 10:
        raise LineRejected(BleReason.WRONG_LENGTH, f"0x2A2B of {len(data)} bytes: {data.hex()}")
    year, month, day, hours, minutes, seconds, _weekday, fractions, _reason = struct.unpack(
        "<HBBBBBBBB", data
    )
    try:
        moment = datetime(year, month, day, hours, minutes, seconds, tzinfo=tz)
    except ValueError as error:
        raise LineRejected(BleReason.BAD_TIME, f"0x2A2B {data.hex()}: {error}") from None
    return moment.timestamp() + fractions / 256.0


def format_current_time(timestamp: float, tz: tzinfo) -> bytes:
    """The 0x2A2B value for a moment (used by the replay's BLE mode and the tests)."""
    moment = datetime.fromtimestamp(timestamp, tz)
    fractions = min(int((timestamp % 1.0) * 256), 255)
    return struct.pack(
        "<HBBBBBBBB",
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.isoweekday(),
        fractions,
        0,
    )


__all__ = [
    "CURRENT_TIME",
    "CURRENT_TIME_SERVICE",
    "ENVIRONMENTAL_SENSING_SERVICE",
    "HEART_RATE_MEASUREMENT",
    "HEART_RATE_SERVICE",
    "ILLUMINANCE",
    "MOVEMENT",
    "MOVEMENT_SERVICE",
    "BleReason",
    "HeartRateMeasurement",
    "format_current_time",
    "parse_current_time",
    "parse_heart_rate_measurement",
    "parse_illuminance",
    "parse_movement",
]
