"""The board's clock steps by hours (NTP after a long offline spell, a board without an RTC):
the real agent, its wall clock stepped through sleepfed.board.service.clock's test seam while it
ingests a
night over a PTY, neither corrupts that night's windows nor stalls its schedule."""

from __future__ import annotations

import itertools
import random
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sleepfed_tools.replay import PtyLink

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.schedule import ParticipationWindow, still_waiting
from sleepfed.board.nights.tracker import extract_night
from sleepfed.board.service.clock import OFFSET_FILE_ENV
from sleepfed.board.sources.protocol import Kind, Reading, format_reading, parse_line
from tests.support.helpers import agent_status, wait_connected, wait_for, write_agent_config

UTC_ZONE = ZoneInfo("UTC")
NIGHT = "2025-11-24"
START = datetime(2025, 11, 24, 22, 0, tzinfo=UTC).timestamp()
HOURS = 6


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def night_readings(seed: int) -> list[Reading]:
    """Six hours of 30-s epochs: a movement count, three heart rates, a stage label."""
    rng = random.Random(seed)
    readings = []
    for epoch in range(HOURS * 120):
        t = START + 30 * epoch
        asleep = 60 < epoch < HOURS * 120 - 40 and rng.random() > 0.1
        readings.append(Reading(t + 1, Kind.MOV, float(rng.randint(0, 5 if asleep else 80))))
        for k in range(3):
            readings.append(Reading(t + 5 + 10 * k, Kind.HR, rng.uniform(50, 58 if asleep else 80)))
        readings.append(Reading(t + 29, Kind.LBL, float(rng.choice((2, 3, 5)) if asleep else 0)))
    return readings


def windows_of(buffer: Path) -> list[tuple[str, float, list[float], int | None]]:
    reader = Buffer(buffer, readonly=True)
    try:
        return reader.windows()
    finally:
        reader.close()


def extracted_at(buffer: Path) -> float | None:
    with sqlite3.connect(f"file:{buffer}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT extracted_at FROM nights WHERE night = ?", (NIGHT,)).fetchone()
    conn.close()
    return row[0] if row else None


@pytest.mark.slow
def test_clock_steps_neither_corrupt_windows_nor_stall_the_schedule(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    agent_procs: Callable[[Path], object],
) -> None:
    offset_file = tmp_path / "clock-offset"

    def board_clock(moment: float) -> None:  # step the board's wall clock to ``moment``
        offset_file.write_text(repr(moment - time.time()))

    board_clock(at("2025-11-25T01:00:00"))  # in the middle of the night
    monkeypatch.setenv(OFFSET_FILE_ENV, str(offset_file))  # the agent and `status` inherit it

    readings = night_readings(seed=7)
    half = len(readings) // 2
    expected_buffer = tmp_path / "expected.db"
    reference = Buffer(expected_buffer)
    # as the agent sees them: through the line protocol (values to 6 significant digits)
    wire = [parse_line(format_reading(r)[:-1]) for r in readings]
    reference.add_readings([("wrist", r) for r in wire if r is not None])
    extract_night(reference, NIGHT, UTC_ZONE)
    expected = reference.windows()
    reference.close()
    assert len(expected) >= 30

    buffer = tmp_path / "buffer.db"
    link = PtyLink()
    try:
        config = write_agent_config(
            tmp_path / "agent.toml",
            buffer=buffer,
            ports={"wrist": link.device_path},
            settle_seconds=2,
        )
        proc = agent_procs(config)
        wait_connected(config, timeout=30, between=link.wait, proc=proc)

        def send(part: list[Reading]) -> None:
            link.write(b"".join(format_reading(r) for r in part), timeout=30)
            last = round(part[-1].timestamp * 1000)
            wait_for(
                lambda: link.last_ack and round(link.last_ack[0] * 1000) >= last,
                30,
                0.05,
                "ACK",
                between=link.wait,
            )

        send(readings[:half])
        link.wait(3.0)  # settled, but the night has not ended on the board's clock
        assert extracted_at(buffer) is None

        # forward by 14 hours, past the night's end (noon): the first half is extracted
        board_clock(at("2025-11-25T15:00:00"))
        first = wait_for(lambda: extracted_at(buffer), 15, 0.1, "extraction", between=link.wait)
        partial = windows_of(buffer)
        assert 0 < len(partial) < len(expected)

        # the rest of the night arrives while the clock reads 23:00, and right after its
        # last commit the clock steps back 10 hours (to 13:00, still past the night's end):
        # re-extracted within seconds, as settling runs on the monotonic clock (on the wall
        # clock it would wait 10 hours)
        board_clock(at("2025-11-25T23:00:00"))
        send(readings[half:])
        board_clock(at("2025-11-25T13:00:00"))
        stepped = time.monotonic()
        wait_for(lambda: extracted_at(buffer) != first, 15, 0.1, "re-extraction", between=link.wait)
        assert time.monotonic() - stepped < 10
        # the windows replaced, not added to
        got = windows_of(buffer)
        assert [w[1] for w in got] == [w[1] for w in expected]  # same starts: none duplicated
        assert got == expected  # features and labels as from the undisturbed night
        starts = [w[1] for w in got]
        assert all(b - a == 600 for a, b in itertools.pairwise(starts))
        assert starts[0] >= START - 30 and starts[-1] + 600 <= START + HOURS * 3600 + 30

        # back a day, then the true time again: the daemon keeps running and reports itself
        board_clock(at("2025-11-24T09:00:00"))
        link.wait(1.5)
        offset_file.write_text("0")
        status = wait_for(
            lambda: (s := agent_status(config)) and s["daemon"]["running"] and s,
            15,
            0.2,
            "status: running",
            between=link.wait,
        )
        assert status["buffer"]["nights"] == 1 and status["buffer"]["windows"] == len(expected)
        assert status["accepted"]["lbl"] == HOURS * 120
    finally:
        link.close()


def test_participation_schedule_recovers_from_clock_steps() -> None:
    window = ParticipationWindow.parse("02:00-05:00")
    base = at("2026-03-10T12:00:00")
    rng = random.Random(3)
    for _ in range(2000):
        now = base + rng.uniform(-3, 3) * 86_400  # any step, forwards or backwards
        current = window.current(now, UTC_ZONE)
        if current is None:
            start = window.next_start(now, UTC_ZONE)
            assert now < start <= now + 86_400  # the next window is within a day
        else:
            assert current[0] <= now < current[1] and current[1] - current[0] == 3 * 3600
    # a refusal's wait set before the clock stepped back by hours does not last for hours
    refused_until = base + 3600
    assert still_waiting(refused_until, base, 3600) is True
    assert still_waiting(refused_until, base + 3601, 3600) is False
    assert still_waiting(refused_until, base - 5 * 3600, 3600) is False
