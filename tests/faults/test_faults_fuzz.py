"""Fuzzing the real parsers (tests/support/fuzzing.py): seeded, mutated and random serial lines and
BLE payloads never crash a parser, and each ends as one counted outcome. The million-input
run is ``benchmarks/bench_fuzz.py``; here 100,000 of each, and 20,000 lines through the real
daemon over a PTY, whose rejection counters must match the parser's verdicts exactly."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sleepfed_tools.replay import PtyLink

from tests.support.fuzzing import BLE_REASONS, SERIAL_REASONS, fuzz_ble, fuzz_serial, serial_stream
from tests.support.helpers import agent_status, wait_connected, wait_for, write_agent_config

N = int(os.environ.get("SLEEPFED_FUZZ_INPUTS", "100000"))
SEED = random.randrange(1 << 30)


def test_fuzzed_serial_lines_never_crash_and_are_all_counted() -> None:
    tally = fuzz_serial(N, SEED)
    assert tally.inputs == N
    assert tally.outcomes == N, f"seed={SEED}"  # one outcome per line, none lost
    assert set(tally.rejected) == SERIAL_REASONS, f"seed={SEED}: {tally.rejected}"
    assert sum(tally.accepted.values()) > N // 10
    assert set(tally.accepted) == {"hr", "rr", "mov", "lux", "lbl", "bat"}


def test_fuzzed_ble_payloads_never_crash_and_are_all_counted() -> None:
    tally = fuzz_ble(N, SEED)
    assert tally.inputs == N
    assert set(tally.rejected) == BLE_REASONS, f"seed={SEED}: {tally.rejected}"
    assert set(tally.accepted) == {"hr", "rr", "mov", "lux", "bat"}
    assert tally.events["ble_no_contact"] > 0


@pytest.mark.slow
def test_daemon_counts_every_rejection_by_reason(
    tmp_path: Path, agent_procs: Callable[[Path], subprocess.Popen[bytes]]
) -> None:
    count = 20_000
    expected = fuzz_serial(count, SEED)  # the parser's verdict on each line, in-process
    stream, _ = serial_stream(count, SEED)
    link = PtyLink()
    try:
        config = write_agent_config(
            tmp_path / "agent.toml",
            buffer=tmp_path / "buffer.db",
            ports={"wrist": link.device_path},
            settle_seconds=86_400,
        )
        proc = agent_procs(config)
        wait_connected(config, timeout=30, between=link.wait, proc=proc)
        for start in range(0, len(stream), 4096):
            link.write(stream[start : start + 4096], timeout=30)

        def counted() -> dict | None:
            status = agent_status(config)
            assert status is not None
            done = sum(status["accepted"].values()) + sum(status["rejected"].values())
            return status if done >= expected.outcomes - expected.ignored else None

        status = wait_for(counted, 60, 0.2, "every line counted", between=link.wait)
        link.wait(0.5)  # a late extra count would show now
        status = agent_status(config)
        assert status is not None
    finally:
        link.close()
    assert status["rejected"] == dict(expected.rejected), f"seed={SEED}"
    assert status["accepted"] == dict(expected.accepted), f"seed={SEED}"
    assert status["buffer"]["readings"] + status["buffer"]["stage_labels"] <= sum(
        expected.accepted.values()
    )


def test_a_crashing_parser_is_caught_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzzers can fail: a parser that raises on some lines is reported (raised by
    default, counted by the benchmark's tally), never passed over."""
    from sleepfed.board.sources.serial_source import SerialSource
    from tests.support.fuzzing import FuzzTally

    real = SerialSource._handle

    def fragile(line: bytes) -> object:
        if b"HR" in line and line.endswith(b"0"):
            raise ZeroDivisionError("planted")
        return real(line)

    monkeypatch.setattr(SerialSource, "_handle", staticmethod(fragile))
    with pytest.raises(AssertionError, match=r"serial parser crashed on .*planted"):
        fuzz_serial(2_000, 1)
    counted = fuzz_serial(2_000, 1, FuzzTally(raise_on_crash=False))
    assert counted.crashes > 0 and len(counted.crash_examples) == min(counted.crashes, 5)
    assert counted.outcomes + counted.crashes == counted.inputs == 2_000
