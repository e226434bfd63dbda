"""A seeded mutation fuzzer for the agent's real input parsers (shared by the fault tests and
benchmarks/bench_fuzz.py).

Serial: valid SF1 lines (every kind, with and without checksum, CRLF) are mutated (bit
flips, inserted/deleted/replaced bytes, hostile field values, swapped or repeated fields,
re-computed checksums so that a mutated body reaches the field checks) or replaced by random
bytes, cut into random chunks, and fed through the serial source's own ``LineSplitter`` and
line handler. BLE: valid Heart Rate Measurement, Illuminance, Movement and Current Time
payloads, mutated or random, go through the BLE source's own notification handlers.

Every input ends as exactly one outcome: a reading (checked against the protocol's ranges),
nothing (blank line, ACK echo), a source event, or a rejection whose reason is a known one;
any exception escaping a parser is a crash and is re-raised with the input that caused it.
"""

from __future__ import annotations

import math
import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC

from sleepfed.board.sources import Rejection, SourceEvent
from sleepfed.board.sources.ble_parsing import BleReason, format_current_time
from sleepfed.board.sources.ble_source import BleDeviceConfig, BleSource, DeviceLink
from sleepfed.board.sources.protocol import (
    MAX_LINE_BYTES,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    VALUE_RANGES,
    Kind,
    Reading,
    RejectReason,
    checksum,
    format_reading,
)
from sleepfed.board.sources.serial_source import LineSplitter, SerialSource

SERIAL_REASONS = frozenset(RejectReason.ALL)
BLE_REASONS = frozenset(
    {
        BleReason.EMPTY,
        BleReason.RESERVED_FLAGS,
        BleReason.WRONG_LENGTH,
        BleReason.TRUNCATED_RR,
        BleReason.BAD_TIME,
        RejectReason.OUT_OF_RANGE,
        RejectReason.NOT_A_NUMBER,
    }
)
HOSTILE_FIELDS = [
    b"", b"nan", b"NaN", b"inf", b"-inf", b"1e309", b"-1e309", b"1e-400", b"0x10", b"1_000",
    b" 60", b"60 ", b"+60", b"-0", b"0", b"9" * 60, b"1.2.3", b"--1", b"1e", b"e5", b".",
    b"\x00", b"\xff\xfe", b"\xc3\xa9", b"SF1", b"ACK", b"HR", b"LBL", b"*", b",", b"\r",
    b"4102444801", b"999999999", b"1764000000", b"2.5", b"5", b"6", b"250.0001", b"24.9999",
]  # fmt: skip
INTERESTING_BYTES = b",*.-+eE0123456789\x00\xff\r\n AKSFHRLUXMOVBn"
KIND_VALUES = {
    Kind.HR: (25.0, 250.0),
    Kind.RR: (200.0, 3000.0),
    Kind.MOV: (0.0, 5000.0),
    Kind.LUX: (0.0, 2000.0),
    Kind.LBL: (0.0, 5.0),
    Kind.BAT: (0.0, 100.0),
}


@dataclass
class FuzzTally:
    """What became of every input: accepted readings per kind, ignored inputs, events, and
    rejections per reason. ``inputs`` is the number of inputs fed."""

    inputs: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    ignored: int = 0
    # A crash (an exception escaping a parser) raises at once unless ``raise_on_crash`` is
    # off: then it is counted, its first inputs kept, and the fuzzing goes on.
    raise_on_crash: bool = True
    crashes: int = 0
    crash_examples: list[str] = field(default_factory=list)

    def crashed(self, description: str, error: Exception) -> None:
        if self.raise_on_crash:
            raise AssertionError(f"{description}: {error!r}") from error
        self.crashes += 1
        if len(self.crash_examples) < 5:
            self.crash_examples.append(f"{description}: {error!r}")

    @property
    def outcomes(self) -> int:
        return sum(self.accepted.values()) + sum(self.rejected.values()) + self.ignored


def _valid_line(rng: random.Random) -> bytes:
    kind = rng.choice(list(Kind))
    low, high = KIND_VALUES[kind]
    value = float(rng.randint(0, 5)) if kind is Kind.LBL else rng.uniform(low, high)
    reading = Reading(rng.uniform(1.7e9, 1.8e9), kind, value)
    line = format_reading(reading, with_checksum=rng.random() < 0.5)[:-1]
    return line + b"\r" if rng.random() < 0.1 else line


def _with_checksum(body: bytes) -> bytes:
    body = body.split(b"*", 1)[0]
    return body + b"*%02X" % checksum(body)


def mutate_line(line: bytes, rng: random.Random) -> bytes:
    """One to four random mutations of a line."""
    data = bytearray(line)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert an interesting byte
            data[pos:pos] = bytes([rng.choice(INTERESTING_BYTES)])
        elif op == 2 and data:  # delete a run
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 3 and data:  # replace a byte with any byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 4:  # replace a field with a hostile value
            fields = bytes(data).split(b",")
            fields[rng.randrange(len(fields))] = rng.choice(HOSTILE_FIELDS)
            data = bytearray(b",".join(fields))
        elif op == 5:  # drop, repeat or swap fields
            fields = bytes(data).split(b",")
            i, j = rng.randrange(len(fields)), rng.randrange(len(fields))
            choice = rng.randrange(3)
            if choice == 0:
                del fields[i]
            elif choice == 1:
                fields.insert(i, fields[j])
            else:
                fields[i], fields[j] = fields[j], fields[i]
            data = bytearray(b",".join(fields))
        elif op == 6:  # truncate
            del data[pos:]
        elif op == 7:  # repeat a segment (may exceed the length limit)
            data[pos:pos] = data[pos : pos + rng.randint(1, 60)] * rng.randint(1, 4)
        elif op == 8:  # a valid checksum over the mutated body: reaches the field checks
            data = bytearray(_with_checksum(bytes(data)))
        else:  # a random value of a random kind
            fields = bytes(data).split(b",")
            if len(fields) == 4:
                fields[3] = repr(rng.uniform(-1e6, 1e6)).encode()
            data = bytearray(b",".join(fields))
    return bytes(data)


def serial_stream(count: int, seed: int) -> tuple[bytes, int]:
    """``count`` lines (valid, mutated or random) joined by ``\\n``: (stream, lines)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.15:
            line = _valid_line(rng)
        elif roll < 0.9:
            line = mutate_line(_valid_line(rng), rng)
        elif roll < 0.97:
            line = rng.randbytes(rng.randrange(0, 160))
        else:  # an endless line or an empty one
            line = b"S" * rng.choice((0, MAX_LINE_BYTES, MAX_LINE_BYTES + 1, 5000))
        lines.append(line.replace(b"\n", b""))
    return b"\n".join(lines) + b"\n", count


def _check_reading(item: Reading) -> None:
    low, high = VALUE_RANGES[item.kind]
    assert MIN_TIMESTAMP <= item.timestamp <= MAX_TIMESTAMP, item
    assert math.isfinite(item.value) and low <= item.value <= high, item
    assert item.kind is not Kind.LBL or item.value == int(item.value), item


def fuzz_serial(count: int, seed: int, tally: FuzzTally | None = None) -> FuzzTally:
    """Feed ``count`` fuzzed lines, in random chunks, through the serial source's splitter
    and line handler (exactly what SerialSource.run does with each read)."""
    tally = tally or FuzzTally()
    stream, lines = serial_stream(count, seed)
    rng = random.Random(seed ^ 0x5EED)
    splitter = LineSplitter(MAX_LINE_BYTES)
    handle = SerialSource._handle
    pos = 0
    while pos < len(stream):
        step = rng.choice((1, 7, 64, 512, 4096))
        chunk = stream[pos : pos + step]
        pos += step
        for line in splitter.feed(chunk):
            try:
                item = handle(line)
            except Exception as error:  # a crash: report the input
                tally.crashed(f"serial parser crashed on {line!r}", error)
                continue
            if item is None:
                tally.ignored += 1
            elif isinstance(item, Reading):
                _check_reading(item)
                tally.accepted[item.kind.name.lower()] += 1
            else:
                assert isinstance(item, Rejection) and item.reason in SERIAL_REASONS, item
                tally.rejected[item.reason] += 1
    assert not splitter.pending  # the stream ends with a newline
    tally.inputs += lines
    return tally


# -- BLE -----------------------------------------------------------------------------------
def _valid_hrm(rng: random.Random) -> bytes:
    wide, energy, rr = rng.random() < 0.3, rng.random() < 0.3, rng.random() < 0.6
    flags = (wide * 0x01) | (rng.randrange(4) << 1) | (energy * 0x08) | (rr * 0x10)
    out = bytes([flags]) + rng.randint(30, 200).to_bytes(2 if wide else 1, "little")
    if energy:
        out += rng.randrange(65536).to_bytes(2, "little")
    if rr:
        for _ in range(rng.randint(0, 4)):
            out += rng.randint(250, 2500).to_bytes(2, "little")
    return out


def _valid_payload(rng: random.Random) -> tuple[str, bytes]:
    which = rng.randrange(5)
    if which == 0:
        return "hr", _valid_hrm(rng)
    if which == 4:
        return "bat", bytes([rng.randint(0, 100)])
    if which == 1:
        return "lux", rng.randrange(0, 1 << 24).to_bytes(3, "little")
    if which == 2:
        return "mov", struct.pack("<f", rng.uniform(0, 500))
    return "time", format_current_time(rng.uniform(1.7e9, 1.8e9), UTC)


def mutate_payload(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        if op == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif op == 1:
            out.insert(rng.randrange(len(out) + 1), rng.choice((0, 0xFF, 0x10, 0x80, 0x7F)))
        elif op == 2 and out:
            del out[rng.randrange(len(out)) :]
        elif op == 3 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        else:  # special floats for the movement characteristic
            out = bytearray(
                struct.pack("<f", rng.choice((math.nan, math.inf, -math.inf, -1.0, 3e38, 1e-45)))
            )
    return bytes(out)


def fuzz_ble(count: int, seed: int, tally: FuzzTally | None = None) -> FuzzTally:
    """Feed ``count`` fuzzed notifications through the BLE source's own handlers (the
    characteristic picked at random, so that any payload reaches any parser)."""
    tally = tally or FuzzTally()
    rng = random.Random(seed)
    board_clock = 1_764_000_000.0
    source = BleSource(
        "fuzz", [BleDeviceConfig("wrist", "AA:BB:CC:DD:EE:FF")], clock=lambda: board_clock
    )
    link = DeviceLink(source.devices[0])
    handlers = {
        "hr": source._on_heart_rate,
        "lux": source._on_illuminance,
        "mov": source._on_movement,
        "bat": source._on_battery,
        "time": source._on_current_time,
    }
    names = list(handlers)
    for _ in range(count):
        target, data = _valid_payload(rng)
        roll = rng.random()
        if roll < 0.6:
            data = mutate_payload(data, rng)
        elif roll < 0.8:
            data = rng.randbytes(rng.randrange(0, 24))
        if rng.random() < 0.2:
            target = rng.choice(names)
        try:
            items = handlers[target](link, data)
        except Exception as error:
            tally.inputs += 1
            tally.crashed(f"BLE {target} parser crashed on {data.hex()}", error)
            continue
        tally.inputs += 1
        if not items:
            tally.ignored += 1  # a Current Time value: sets the clock, no reading
        for item in items:
            if isinstance(item, Reading):
                assert math.isfinite(item.timestamp), item
                low, high = VALUE_RANGES[item.kind]
                assert math.isfinite(item.value) and low <= item.value <= high, item
                tally.accepted[item.kind.name.lower()] += 1
            elif isinstance(item, SourceEvent):
                tally.events[item.counter] += 1
            else:
                assert isinstance(item, Rejection) and item.reason in BLE_REASONS, item
                tally.rejected[item.reason] += 1
        if link.device_time is not None and rng.random() < 0.05:
            link.device_time = None  # back to the board's clock now and then
    return tally
