"""A full disk under the real agent: its buffer lives on a small tmpfs made by the test.

1. The agent ingests far more than the disk holds: it keeps ``buffer.min_free_mb`` free by
   evicting the oldest raw readings (counted), keeps stage labels, windows and models, and
   every reading it acknowledged is either stored or counted as evicted.
2. Another file eats the disk's last byte: the next commit fails with SQLITE_FULL; the agent
   gives up its reserve file, evicts, commits the held batch and goes on (``buffer_disk_full``
   counted, logged with ERROR_CLASS=disk_full).
3. A runaway process takes every byte the agent frees: once no raw reading is left to evict,
   nothing more is acknowledged, and after ``buffer.unwritable_exit_seconds`` the agent exits
   with status 3 for systemd to restart it. The file is intact; everything acknowledged is
   stored or counted as evicted.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sleepfed_tools.replay import PtyLink

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.sources.protocol import Kind, Reading
from sleepfed.model import logistic as model
from tests.support.helpers import (
    agent_status,
    start_agent,
    stop_agent,
    wait_connected,
    wait_for,
    write_agent_config,
)

DISK_MB = 8
T0_MS = 1_764_000_000_000
STEP_MS = 10


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _free(mount: Path) -> int:
    stat = os.statvfs(mount)
    return stat.f_bavail * stat.f_frsize


def _lines(first_ms: int, count: int) -> bytes:
    return "".join(
        f"SF1,HR,{(first_ms + STEP_MS * k) / 1000:.3f},70\n" for k in range(count)
    ).encode()


def _prefill(buffer: Path) -> None:
    """What must survive: stage labels, a night's windows, a model, a prediction."""
    store = Buffer(buffer)
    try:
        labels = [("wrist", Reading(1_763_900_000.0 + 30 * i, Kind.LBL, 2.0)) for i in range(500)]
        store.add_readings(labels)
        windows = [(1_763_900_000.0 + 600 * i, [0.5] * 12, i % 2) for i in range(40)]
        store.save_night("2025-11-22", 1_763_900_000.0, 1_763_924_000.0, 800, windows, 0.9)
        version = store.save_model(3, "run-1", model.arrays_to_bytes(model.initial_arrays()))
        store.save_prediction("2025-11-22", version, 0.9, "good")
    finally:
        store.close()


def _kept(buffer: Path) -> tuple[int, int, int, int]:
    with sqlite3.connect(f"file:{buffer}?mode=ro", uri=True) as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        kept = (
            one("SELECT COUNT(*) FROM stage_labels"),
            one("SELECT COUNT(*) FROM windows"),
            one("SELECT COUNT(*) FROM models"),
            one("SELECT COUNT(*) FROM predictions"),
        )
    conn.close()
    return kept


@pytest.mark.slow
def test_full_disk_evicts_raw_readings_then_exits_when_unwritable(
    tmp_path: Path, small_disk: Path
) -> None:
    buffer = small_disk / "buffer.db"
    hog = small_disk / "hog"
    _prefill(buffer)
    link = PtyLink()
    config = write_agent_config(  # nights settle late: only the prefilled night is there
        tmp_path / "agent.toml",
        buffer=buffer,
        ports={"wrist": link.device_path},
        settle_seconds=86_400,
    )
    config.write_text(
        config.read_text().replace(
            "[buffer]\n",
            "[buffer]\nmax_mb = 100\nmin_free_mb = 2\nunwritable_exit_seconds = 3\n"
            'synchronous = "normal"\n',
        )
    )
    log_path = tmp_path / "agent.log"
    proc = start_agent(config, log_path)
    next_ms = T0_MS
    try:
        wait_connected(config, timeout=30, between=link.wait, proc=proc)

        def stream(readings: int) -> None:
            nonlocal next_ms
            for _ in range(readings // 1000):
                link.write(_lines(next_ms, 1000), timeout=30)
                next_ms += 1000 * STEP_MS

        def settled() -> tuple[float, int]:
            last = T0_MS + STEP_MS * (readings_sent() - 1)
            wait_for(
                lambda: link.last_ack and round(link.last_ack[0] * 1000) == last,
                30,
                0.1,
                "the last reading acknowledged",
                between=link.wait,
            )
            assert link.last_ack is not None
            return link.last_ack

        def readings_sent() -> int:
            return (next_ms - T0_MS) // STEP_MS

        # 1. far more than the 8 MB disk holds (a reading takes ~40 bytes with its index)
        stream(200_000)
        ack = settled()
        assert ack[1] == readings_sent()  # every reading acknowledged, in order
        status = agent_status(config)
        assert status is not None and status["daemon"]["running"]
        evicted = status["counters"].get("evicted_readings", 0)
        assert evicted > 0
        # acknowledged = stored + evicted (oldest first): nothing silently dropped
        assert status["buffer"]["readings"] + evicted == ack[1]
        assert status["accepted"]["hr"] == ack[1]
        # the agent restores min_free_mb (2 MB) and its reserve within a housekeeping turn or two
        wait_for(
            lambda: _free(small_disk) >= 2 << 20 and (small_disk / "buffer.db.reserve").exists(),
            30,
            0.1,
            "2 MB free and the reserve made again",
            between=link.wait,
        )
        assert _kept(buffer) == (500, 40, 1, 1)

        # 2. another file takes every free byte: the agent's next commit meets SQLITE_FULL
        with hog.open("wb") as file:
            free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
            os.posix_fallocate(file.fileno(), 0, free)
        assert os.statvfs(small_disk).f_bavail == 0
        stream(10_000)
        ack = settled()
        assert ack[1] == readings_sent()
        status = agent_status(config)
        assert status is not None and status["daemon"]["running"]
        assert status["counters"].get("buffer_disk_full", 0) >= 1
        assert status["buffer"]["readings"] + status["counters"]["evicted_readings"] == ack[1]
        assert _kept(buffer) == (500, 40, 1, 1)
        log = log_path.read_text()
        assert "database or disk is full" in log and "readings held, not acknowledged" in log
        assert "disk low: evicted" in log

        # 3. a runaway process keeps taking every byte the agent frees: once no raw reading
        # is left to evict, nothing more is acknowledged and the agent exits with status 3
        def hog_everything() -> int | None:
            stat = os.statvfs(small_disk)
            if stat.f_bavail:
                with hog.open("ab") as file, contextlib.suppress(OSError):
                    size = file.seek(0, os.SEEK_END)
                    os.posix_fallocate(file.fileno(), size, stat.f_bavail * stat.f_frsize)
            return proc.poll()

        hog_everything()
        stream(5_000)
        code = wait_for(hog_everything, 60, 0.01, "the agent to exit", between=link.wait)
        assert code == 3, log_path.read_text()[-2000:]
        link.drain()
        assert link.last_ack is not None
        acked = link.last_ack[1]
        assert acked < readings_sent()  # the last readings were held, not acknowledged
        assert "buffer unwritable for 3s: exiting" in log_path.read_text()
    finally:
        stop_agent(proc, timeout=10)
        link.close()
        hog.unlink(missing_ok=True)
    reader = Buffer(buffer, readonly=True)
    try:
        assert reader.integrity_check() == "ok"
        counters = reader.counters()
        assert reader.counts().readings + counters["evicted_readings"] == acked
    finally:
        reader.close()
    assert _kept(buffer) == (500, 40, 1, 1)
