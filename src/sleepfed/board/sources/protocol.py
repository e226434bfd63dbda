"""The sleepfed serial line protocol, version 1 (``SF1``).

One reading per line, ASCII, fields separated by commas, terminated by ``\\n``
(a trailing ``\\r`` is ignored)::

    SF1,<kind>,<timestamp>,<value>[*<checksum>]

* ``kind``: ``HR`` heart rate (bpm), ``RR`` one RR interval (ms), ``MOV`` movement
  (activity counts summed since the previous MOV line, or acceleration magnitude counts),
  ``LUX`` illuminance (lux), ``LBL`` reference sleep stage from a reference device
  (0 wake, 1 N1, 2 N2, 3 N3, 4 N4, 5 REM), ``BAT`` the device's battery level (percent).
* ``timestamp``: the sensor's clock, Unix epoch seconds, decimals allowed.
* ``checksum`` (optional): ``*`` and two hex digits, the XOR of every byte before the ``*``
  (as in NMEA 0183). When present it is verified.

The agent answers on the same port after each commit with::

    SF1,ACK,<timestamp of the last committed reading>,<readings committed on this link>

A sensor may drop its own copy of every reading up to that timestamp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

PROTOCOL_VERSION = "SF1"
MAX_LINE_BYTES = 120

# Plausible sensor clock: 2001-09-09 .. 2100-01-01.
MIN_TIMESTAMP = 1_000_000_000.0
MAX_TIMESTAMP = 4_102_444_800.0


class Kind(IntEnum):
    """What a reading measures; the integer is what the buffer stores."""

    HR = 1
    RR = 2
    MOV = 3
    LUX = 4
    LBL = 5
    BAT = 6


# Accepted value ranges per kind, inclusive.
VALUE_RANGES: dict[Kind, tuple[float, float]] = {
    Kind.HR: (25.0, 250.0),
    Kind.RR: (200.0, 3000.0),
    Kind.MOV: (0.0, 1_000_000.0),
    Kind.LUX: (0.0, 200_000.0),
    Kind.LBL: (0.0, 5.0),
    Kind.BAT: (0.0, 100.0),
}


@dataclass(frozen=True, slots=True)
class Reading:
    """One validated sensor reading."""

    timestamp: float
    kind: Kind
    value: float


class RejectReason:
    """Why a line was rejected; each is a counter name in the buffer."""

    TOO_LONG = "too_long"
    ENCODING = "encoding"
    SYNTAX = "syntax"
    CHECKSUM = "checksum"
    VERSION = "version"
    UNKNOWN_KIND = "unknown_kind"
    NOT_A_NUMBER = "not_a_number"
    TIMESTAMP = "timestamp_out_of_range"
    OUT_OF_RANGE = "value_out_of_range"
    NOT_INTEGER = "label_not_integer"

    ALL = (
        TOO_LONG,
        ENCODING,
        SYNTAX,
        CHECKSUM,
        VERSION,
        UNKNOWN_KIND,
        NOT_A_NUMBER,
        TIMESTAMP,
        OUT_OF_RANGE,
        NOT_INTEGER,
    )


class LineRejected(ValueError):
    """A line that is not a valid reading; ``reason`` is one of :class:`RejectReason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def checksum(payload: bytes) -> int:
    """XOR of all bytes (NMEA style)."""
    value = 0
    for byte in payload:
        value ^= byte
    return value


def _number(text: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LineRejected(RejectReason.NOT_A_NUMBER, f"{field}={text[:20]!r}") from None
    if not math.isfinite(value):
        raise LineRejected(RejectReason.NOT_A_NUMBER, f"{field}={text[:20]!r} is not finite")
    return value


def parse_line(raw: bytes) -> Reading | None:
    """Parse one line (without its ``\\n``). Returns None for an ACK echo or empty line.

    Raises :class:`LineRejected` with a reason for anything that is not a valid reading.
    """
    raw = raw.rstrip(b"\r")
    if len(raw) > MAX_LINE_BYTES:
        raise LineRejected(RejectReason.TOO_LONG, f"{len(raw)} bytes")
    if not raw.strip():
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise LineRejected(RejectReason.ENCODING, f"non-ASCII bytes in {raw[:40]!r}") from None
    if "*" in text:
        body, _, given = text.rpartition("*")
        try:
            given_sum = int(given, 16)
        except ValueError:
            raise LineRejected(RejectReason.CHECKSUM, f"bad checksum field {given!r}") from None
        if len(given) != 2 or checksum(body.encode("ascii")) != given_sum:
            raise LineRejected(RejectReason.CHECKSUM, f"line {body!r} checksum {given!r}")
        text = body
    fields = text.split(",")
    if fields[0] != PROTOCOL_VERSION:
        raise LineRejected(
            RejectReason.VERSION, f"expected {PROTOCOL_VERSION}, got {fields[0][:8]!r}"
        )
    if len(fields) >= 2 and fields[1] == "ACK":
        return None
    if len(fields) != 4:
        raise LineRejected(RejectReason.SYNTAX, f"{len(fields)} fields, expected 4")
    try:
        kind = Kind[fields[1]]
    except KeyError:
        raise LineRejected(RejectReason.UNKNOWN_KIND, f"kind {fields[1][:8]!r}") from None
    timestamp = _number(fields[2], "timestamp")
    if not MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP:
        raise LineRejected(RejectReason.TIMESTAMP, f"timestamp {timestamp}")
    return checked_reading(timestamp, kind, _number(fields[3], kind.name))


def checked_reading(timestamp: float, kind: Kind, value: float) -> Reading:
    """A reading whose value passed the same checks whatever its transport (serial, BLE)."""
    if not math.isfinite(value):
        raise LineRejected(RejectReason.NOT_A_NUMBER, f"{kind.name}={value}")
    low, high = VALUE_RANGES[kind]
    if not low <= value <= high:
        raise LineRejected(RejectReason.OUT_OF_RANGE, f"{kind.name}={value} outside {low}..{high}")
    if kind is Kind.LBL and value != int(value):
        raise LineRejected(RejectReason.NOT_INTEGER, f"LBL={value}")
    return Reading(timestamp, kind, value)


def format_reading(reading: Reading, with_checksum: bool = False) -> bytes:
    """The protocol line for a reading, with its ``\\n``."""
    value = f"{int(reading.value)}" if reading.kind is Kind.LBL else f"{reading.value:.6g}"
    body = f"{PROTOCOL_VERSION},{reading.kind.name},{reading.timestamp:.3f},{value}"
    if with_checksum:
        body += f"*{checksum(body.encode('ascii')):02X}"
    return (body + "\n").encode("ascii")


def format_ack(last_timestamp: float, committed: int) -> bytes:
    return f"{PROTOCOL_VERSION},ACK,{last_timestamp:.3f},{committed}\n".encode("ascii")


def parse_ack(raw: bytes) -> tuple[float, int] | None:
    """(last committed timestamp, count) from an ACK line, or None if it is not one."""
    fields = raw.strip().decode("ascii", "replace").split(",")
    if len(fields) != 4 or fields[0] != PROTOCOL_VERSION or fields[1] != "ACK":
        return None
    return float(fields[2]), int(fields[3])
