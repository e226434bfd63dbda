"""Polar PMD: commands, control point responses and ACC data frames (sleepfed.board.sources
.polar_pmd), against hand-computed bytes, against bleakheart's independent decoder, and under
hypothesis (anything malformed is a LineRejected, valid frames round-trip)."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import numpy as np
import pytest
from bleakheart import PolarMeasurementData
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sleepfed.board.sources import polar_pmd as pmd
from sleepfed.board.sources.protocol import LineRejected

TS = 694_512_749_912_654_440  # a sensor time from the SDK's TimeSystemExplained.md


def test_uuids_are_polars() -> None:
    assert pmd.PMD_SERVICE == "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
    assert PolarMeasurementData.PMDCTRLPOINT.lower() == pmd.PMD_CONTROL_POINT
    assert PolarMeasurementData.PMDDATAMTU.lower() == pmd.PMD_DATA


def test_commands() -> None:
    assert pmd.get_settings_command() == bytes([0x01, 0x02])
    assert pmd.stop_command() == bytes([0x03, 0x02])
    # start ACC: rate 200 (0x00C8), resolution 16, range 2, each as [type, count 1, uint16]
    assert pmd.start_acc_command(200, 2) == bytes.fromhex("02020001c8000101100002010200")
    assert pmd.start_acc_command(25, 8) == bytes.fromhex("0202000119000101100002010800")


@pytest.mark.parametrize(
    ("rate", "range_g", "resolution"), [(30, 2, 16), (200, 16, 16), (200, 2, 14), (0, 4, 16)]
)
def test_start_rejects_settings_the_h10_lacks(rate: int, range_g: int, resolution: int) -> None:
    with pytest.raises(ValueError):
        pmd.start_acc_command(rate, range_g, resolution)


def test_h10_acc_settings_response() -> None:
    # F0, op 1, ACC, SUCCESS, more 0; rates 25/50/100/200, resolution 16, ranges 2/4/8 G
    response = bytes.fromhex("f0010200000004190032006400c800010110000203020004000800")
    parsed = pmd.parse_control_point_response(response)
    assert parsed.op_code is pmd.OpCode.GET_MEASUREMENT_SETTINGS
    assert parsed.measurement_type == pmd.MeasurementType.ACC
    assert parsed.error is pmd.ErrorCode.SUCCESS and not parsed.more
    assert pmd.parse_settings(parsed.parameters) == {
        pmd.SettingType.SAMPLE_RATE: (25, 50, 100, 200),
        pmd.SettingType.RESOLUTION: (16,),
        pmd.SettingType.RANGE: (2, 4, 8),
    }


def test_factor_setting_is_a_float() -> None:
    parsed = pmd.parse_settings(bytes([5, 1]) + struct.pack("<f", 0.5))
    assert parsed == {pmd.SettingType.FACTOR: (0.5,)}


@pytest.mark.parametrize("code", range(15))
def test_error_codes(code: int) -> None:
    parsed = pmd.parse_control_point_response(bytes([0xF0, 0x02, 0x02, code, 0x01, 0x00]))
    assert parsed.error == code
    assert parsed.more == (code == 0)
    assert parsed.parameters == (b"\x00" if code == 0 else b"")
    if code < len(PolarMeasurementData.error_msgs):  # bleakheart stops at DEVICE_IN_CHARGER
        assert parsed.error.name == PolarMeasurementData.error_msgs[code].replace(" ", "_")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xf0\x02\x02", pmd.PmdReason.TRUNCATED),
        (b"\x0f\x02\x02\x00", pmd.PmdReason.NOT_A_RESPONSE),
        (b"\xf0\x09\x02\x00", pmd.PmdReason.UNKNOWN_OP_CODE),
        (b"\xf0\x02\x02\x0f", pmd.PmdReason.UNKNOWN_ERROR_CODE),
    ],
)
def test_bad_responses(data: bytes, reason: str) -> None:
    with pytest.raises(LineRejected) as caught:
        pmd.parse_control_point_response(data)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        (b"\x00", pmd.PmdReason.TRUNCATED),
        (b"\x00\x02\x19\x00", pmd.PmdReason.TRUNCATED),
        (b"\x09\x01\x00", pmd.PmdReason.UNKNOWN_SETTING),
    ],
)
def test_bad_settings(parameters: bytes, reason: str) -> None:
    with pytest.raises(LineRejected) as caught:
        pmd.parse_settings(parameters)
    assert caught.value.reason == reason


def _header(frame_type: int, measurement: int = 2) -> bytes:
    return bytes([measurement]) + TS.to_bytes(8, "little") + bytes([frame_type])


def test_raw_frame_by_hand() -> None:
    # (1, -2, 1000), (-1000, 0, 32767) as int16 little-endian
    frame = _header(0x01) + bytes.fromhex("0100feffe80318fc0000ff7f")
    parsed = pmd.parse_acc_frame(frame)
    assert parsed.timestamp_ns == TS and not parsed.compressed
    assert parsed.samples.tolist() == [[1, -2, 1000], [-1000, 0, 32767]]


def test_raw_8_and_24_bit_frames() -> None:
    assert pmd.parse_acc_frame(_header(0x00) + b"\x01\xff\x80").samples.tolist() == [[1, -1, -128]]
    frame = _header(0x02) + bytes.fromhex("ffffff000080400d03")
    assert pmd.parse_acc_frame(frame).samples.tolist() == [[-1, -(2**23), 200_000]]


def test_delta_frame_by_hand() -> None:
    # reference (10, -5, 1000); one block of width 3, 2 samples: deltas (1, -1, 0), (-4, 3, 2);
    # bits LSB first: 100 111 000 001 110 010 -> bytes 0x39 0x38 0x01
    frame = _header(0x81) + struct.pack("<3h", 10, -5, 1000) + bytes.fromhex("0302393801")
    parsed = pmd.parse_acc_frame(frame)
    assert parsed.compressed and parsed.timestamp_ns == TS
    assert parsed.samples.tolist() == [[10, -5, 1000], [11, -6, 1000], [7, -3, 1002]]


def test_the_timestamp_is_the_last_samples() -> None:
    frame = pmd.parse_acc_frame(pmd.build_acc_frame(TS, np.zeros((4, 3))))
    times = frame.sample_times_ns(200)
    assert times.tolist() == [TS - 15_000_000, TS - 10_000_000, TS - 5_000_000, TS]
    assert pmd.sensor_ns_to_unix(599_616_000_000_000_000) == 1_546_300_800.0  # 2019-01-01


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_header(0x01)[:9], pmd.PmdReason.TRUNCATED),
        (_header(0x00, measurement=0) + b"\x00" * 3, pmd.PmdReason.WRONG_TYPE),
        (_header(0x80) + b"\x00" * 6, pmd.PmdReason.UNKNOWN_FRAME_TYPE),
        (_header(0x03) + b"\x00" * 12, pmd.PmdReason.UNKNOWN_FRAME_TYPE),
        (_header(0x01), pmd.PmdReason.BAD_LENGTH),
        (_header(0x01) + b"\x00" * 7, pmd.PmdReason.BAD_LENGTH),
        (_header(0x81) + b"\x00" * 5, pmd.PmdReason.TRUNCATED),
        (_header(0x81) + b"\x00" * 6 + b"\x03", pmd.PmdReason.TRUNCATED),
        (_header(0x81) + b"\x00" * 6 + b"\x03\x02\x39\x38", pmd.PmdReason.TRUNCATED),
        (_header(0x81) + b"\x00" * 6 + b"\x00\x02", pmd.PmdReason.BAD_DELTA),
        (_header(0x81) + b"\x00" * 6 + b"\x21\x01" + b"\x00" * 13, pmd.PmdReason.BAD_DELTA),
        (_header(0x81) + b"\x00" * 6 + b"\x03\x00", pmd.PmdReason.BAD_DELTA),
        (b"\x02" + b"\xff" * 8 + b"\x01" + b"\x00" * 6, pmd.PmdReason.BAD_TIMESTAMP),
    ],
)
def test_malformed_frames(frame: bytes, reason: str) -> None:
    with pytest.raises(LineRejected) as caught:
        pmd.parse_acc_frame(frame)
    assert caught.value.reason == reason


SAMPLES = hnp.arrays(
    np.int64,
    st.tuples(st.integers(1, 80), st.just(3)),
    elements=st.integers(-32768, 32767),
)


@settings(max_examples=200, deadline=None)
@given(samples=SAMPLES, timestamp=st.integers(0, 2**63 - 1))
def test_raw_frames_round_trip_and_match_bleakheart(samples: np.ndarray, timestamp: int) -> None:
    frame = pmd.build_acc_frame(timestamp, samples)
    parsed = pmd.parse_acc_frame(frame)
    assert parsed.timestamp_ns == timestamp
    np.testing.assert_array_equal(parsed.samples, samples)
    theirs = PolarMeasurementData._decode_acc_data(None, bytearray(frame))  # type: ignore[arg-type]
    assert parsed.samples.tolist() == [list(sample) for sample in theirs]


@settings(max_examples=200, deadline=None)
@given(samples=SAMPLES, timestamp=st.integers(0, 2**63 - 1), block=st.integers(1, 255))
def test_delta_frames_round_trip(samples: np.ndarray, timestamp: int, block: int) -> None:
    frame = pmd.build_acc_frame(timestamp, samples, compressed=True, block=block)
    assert frame[9] == 0x81
    parsed = pmd.parse_acc_frame(frame)
    assert parsed.timestamp_ns == timestamp and parsed.compressed
    np.testing.assert_array_equal(parsed.samples, samples)


def test_delta_frames_are_smaller_for_smooth_motion() -> None:
    samples = np.stack([np.arange(60), -np.arange(60), np.full(60, 1000)], axis=1)
    compressed = pmd.build_acc_frame(TS, samples, compressed=True)
    assert len(compressed) < len(pmd.build_acc_frame(TS, samples)) / 4


def _parse_or_reject(parse: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(LineRejected):
        parse(data)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_are_parsed_or_rejected(data: bytes) -> None:
    _parse_or_reject(pmd.parse_acc_frame, data)
    _parse_or_reject(pmd.parse_control_point_response, data)
    _parse_or_reject(pmd.parse_settings, data)


@settings(max_examples=500, deadline=None)
@given(frame_type=st.sampled_from([0x00, 0x01, 0x02, 0x81]), content=st.binary(max_size=300))
def test_arbitrary_acc_content_is_parsed_or_rejected(frame_type: int, content: bytes) -> None:
    _parse_or_reject(pmd.parse_acc_frame, _header(frame_type) + content)
    _parse_or_reject(pmd.parse_settings, bytes([frame_type % 6]) + content)
