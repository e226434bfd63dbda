"""The replay tool on real data, through a real pseudo-terminal (no mocks)."""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

serial = pytest.importorskip("serial")

from sleepfed_tools.replay import (  # noqa: E402
    PtyLink,
    ReplayStats,
    mmash_night_window,
    mmash_readings,
    reference_efficiency_walch,
    replay,
    walch_readings,
)

from sleepfed.board.sources.protocol import (  # noqa: E402
    VALUE_RANGES,
    Kind,
    format_ack,
    format_reading,
    parse_line,
)
from sleepfed.model.walch import walch_subjects  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("SLEEPFED_DATA", REPO.parent / "shared" / "data"))
WALCH = DATA / "walch2019"
MMASH = DATA / "mmash"
NIGHT_START = 1_700_000_000.0

needs_walch = pytest.mark.skipif(
    not (WALCH.is_dir() and any(WALCH.glob("*_psg_labels.out"))),
    reason=f"Walch 2019 data not found under {DATA} (set SLEEPFED_DATA)",
)
needs_mmash = pytest.mark.skipif(
    not (MMASH / "user_1" / "RR.csv").exists(),
    reason=f"MMASH data not found under {DATA} (set SLEEPFED_DATA)",
)


def _column(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()]


def _parse_all(lines: list[bytes]) -> list:
    parsed = [parse_line(line.rstrip(b"\n")) for line in lines]
    assert all(p is not None for p in parsed)
    return parsed


@needs_walch
def test_walch_subject_lines() -> None:
    subject = walch_subjects(WALCH)[0]
    counts = _column(WALCH / f"{subject}_count_feature.out")
    stages = _column(WALCH / f"{subject}_psg_labels.out")
    n_epochs = len(counts)

    started = time.perf_counter()
    readings = list(walch_readings(WALCH, subject, NIGHT_START))
    assert time.perf_counter() - started < 1.0

    parsed = _parse_all([format_reading(r) for r in readings])
    timestamps = [p.timestamp for p in parsed]
    assert all(b > a for a, b in itertools.pairwise(timestamps))
    assert timestamps[0] >= NIGHT_START

    labels = [p for p in parsed if p.kind is Kind.LBL]
    assert len(labels) == n_epochs == sum(1 for s in stages if s >= 0)
    assert [p.value for p in labels] == [float(round(s)) for s in stages]
    # MOV values: exactly count_feature before formatting, %.6g after it.
    movs = [r for r in readings if r.kind is Kind.MOV]
    assert [r.value for r in movs] == counts
    assert [p.value for p in parsed if p.kind is Kind.MOV] == [float(f"{c:.6g}") for c in counts]
    assert not any(p.kind is Kind.LUX for p in parsed)
    # One MOV per epoch, in its own epoch; six identical HR per epoch, RR consistent with it.
    for p in (p for p in parsed if p.kind is not Kind.LBL):
        low, high = VALUE_RANGES[p.kind]
        assert low <= p.value <= high
    epoch_of = lambda r: int((r.timestamp - NIGHT_START) // 30)  # noqa: E731
    assert [epoch_of(r) for r in movs] == list(range(n_epochs))
    hrs = [r for r in readings if r.kind is Kind.HR]
    rrs = [r for r in readings if r.kind is Kind.RR]
    assert len(hrs) == len(rrs) == 6 * n_epochs
    for hr, rr in zip(hrs, rrs, strict=True):
        assert rr.value == pytest.approx(60000.0 / hr.value)

    efficiency = reference_efficiency_walch(WALCH, subject)
    assert efficiency == pytest.approx(sum(1 for s in stages if s > 0) / n_epochs)


def _recording_second(day: str, clock: str) -> int:
    d = 2 if int(day) == -29 else int(day)
    h, m, s = (int(x) for x in clock.split(":"))
    return (d - 1) * 86400 + h * 3600 + m * 60 + s


@needs_mmash
def test_mmash_user_1_night_only() -> None:
    start, end = mmash_night_window(MMASH, "user_1")
    # sleep.csv: in bed day 2 00:46 .. out day 2 07:30, padded by 30 min.
    assert (start, end) == (86400 + 16 * 60, 86400 + 8 * 3600)

    stats = ReplayStats()
    readings = list(mmash_readings(MMASH, "1", NIGHT_START, stats))
    parsed = _parse_all([format_reading(r) for r in readings])
    timestamps = [p.timestamp for p in parsed]
    assert timestamps[0] == pytest.approx(NIGHT_START)
    assert all(b > a for a, b in itertools.pairwise(timestamps))
    assert timestamps[-1] - timestamps[0] < end - start

    rr_low, rr_high = VALUE_RANGES[Kind.RR]
    rrs = [p.value for p in parsed if p.kind is Kind.RR]
    assert rrs and all(rr_low <= v <= rr_high for v in rrs)
    assert {p.kind for p in parsed} == {Kind.RR, Kind.MOV, Kind.HR}

    # Exactly the night window's rows, counted independently from the CSV files.
    with (MMASH / "user_1" / "Actigraph.csv").open(newline="") as handle:
        night_rows = [
            row
            for row in csv.DictReader(handle)
            if start <= _recording_second(row["day"], row["time"]) < end
        ]
    with (MMASH / "user_1" / "RR.csv").open(newline="") as handle:
        night_beats = [
            float(row["ibi_s"]) * 1000.0
            for row in csv.DictReader(handle)
            if start <= _recording_second(row["day"], row["time"]) < end
        ]
    assert sum(1 for p in parsed if p.kind is Kind.MOV) == len(night_rows)
    assert len(rrs) + stats.skipped.get("rr_out_of_range", 0) == len(night_beats)
    assert len(rrs) == sum(1 for v in night_beats if rr_low <= v <= rr_high)
    # Clock offsets are kept: MOV readings sit exactly as far apart as their rows.
    row_seconds = [_recording_second(r["day"], r["time"]) for r in night_rows]
    mov_times = [r.timestamp for r in readings if r.kind is Kind.MOV]
    offsets = [t - mov_times[0] for t in mov_times]
    assert offsets == pytest.approx([s - row_seconds[0] for s in row_seconds], abs=1e-6)
    assert 0 <= mov_times[0] - NIGHT_START < 1.0


def _read_lines(port, expected: int, timeout: float = 20.0) -> list[bytes]:
    buffer = b""
    deadline = time.monotonic() + timeout
    while buffer.count(b"\n") < expected and time.monotonic() < deadline:
        buffer += port.read(4096)
    return buffer.splitlines()


@needs_walch
def test_pty_round_trip() -> None:
    subject = walch_subjects(WALCH)[0]
    link = PtyLink()
    try:
        port = serial.Serial(link.device_path, timeout=0.2)
        try:
            sent: list[int] = []
            writer = threading.Thread(
                target=lambda: sent.append(
                    replay(
                        walch_readings(WALCH, subject, NIGHT_START),
                        link.write,
                        5000.0,
                        drain=link.drain,
                        limit=500,
                        with_checksum=True,
                    )
                ),
                daemon=True,
            )
            started = time.monotonic()
            writer.start()
            lines = _read_lines(port, 500)
            writer.join(10)
            assert time.monotonic() - started >= 0.08  # paced at 5000 readings/s
            assert sent == [500]
            parsed = _parse_all(lines)
            assert len(parsed) == 500
            expected = list(walch_readings(WALCH, subject, NIGHT_START))[:500]
            assert [p.kind for p in parsed] == [r.kind for r in expected]
            assert [p.timestamp for p in parsed] == pytest.approx([r.timestamp for r in expected])

            last = parsed[-1].timestamp
            port.write(format_ack(last, 500))
            port.flush()
            deadline = time.monotonic() + 5
            while link.last_ack is None and time.monotonic() < deadline:
                link.wait(0.05)
            assert link.last_ack == (pytest.approx(last), 500)
        finally:
            port.close()
        # The device path stays valid after the reader closes it.
        assert os.path.exists(link.device_path)
        serial.Serial(link.device_path, timeout=0.1).close()
    finally:
        link.close()


def test_wait_opened_waits_for_another_process_to_open_the_pty() -> None:
    """--wait-open starts sending when the agent opens the device, not after a fixed time
    (seen in CI: a fixed 60 s wait outlasted a whole federation round, so a fault test saw
    no readings at all)."""
    with PtyLink() as link:
        started = time.monotonic()
        assert link.wait_opened(0.5) is False  # this process's own descriptors do not count
        assert 0.5 <= time.monotonic() - started < 2.0
        opener = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"f = open({link.device_path!r}, 'rb'); import time; "
                "print('open', flush=True); time.sleep(30)",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert opener.stdout is not None and opener.stdout.readline() == b"open\n"
            started = time.monotonic()
            assert link.wait_opened(20, settle=0.2) is True
            assert 0.2 <= time.monotonic() - started < 5.0
        finally:
            opener.kill()
            opener.wait()


@needs_walch
def test_cli_pty_end_to_end() -> None:
    subject = walch_subjects(WALCH)[0]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sleepfed_tools.replay",
            "--data",
            str(WALCH),
            "--subject",
            subject,
            "--pty",
            "--wait-open",
            "1.5",
            "--rate",
            "0",
            "--limit",
            "300",
            "--night-start",
            str(NIGHT_START),
            "--linger",
            "1.5",
            "--checksum",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode().strip()
        assert first.startswith("PTY /dev/")
        port = serial.Serial(first.split(" ", 1)[1], timeout=0.2)
        try:
            lines = _read_lines(port, 300)
            parsed = _parse_all(lines)
            assert len(parsed) == 300
            port.write(format_ack(parsed[-1].timestamp, 300))
            port.flush()
        finally:
            port.close()
        rest = proc.stdout.read()  # the buffered reader may already hold the note line
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = rest.decode()
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert "note: walch2019 has no light channel; no LUX readings emitted" in text
    summary = text.strip().splitlines()[-1]
    assert summary.startswith(f"replayed 300 readings of walch subject {subject} (skipped 0)")
    assert summary.endswith(f"last ACK ts={parsed[-1].timestamp:.3f} count=300")
