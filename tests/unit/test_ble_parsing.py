"""The BLE characteristic parsers: every field of 0x2A37 and 0x2AFB, and random bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleepfed.board.sources.ble_parsing import (
    BleReason,
    HeartRateMeasurement,
    format_current_time,
    parse_battery_level,
    parse_current_time,
    parse_heart_rate_measurement,
    parse_illuminance,
    parse_movement,
)
from sleepfed.board.sources.protocol import LineRejected


def hrm(flags: int, *fields: bytes) -> bytes:
    return bytes([flags]) + b"".join(fields)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (hrm(0x00, b"\x48"), HeartRateMeasurement(72, None, None, ())),
        (hrm(0x01, struct.pack("<H", 300)), HeartRateMeasurement(300, None, None, ())),
        (hrm(0x06, b"\x3c"), HeartRateMeasurement(60, True, None, ())),
        (hrm(0x04, b"\x3c"), HeartRateMeasurement(60, False, None, ())),
        (hrm(0x02, b"\x3c"), HeartRateMeasurement(60, None, None, ())),
        (hrm(0x08, b"\x3c", struct.pack("<H", 1234)), HeartRateMeasurement(60, None, 1234, ())),
        (hrm(0x10, b"\x3c"), HeartRateMeasurement(60, None, None, ())),
        (
            hrm(0x10, b"\x48", struct.pack("<HH", 1024, 512)),
            HeartRateMeasurement(72, None, None, (1000.0, 500.0)),
        ),
        (
            hrm(0x1F, struct.pack("<H", 61), struct.pack("<H", 7), struct.pack("<H", 1000)),
            HeartRateMeasurement(61, True, 7, (1000 * 1000 / 1024,)),
        ),
    ],
)
def test_heart_rate_measurement_fields(payload: bytes, expected: HeartRateMeasurement) -> None:
    assert parse_heart_rate_measurement(payload) == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", BleReason.EMPTY),
        (hrm(0x20, b"\x48"), BleReason.RESERVED_FLAGS),
        (hrm(0x80, b"\x48"), BleReason.RESERVED_FLAGS),
        (hrm(0x00), BleReason.WRONG_LENGTH),
        (hrm(0x01, b"\x48"), BleReason.WRONG_LENGTH),
        (hrm(0x08, b"\x48", b"\x01"), BleReason.WRONG_LENGTH),
        (hrm(0x00, b"\x48\x00"), BleReason.WRONG_LENGTH),
        (hrm(0x10, b"\x48", b"\x00\x04\x00"), BleReason.TRUNCATED_RR),
    ],
)
def test_malformed_heart_rate_measurements_are_rejected(payload: bytes, reason: str) -> None:
    with pytest.raises(LineRejected) as caught:
        parse_heart_rate_measurement(payload)
    assert caught.value.reason == reason


def test_illuminance() -> None:
    assert parse_illuminance((12345).to_bytes(3, "little")) == 123.45
    assert parse_illuminance(b"\x00\x00\x00") == 0.0
    assert parse_illuminance(b"\xff\xff\xff") is None
    for payload in (b"", b"\x01\x02", b"\x01\x02\x03\x04"):
        with pytest.raises(LineRejected) as caught:
            parse_illuminance(payload)
        assert caught.value.reason == BleReason.WRONG_LENGTH


def test_battery_level() -> None:
    assert [parse_battery_level(bytes([v])) for v in (0, 84, 100, 255)] == [0, 84, 100, 255]
    for payload in (b"", b"\x54\x00"):
        with pytest.raises(LineRejected) as caught:
            parse_battery_level(payload)
        assert caught.value.reason == BleReason.WRONG_LENGTH  # 255: the range check's


def test_movement() -> None:
    assert parse_movement(struct.pack("<f", 5.25)) == 5.25
    with pytest.raises(LineRejected):
        parse_movement(b"\x01\x02")


def test_current_time_round_trip_and_bad_dates() -> None:
    from zoneinfo import ZoneInfo

    for tz in (ZoneInfo("UTC"), ZoneInfo("Europe/Berlin")):
        stamp = 1_795_557_602.5
        assert parse_current_time(format_current_time(stamp, tz), tz) == stamp
    bad = struct.pack("<HBBBBBBBB", 2026, 13, 1, 0, 0, 0, 1, 0, 0)
    with pytest.raises(LineRejected) as caught:
        parse_current_time(bad, ZoneInfo("UTC"))
    assert caught.value.reason == BleReason.BAD_TIME


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_never_raise_anything_but_a_clean_rejection(data: bytes) -> None:
    from zoneinfo import ZoneInfo

    def current_time(payload: bytes) -> float:
        return parse_current_time(payload, ZoneInfo("UTC"))

    parsers = (
        parse_heart_rate_measurement,
        parse_illuminance,
        parse_movement,
        parse_battery_level,
        current_time,
    )
    for parse in parsers:
        try:
            parse(data)
        except LineRejected as rejected:
            assert rejected.reason.startswith("ble_")


@settings(max_examples=2000, deadline=None)
@given(
    wide=st.booleans(),
    contact=st.integers(0, 3),
    bpm=st.integers(0, 255),
    energy=st.none() | st.integers(0, 0xFFFF),
    rr=st.lists(st.integers(0, 0xFFFF), max_size=9),
    with_rr_flag=st.booleans(),
)
def test_well_formed_measurements_round_trip(
    wide: bool, contact: int, bpm: int, energy: int | None, rr: list[int], with_rr_flag: bool
) -> None:
    rr_present = with_rr_flag or bool(rr)
    flags = (
        int(wide) | contact << 1 | (0x08 if energy is not None else 0) | (0x10 if rr_present else 0)
    )
    payload = bytes([flags]) + bpm.to_bytes(2 if wide else 1, "little")
    if energy is not None:
        payload += struct.pack("<H", energy)
    payload += b"".join(struct.pack("<H", v) for v in rr)
    parsed = parse_heart_rate_measurement(payload)
    assert parsed.bpm == bpm
    assert parsed.energy_kj == energy
    assert parsed.rr_ms == tuple(v * 1000 / 1024 for v in rr)
    assert parsed.contact == (None if contact < 2 else contact == 3)
