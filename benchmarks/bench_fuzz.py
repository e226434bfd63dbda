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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sleepfed.board.sources.ble_source import BleDeviceConfig, BleSource, DeviceLink  # noqa: E402
from sleepfed.board.sources.serial_source import SerialSource  # noqa: E402
from tests.support.fuzzing import FuzzTally, _valid_line, _valid_payload, fuzz_ble, fuzz_serial  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n, seed = args.inputs, args.seed
    base_n = max(n // 10, 1000)
    rows = []
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

    print(f"{'':44} {'inputs':>9} {'wall s':>7} {'CPU s':>7} {'per CPU s':>10} {'ratio':>6}")
    for name, count, wall, cpu, ratio in rows:
        print(f"{name:44} {count:9d} {wall:7.2f} {cpu:7.2f} {count / cpu:10.0f} {ratio:6.2f}")
    tallies: dict[str, FuzzTally] = {"serial": serial, "ble": ble}
    for name, tally in tallies.items():
        print(
            f"{name}: {tally.inputs} inputs, accepted {dict(tally.accepted)}, "
            f"ignored {tally.ignored}, events {dict(tally.events)}"
        )
        print(f"{name}: rejected by reason {dict(sorted(tally.rejected.items()))}")
    crashes = serial.crashes + ble.crashes
    for example in serial.crash_examples + ble.crash_examples:
        print(f"CRASH {example}")
    # every line not crashed has exactly one outcome (accepted, rejected or ignored)
    assert serial.outcomes + serial.crashes == serial.inputs == n
    print(
        json.dumps(
            {
                "bench": "fuzz",
                "machine": platform.machine(),
                "python": platform.python_version(),
                "seed": seed,
                "rows": [
                    {"name": r[0], "n": r[1], "wall_s": r[2], "cpu_s": r[3], "ratio": r[4]}
                    for r in rows
                ],
                "serial_rejected": dict(serial.rejected),
                "ble_rejected": dict(ble.rejected),
                "crashes": crashes,
            }
        )
    )
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
