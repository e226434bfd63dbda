"""A Polar H10's PMD service (Polar Measurement Data) in the stand-in: the control point
answers as Polar's BLE SDK documents it, and the data characteristic carries ACC frames only
while a measurement runs.

Written from Polar's documentation (polar-ble-sdk ``technical_documentation/``,
``BlePMDClient.kt``), not from sleepfed's parser, so that a test of the board against it
checks the two against each other. The control point is written with response; its answer
comes as an indication (a ``Value`` change here):
``[0xF0, op code, measurement type, error code, more, parameters]``.

* ``01 02`` (get ACC settings): success with the H10's ACC settings: sample rates 25, 50,
  100, 200 Hz; resolution 16; ranges 2, 4, 8 G.
* ``02 02 <settings>`` (start ACC): each setting ``[type, count = 1, uint16]``; a rate,
  resolution or range the H10 lacks gets INVALID_SAMPLE_RATE (8), INVALID_RESOLUTION (7) or
  INVALID_RANGE (9); a running measurement ALREADY_IN_STATE (6); a code queued by
  ``RefuseNextPmdStart`` that code (e.g. DEVICE_IN_CHARGER, 13).
* ``03 02`` (stop ACC): success, or INVALID_STATE (12) when nothing runs.
* another measurement type: NOT_SUPPORTED (3); another op code: INVALID_OP_CODE (1); a
  command too short to name both: INVALID_LENGTH (4).

A link loss ends the measurement, as on the strap.
"""

from __future__ import annotations

import struct

from sleepfed_tools.bluez_standin.mock.world import Sensor

RESPONSE = 0xF0
ACC = 2
OP_GET_SETTINGS, OP_START, OP_STOP = 1, 2, 3
SUCCESS, INVALID_OP_CODE, NOT_SUPPORTED, INVALID_LENGTH = 0, 1, 3, 4
ALREADY_IN_STATE, INVALID_RESOLUTION, INVALID_SAMPLE_RATE, INVALID_RANGE = 6, 7, 8, 9
INVALID_STATE = 12
RATES, RESOLUTIONS, RANGES = (25, 50, 100, 200), (16,), (2, 4, 8)
SAMPLE_RATE, RESOLUTION, RANGE = 0, 1, 2


def _setting(kind: int, values: tuple[int, ...]) -> bytes:
    return bytes([kind, len(values)]) + b"".join(struct.pack("<H", v) for v in values)


ACC_SETTINGS = (
    _setting(SAMPLE_RATE, RATES) + _setting(RESOLUTION, RESOLUTIONS) + _setting(RANGE, RANGES)
)


def _answer(op: int, kind: int, code: int, parameters: bytes = b"") -> bytes:
    if code != SUCCESS:
        return bytes([RESPONSE, op, kind, code])
    return bytes([RESPONSE, op, kind, code, 0]) + parameters


def _start_error(settings: bytes) -> int:
    """The error code of a start command's settings (SUCCESS if the H10 has them)."""
    allowed = {
        SAMPLE_RATE: (RATES, INVALID_SAMPLE_RATE),
        RESOLUTION: (RESOLUTIONS, INVALID_RESOLUTION),
        RANGE: (RANGES, INVALID_RANGE),
    }
    offset = 0
    while offset < len(settings):
        if offset + 4 > len(settings) or settings[offset + 1] != 1:
            return INVALID_LENGTH
        kind, (value,) = settings[offset], struct.unpack_from("<H", settings, offset + 2)
        if kind in allowed and value not in allowed[kind][0]:
            return allowed[kind][1]
        offset += 4
    return SUCCESS


def control_point(sensor: Sensor, command: bytes) -> bytes:
    """The control point's answer to ``command``; starts or stops the sensor's stream."""
    if len(command) < 2:
        return _answer(command[0] if command else 0, 0, INVALID_LENGTH)
    op, kind = command[0], command[1]
    if op not in (OP_GET_SETTINGS, OP_START, OP_STOP):
        return _answer(op, kind, INVALID_OP_CODE)
    if kind != ACC:
        return _answer(op, kind, NOT_SUPPORTED)
    if op == OP_GET_SETTINGS:
        return _answer(op, kind, SUCCESS, ACC_SETTINGS)
    if op == OP_STOP:
        if not sensor.pmd_streaming:
            return _answer(op, kind, INVALID_STATE)
        sensor.pmd_streaming = False
        return _answer(op, kind, SUCCESS)
    if sensor.pmd_streaming:
        return _answer(op, kind, ALREADY_IN_STATE)
    code = sensor.pmd_refusals.pop(0) if sensor.pmd_refusals else _start_error(command[2:])
    if code == SUCCESS:
        sensor.pmd_streaming = True
        sensor.pmd_starts += 1
    return _answer(op, kind, code)
