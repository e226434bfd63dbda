"""Polar Measurement Data (PMD): the BLE service through which a Polar H10 chest strap streams
raw accelerometer samples. Pure functions over bytes (no BLE I/O): anything malformed raises
:class:`sleepfed.board.sources.protocol.LineRejected` with a counted reason (:class:`PmdReason`).

Formats from Polar's BLE SDK (https://github.com/polarofficial/polar-ble-sdk), its
``technical_documentation/`` (``Polar_Measurement_Data_Specification.pdf``,
``TimeSystemExplained.md``) and Android sources (``.../gatt/client/pmd/``: ``BlePMDClient.kt``,
``PmdControlPointResponse.kt``, ``PmdSetting.kt``, ``PmdDataFrame.kt``, ``model/AccData.kt``);
all integers little-endian.

* Control point commands: ``[op code, measurement type, (setting type, count = 1, value)...]``;
  op codes 1 get measurement settings, 2 start, 3 stop; measurement type 2 = ACC.
* Control point response: ``[0xF0, op code, measurement type, error code, more, parameters]``;
  ``more`` and the parameters (settings, same encoding with count = n values) only on success.
* Data frame: ``[measurement type, uint64 timestamp, frame type, content]``. The timestamp is
  the sensor clock, ns since 2000-01-01T00:00:00 (the sensor's local time as last set; an H10
  whose time was never set since power-up starts at 2019-01-01), of the **last** sample.
  Frame type bits 0-6: the type, bit 7: delta-compressed. ACC raw type ``t`` (0, 1, 2): x, y, z
  signed integers of ``t + 1`` bytes each, in mG (the H10 sends type 1). ACC compressed type 1
  (0x81): a reference sample of three int16, then blocks ``[delta bit width, sample count,
  count × 3 deltas packed least-significant bit first, padded to a byte]``; each delta is a
  signed ``width``-bit integer added to the previous sample. Compressed type 0 (0x80, scaled by
  a factor from the start response; Verity Sense) is not handled here.

Not bleakheart's decoders (PyPI, MPL-2.0, PMD on bleak): they are private methods of a class
bound to a ``BleakClient``, raise ``ValueError``/``IndexError`` rather than countable reasons,
and decode only raw ACC frames. The tests check our raw decoding against theirs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from sleepfed.board.sources.protocol import LineRejected

PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL_POINT = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"

RESPONSE_CODE = 0xF0
PMD_EPOCH_UNIX_S = 946_684_800  # 2000-01-01T00:00:00Z in Unix seconds
HEADER_BYTES = 10
COMPRESSED_BIT = 0x80
H10_ACC_SAMPLE_RATES = (25, 50, 100, 200)
H10_ACC_RANGES_G = (2, 4, 8)
H10_ACC_RESOLUTION = 16
MAX_DELTA_BITS = 32
MAX_TIMESTAMP_NS = 2**63 - 1  # 292 years after 2000; anything later is garbage


class MeasurementType(IntEnum):
    ECG = 0
    PPG = 1
    ACC = 2
    PPI = 3
    GYRO = 5
    MAG = 6


class OpCode(IntEnum):
    GET_MEASUREMENT_SETTINGS = 1
    REQUEST_MEASUREMENT_START = 2
    STOP_MEASUREMENT = 3


class ErrorCode(IntEnum):
    """The control point's error codes (the SDK's ``PmdControlPointResponseCode``)."""

    SUCCESS = 0
    INVALID_OP_CODE = 1
    INVALID_MEASUREMENT_TYPE = 2
    NOT_SUPPORTED = 3
    INVALID_LENGTH = 4
    INVALID_PARAMETER = 5
    ALREADY_IN_STATE = 6
    INVALID_RESOLUTION = 7
    INVALID_SAMPLE_RATE = 8
    INVALID_RANGE = 9
    INVALID_MTU = 10
    INVALID_NUMBER_OF_CHANNELS = 11
    INVALID_STATE = 12
    DEVICE_IN_CHARGER = 13
    DISK_FULL = 14


class SettingType(IntEnum):
    SAMPLE_RATE = 0
    RESOLUTION = 1
    RANGE = 2
    RANGE_MILLIUNIT = 3
    CHANNELS = 4
    FACTOR = 5


# value sizes in bytes by SettingType (FACTOR: a float32 some sensors send when starting)
SETTING_BYTES = (2, 2, 2, 4, 1, 4)


class PmdReason:
    """Rejection reasons of PMD payloads (counted as ``rejected_<reason>``)."""

    TRUNCATED = "pmd_truncated"
    WRONG_TYPE = "pmd_wrong_type"
    UNKNOWN_FRAME_TYPE = "pmd_unknown_frame_type"
    BAD_LENGTH = "pmd_bad_length"
    BAD_DELTA = "pmd_bad_delta"
    NOT_A_RESPONSE = "pmd_not_a_response"
    UNKNOWN_OP_CODE = "pmd_unknown_op_code"
    UNKNOWN_ERROR_CODE = "pmd_unknown_error_code"
    UNKNOWN_SETTING = "pmd_unknown_setting"
    BAD_TIMESTAMP = "pmd_bad_timestamp"


@dataclass(frozen=True, slots=True)
class ControlPointResponse:
    op_code: OpCode
    measurement_type: int
    error: ErrorCode
    more: bool  # more response frames follow
    parameters: bytes  # settings, parsed by parse_settings


@dataclass(frozen=True, slots=True)
class AccFrame:
    timestamp_ns: int  # sensor clock, ns since 2000-01-01, of the last sample
    samples: npt.NDArray[np.int64]  # (n, 3): x, y, z in mG
    compressed: bool

    def sample_times_ns(self, sample_rate_hz: float) -> npt.NDArray[np.int64]:
        """The sensor time of each sample, spaced by the nominal sample period."""
        back = np.arange(len(self.samples) - 1, -1, -1, dtype=np.int64)
        return self.timestamp_ns - np.round(back * 1e9 / sample_rate_hz).astype(np.int64)


def get_settings_command(measurement: MeasurementType = MeasurementType.ACC) -> bytes:
    return bytes([OpCode.GET_MEASUREMENT_SETTINGS, measurement])


def stop_command(measurement: MeasurementType = MeasurementType.ACC) -> bytes:
    return bytes([OpCode.STOP_MEASUREMENT, measurement])


def start_acc_command(
    sample_rate_hz: int, range_g: int, resolution: int = H10_ACC_RESOLUTION
) -> bytes:
    """Start ACC streaming at one of the H10's sample rates and ranges."""
    if sample_rate_hz not in H10_ACC_SAMPLE_RATES:
        raise ValueError(f"ACC sample rate {sample_rate_hz} Hz not in {H10_ACC_SAMPLE_RATES}")
    if range_g not in H10_ACC_RANGES_G:
        raise ValueError(f"ACC range {range_g} G not in {H10_ACC_RANGES_G}")
    if resolution != H10_ACC_RESOLUTION:
        raise ValueError(f"ACC resolution {resolution} bits: the H10 has {H10_ACC_RESOLUTION}")
    command = bytearray([OpCode.REQUEST_MEASUREMENT_START, MeasurementType.ACC])
    for setting, value in (
        (SettingType.SAMPLE_RATE, sample_rate_hz),
        (SettingType.RESOLUTION, resolution),
        (SettingType.RANGE, range_g),
    ):
        command += bytes([setting, 1]) + value.to_bytes(SETTING_BYTES[setting], "little")
    return bytes(command)


def parse_control_point_response(data: bytes) -> ControlPointResponse:
    if len(data) < 4:
        raise LineRejected(PmdReason.TRUNCATED, f"PMD response of {len(data)} bytes")
    if data[0] != RESPONSE_CODE:
        raise LineRejected(PmdReason.NOT_A_RESPONSE, f"PMD response code 0x{data[0]:02x}")
    try:
        op_code = OpCode(data[1])
    except ValueError:
        raise LineRejected(PmdReason.UNKNOWN_OP_CODE, f"PMD op code {data[1]}") from None
    try:
        error = ErrorCode(data[3])
    except ValueError:
        raise LineRejected(PmdReason.UNKNOWN_ERROR_CODE, f"PMD error {data[3]}") from None
    success = error is ErrorCode.SUCCESS
    more = success and len(data) > 4 and data[4] != 0
    parameters = bytes(data[5:]) if success else b""
    return ControlPointResponse(op_code, data[2], error, more, parameters)


def parse_settings(parameters: bytes) -> dict[SettingType, tuple[float, ...]]:
    """Settings of a response: each type with its values (FACTOR as a float, others ints)."""
    settings: dict[SettingType, tuple[float, ...]] = {}
    offset = 0
    while offset < len(parameters):
        if offset + 2 > len(parameters):
            raise LineRejected(PmdReason.TRUNCATED, f"PMD settings: {parameters.hex()}")
        try:
            setting = SettingType(parameters[offset])
        except ValueError:
            raise LineRejected(
                PmdReason.UNKNOWN_SETTING, f"PMD setting type {parameters[offset]}"
            ) from None
        count, size = parameters[offset + 1], SETTING_BYTES[setting]
        offset += 2
        end = offset + count * size
        if end > len(parameters):
            raise LineRejected(PmdReason.TRUNCATED, f"PMD settings: {parameters.hex()}")
        raw = parameters[offset:end]
        if setting is SettingType.FACTOR:
            values: tuple[float, ...] = struct.unpack(f"<{count}f", raw)
        else:
            values = tuple(
                int.from_bytes(raw[i : i + size], "little") for i in range(0, len(raw), size)
            )
        settings[setting] = settings.get(setting, ()) + values
        offset = end
    return settings


def parse_acc_frame(data: bytes) -> AccFrame:
    """An ACC data frame's samples in mG and the sensor time of its last sample."""
    if len(data) < HEADER_BYTES:
        raise LineRejected(PmdReason.TRUNCATED, f"PMD frame of {len(data)} bytes")
    if data[0] != MeasurementType.ACC:
        raise LineRejected(PmdReason.WRONG_TYPE, f"PMD measurement type {data[0]}, not ACC")
    timestamp = int.from_bytes(data[1:9], "little")
    if timestamp > MAX_TIMESTAMP_NS:
        raise LineRejected(PmdReason.BAD_TIMESTAMP, f"PMD timestamp {timestamp} ns")
    frame_type, content = data[9], bytes(data[HEADER_BYTES:])
    if frame_type in (0, 1, 2):
        samples = _raw_samples(content, frame_type + 1)
    elif frame_type == COMPRESSED_BIT | 1:
        samples = _delta_samples(content)
    else:
        raise LineRejected(PmdReason.UNKNOWN_FRAME_TYPE, f"PMD ACC frame type 0x{frame_type:02x}")
    return AccFrame(timestamp, samples, bool(frame_type & COMPRESSED_BIT))


def _raw_samples(content: bytes, width: int) -> npt.NDArray[np.int64]:
    if not content or len(content) % (3 * width):
        raise LineRejected(PmdReason.BAD_LENGTH, f"PMD raw ACC content of {len(content)} bytes")
    values = [
        int.from_bytes(content[i : i + width], "little", signed=True)
        for i in range(0, len(content), width)
    ]
    return np.array(values, dtype=np.int64).reshape(-1, 3)


def _delta_samples(content: bytes) -> npt.NDArray[np.int64]:
    if len(content) < 6:
        raise LineRejected(PmdReason.TRUNCATED, f"PMD delta ACC content of {len(content)} bytes")
    rows = [np.array(struct.unpack("<3h", content[:6]), dtype=np.int64).reshape(1, 3)]
    offset = 6
    while offset < len(content):
        if offset + 2 > len(content):
            raise LineRejected(PmdReason.TRUNCATED, f"PMD delta block header at {offset}")
        width, count = content[offset], content[offset + 1]
        if not 1 <= width <= MAX_DELTA_BITS or count == 0:
            raise LineRejected(PmdReason.BAD_DELTA, f"PMD delta block {width} bits × {count}")
        n_bytes = (width * count * 3 + 7) // 8
        block = content[offset + 2 : offset + 2 + n_bytes]
        if len(block) < n_bytes:
            raise LineRejected(PmdReason.TRUNCATED, f"PMD delta block of {len(block)} bytes")
        rows.append(_unpack_deltas(block, width, count))
        offset += 2 + n_bytes
    deltas = np.concatenate(rows)
    return np.cumsum(deltas, axis=0)


def _unpack_deltas(block: bytes, width: int, count: int) -> npt.NDArray[np.int64]:
    """``count`` × 3 signed ``width``-bit integers, packed least-significant bit first."""
    bits = np.unpackbits(np.frombuffer(block, dtype=np.uint8), bitorder="little")
    bits = bits[: width * count * 3].reshape(count * 3, width).astype(np.int64)
    values = bits @ (np.int64(1) << np.arange(width, dtype=np.int64))
    values -= bits[:, -1] << np.int64(width)  # two's complement sign
    return values.reshape(count, 3)


def build_acc_frame(
    timestamp_ns: int, samples: npt.ArrayLike, *, compressed: bool = False, block: int = 255
) -> bytes:
    """An ACC data frame (for the tests and a stand-in sensor): raw type 1, or compressed type 1
    with blocks of up to ``block`` deltas, each block's width the fewest bits that hold it."""
    values = np.asarray(samples, dtype=np.int64).reshape(-1, 3)
    if not len(values) or values.min() < -32768 or values.max() > 32767:
        raise ValueError("ACC samples must be a non-empty (n, 3) array of int16")
    header = bytes([MeasurementType.ACC]) + timestamp_ns.to_bytes(8, "little")
    if not compressed:
        return header + b"\x01" + values.astype("<i2").tobytes()
    content = bytearray(values[0].astype("<i2").tobytes())
    deltas = np.diff(values, axis=0)
    for start in range(0, len(deltas), block):
        chunk = deltas[start : start + block]
        width = max(int(np.max(np.where(chunk < 0, ~chunk, chunk))).bit_length() + 1, 1)
        bits = (chunk.reshape(-1, 1) >> np.arange(width)) & 1
        packed = np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little")
        content += bytes([width, len(chunk)]) + packed.tobytes()
    return header + bytes([COMPRESSED_BIT | 1]) + bytes(content)


def sensor_ns_to_unix(timestamp_ns: int) -> float:
    """Unix seconds of a sensor time, valid when the sensor's clock was set to UTC."""
    return timestamp_ns / 1e9 + PMD_EPOCH_UNIX_S
