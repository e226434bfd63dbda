"""Measures 1 and 2 of benchmarks/bench_ble.py, in this process: realistic Heart Rate
Measurement payloads, their parse against a bare decode, and the BLE source's handler with
and without the daemon's batched SQLite commits."""

from __future__ import annotations

import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.service.ingest import ACCEPTED_COUNTER
from sleepfed.board.sources.ble_parsing import parse_heart_rate_measurement
from sleepfed.board.sources.ble_source import BleDeviceConfig, BleSource, DeviceLink
from sleepfed.board.sources.protocol import Reading

DEFAULT_BATCH = 2000  # sleepfed.board.service.config default buffer.batch_max_readings
REPEATS = 5  # in-memory timings: best of (wall and CPU each)
ADDRESS = "C0:FF:EE:00:0B:E1"


# -- payloads -----------------------------------------------------------------------------------
def realistic_payloads(n: int, seed: int = 1) -> list[bytearray]:
    """``n`` Heart Rate Measurement frames as bleak hands them over (bytearray)."""
    rng = random.Random(seed)
    out: list[bytearray] = []
    bpm = 60.0
    for _ in range(n):
        bpm = min(90.0, max(45.0, bpm + rng.uniform(-2.0, 2.0)))  # a slow random walk
        beat_units = 60.0 / bpm * 1024.0
        rr = [round(beat_units * rng.uniform(0.9, 1.1)) for _ in range(rng.randint(1, 3))]
        frame = bytes([0x16, round(bpm)]) + b"".join(struct.pack("<H", v) for v in rr)
        out.append(bytearray(frame))
    return out


# -- measurements -------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    cpu0, start = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu0


def best_of(fn: Callable[[], object]) -> tuple[float, float]:
    runs = [timed(fn) for _ in range(REPEATS)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def row(name: str, n: int, wall: float, cpu: float | None, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "n": n,
        "seconds": wall,
        "per_s": n / wall,
        "cpu_s_per_1k": None if cpu is None else cpu / n * 1000.0,
        **extra,
    }


def bench_parse(payloads: list[bytearray]) -> list[dict[str, object]]:
    def bare() -> None:
        for p in payloads:
            data = bytes(p)
            _ = data[1]
            for i in range(2, len(data), 2):
                int.from_bytes(data[i : i + 2], "little")

    def parse() -> None:
        for p in payloads:
            parse_heart_rate_measurement(bytes(p))

    n = len(payloads)
    return [
        row("bare bytes()+int.from_bytes (baseline)", n, *best_of(bare)),
        row("parse_heart_rate_measurement", n, *best_of(parse)),
    ]


def _handle_and_store(
    source: BleSource, link: DeviceLink, payloads: list[bytearray], buffer: Buffer
) -> tuple[int, int]:
    """The daemon's path: the handler's items batched into commits; (readings, transactions)."""
    readings = transactions = 0
    batch: list[tuple[str, Reading]] = []
    counters: Counter[str] = Counter()
    for p in payloads:
        for item in source._on_heart_rate(link, bytes(p)):
            if isinstance(item, Reading):
                batch.append(("bench", item))
                counters[ACCEPTED_COUNTER[item.kind]] += 1
            else:
                counters["not_a_reading"] += 1
        if len(batch) >= DEFAULT_BATCH:
            readings += buffer.add_readings(batch, dict(counters))
            transactions += 1
            batch, counters = [], Counter()
    if batch or counters:
        readings += buffer.add_readings(batch, dict(counters))
        transactions += 1
    return readings, transactions


def bench_in_process(root: Path, payloads: list[bytearray]) -> list[dict[str, object]]:
    """BleSource's handler alone (best of), then handler + batched commits (once, fresh file)."""
    source = BleSource("bench", [BleDeviceConfig("strap", address=ADDRESS)])
    link = source.links["strap"]
    n = len(payloads)

    def handler_only() -> None:
        for p in payloads:
            source._on_heart_rate(link, bytes(p))

    rows = [row("_on_heart_rate (parse+readings)", n, *best_of(handler_only))]

    buffer = Buffer(root / "in-process.db", synchronous="full")
    stored = (0, 0)  # readings, transactions

    def handle_and_store() -> None:
        nonlocal stored
        stored = _handle_and_store(source, link, payloads, buffer)

    try:
        wall, cpu = timed(handle_and_store)
        in_file = buffer.counts().readings
        odd = buffer.counters().get("not_a_reading", 0)
    finally:
        buffer.close()
    rows.append(
        row(
            f"_on_heart_rate + add_readings({DEFAULT_BATCH}, full)",
            n,
            wall,
            cpu,
            readings=stored[0],
            readings_in_file=in_file,
            transactions=stored[1],
            not_readings=odd,
            io_bound=True,  # waits for fsync at every commit (synchronous=full)
        )
    )
    return rows
