"""Fuzzing throughput: a million mutated and random serial lines and a million BLE payloads
through the agent's real parsers (tests/support/fuzzing.py), with every rejection counted by reason.

Not a test: it prints a table, the rejection counts, and one final JSON line. Each rate is
also given as a ratio to a baseline measured in the same run (valid lines, valid payloads
through the same code). Wall time and this process's CPU time are both shown: on a busy
machine the CPU rate is the one to compare.

    python benchmarks/bench_fuzz.py [--inputs 1000000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sleepfed.board.sources.ble_source import BleDeviceConfig, BleSource, DeviceLink  # noqa: E402
from sleepfed.board.sources.serial_source import SerialSource  # noqa: E402
from tests.support.fuzzing import (  # noqa: E402
    BLE_REASONS,
    SERIAL_REASONS,
    FuzzTally,
    _valid_line,
    _valid_payload,
    fuzz_ble,
    fuzz_serial,
)

# (name, inputs, wall s, CPU s, per-CPU-s rate as a ratio to its baseline)
Row = tuple[str, int, float, float, float]


def timed(fn):  # type: ignore[no-untyped-def]
    cpu0, start = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - cpu0


def baseline_serial(n: int, seed: int) -> int:
    rng = random.Random(seed)
    lines = [_valid_line(rng) for _ in range(10_000)]
    handle = SerialSource._handle
    for i in range(n):
        handle(lines[i % len(lines)])
    return n


def baseline_ble(n: int, seed: int) -> int:
    rng = random.Random(seed)
    source = BleSource("bench", [BleDeviceConfig("w", "AA:BB:CC:DD:EE:FF")])
    link = DeviceLink(source.devices[0])
    handlers = {
        "hr": source._on_heart_rate,
        "lux": source._on_illuminance,
        "mov": source._on_movement,
        "time": source._on_current_time,
    }
    payloads = [_valid_payload(rng) for _ in range(10_000)]
    for i in range(n):
        target, data = payloads[i % len(payloads)]
        handlers[target](link, data)
    return n


def measure(n: int, seed: int) -> tuple[list[Row], FuzzTally, FuzzTally]:
    """The four timed rows (baselines and fuzzing) and the two fuzzing tallies."""
    base_n = max(n // 10, 1000)
    rows: list[Row] = []
    _, wall, cpu = timed(lambda: baseline_serial(base_n, seed))
    serial_base = base_n / cpu
    rows.append(("serial: valid lines (baseline)", base_n, wall, cpu, 1.0))
    serial, wall, cpu = timed(lambda: fuzz_serial(n, seed, FuzzTally(raise_on_crash=False)))
    rows.append(("serial: fuzzed lines, generated + parsed", n, wall, cpu, n / cpu / serial_base))
    _, wall, cpu = timed(lambda: baseline_ble(base_n, seed))
    ble_base = base_n / cpu
    rows.append(("BLE: valid payloads (baseline)", base_n, wall, cpu, 1.0))
    ble, wall, cpu = timed(lambda: fuzz_ble(n, seed, FuzzTally(raise_on_crash=False)))
    rows.append(("BLE: fuzzed payloads, generated + parsed", n, wall, cpu, n / cpu / ble_base))
    return rows, serial, ble


def print_report(rows: list[Row], tallies: dict[str, FuzzTally]) -> None:
    print(f"{'':44} {'inputs':>9} {'wall s':>7} {'CPU s':>7} {'per CPU s':>10} {'ratio':>6}")
    for name, count, wall, cpu, ratio in rows:
        print(f"{name:44} {count:9d} {wall:7.2f} {cpu:7.2f} {count / cpu:10.0f} {ratio:6.2f}")
    for name, tally in tallies.items():
        print(
            f"{name}: {tally.inputs} inputs, accepted {dict(tally.accepted)}, "
            f"ignored {tally.ignored}, events {dict(tally.events)}"
        )
        print(f"{name}: rejected by reason {dict(sorted(tally.rejected.items()))}")
    for tally in tallies.values():
        for example in tally.crash_examples:
            print(f"CRASH {example}")


def tally_figures(tally: FuzzTally) -> dict[str, object]:
    return {
        "inputs": tally.inputs,
        "outcomes": tally.outcomes,
        "accepted": dict(tally.accepted),
        "ignored": tally.ignored,
        "events": dict(tally.events),
        "crashes": tally.crashes,
    }


def summary(seed: int, rows: list[Row], serial: FuzzTally, ble: FuzzTally) -> dict[str, object]:
    return {
        "bench": "fuzz",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "seed": seed,
        "rows": [
            {"name": r[0], "n": r[1], "wall_s": r[2], "cpu_s": r[3], "ratio": r[4]} for r in rows
        ],
        "serial_rejected": dict(serial.rejected),
        "ble_rejected": dict(ble.rejected),
        "crashes": serial.crashes + ble.crashes,
        "serial_reasons_known": len(SERIAL_REASONS),
        "ble_reasons_known": len(BLE_REASONS),
        "tallies": {"serial": tally_figures(serial), "ble": tally_figures(ble)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n, seed = args.inputs, args.seed
    rows, serial, ble = measure(n, seed)
    print_report(rows, {"serial": serial, "ble": ble})
    # every line not crashed has exactly one outcome (accepted, rejected or ignored)
    assert serial.outcomes + serial.crashes == serial.inputs == n
    figures = summary(seed, rows, serial, ble)
    print(json.dumps(figures))
    record.save(figures)
    return 1 if figures["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
