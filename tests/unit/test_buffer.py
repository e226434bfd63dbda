"""The SQLite buffer, on real files in tmp_path."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from sleepfed.board.buffer.connection import BufferError
from sleepfed.board.buffer.disk_guard import enforce_cap
from sleepfed.board.buffer.schema import SCHEMA_VERSION
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.sources.protocol import Kind, Reading

T0 = 1_764_000_000.0
TABLES = {
    "readings",
    "personal_models",
    "stage_labels",
    "night_reports",
    "nights",
    "windows",
    "models",
    "predictions",
    "counters",
    "state",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_private_even_with_open_umask(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "buffer.db"
    old = os.umask(0)
    try:
        buffer = Buffer(path)
        buffer.add_readings([("s", Reading(T0, Kind.HR, 60.0))], {"accepted_hr": 1})
        wal = path.with_name("buffer.db-wal")
        shm = path.with_name("buffer.db-shm")
        assert mode(path) == 0o600
        assert wal.exists()  # open connection in WAL mode after a commit
        assert mode(wal) == 0o600
        if shm.exists():
            assert mode(shm) == 0o600
        buffer.close()
    finally:
        os.umask(old)
    assert mode(path) == 0o600


def test_wal_and_schema_version_and_idempotent_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = Buffer(path)
    assert buffer.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert buffer.schema_version() == SCHEMA_VERSION == 3
    assert buffer.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert buffer.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    buffer.add_readings([("s", Reading(T0 + i, Kind.HR, 60.0 + i)) for i in range(10)])
    buffer.add_night_report("2026-11-24", "good")
    buffer.close()

    for _ in range(3):
        again = Buffer(path, synchronous="normal")
        names = {
            r[0] for r in again.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert names == TABLES
        assert again.schema_version() == SCHEMA_VERSION
        assert again.counts().readings == 10
        assert again.night_reports() == {"2026-11-24": "good"}
        assert again.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        again.close()
    # a plain sqlite3 connection sees the same file state
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 10


def test_bad_synchronous_mode_refused(tmp_path: Path) -> None:
    with pytest.raises(BufferError, match="synchronous"):
        Buffer(tmp_path / "b.db", synchronous="off")
    assert not (tmp_path / "b.db").exists()


def test_readonly_needs_existing_file(tmp_path: Path) -> None:
    with pytest.raises(BufferError, match="no buffer"):
        Buffer(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_add_readings_commits_rows_and_counters_together(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = Buffer(path)
    batch = [("wrist", Reading(T0 + i, Kind.HR, 60.0)) for i in range(5)]
    batch += [("wrist", Reading(T0 + 5 + i, Kind.LBL, 2.0)) for i in range(3)]
    assert buffer.add_readings(batch, {"accepted_hr": 5, "accepted_lbl": 3}) == 8

    reader = Buffer(path, readonly=True)  # another connection sees the committed batch
    counts = reader.counts()
    assert (counts.readings, counts.stage_labels) == (5, 3)
    assert reader.counters() == {"accepted_hr": 5, "accepted_lbl": 3}
    assert reader.labels_between(T0, T0 + 100) == [(T0 + 5 + i, 2) for i in range(3)]

    # A batch whose counter update fails rolls back its readings too.
    bad = [("wrist", Reading(T0 + 100 + i, Kind.MOV, 1.0)) for i in range(7)]
    with pytest.raises(ValueError):
        buffer.add_readings(bad, {"accepted_mov": "seven"})  # type: ignore[dict-item]
    assert reader.counts().readings == 5
    assert buffer.counts().readings == 5
    assert reader.counters() == {"accepted_hr": 5, "accepted_lbl": 3}
    assert not buffer.conn.in_transaction

    # ... and the buffer is still usable afterwards; counters add up.
    buffer.add_readings(bad, {"accepted_mov": 7, "accepted_hr": 1})
    assert reader.counts().readings == 12
    assert reader.counters() == {"accepted_hr": 6, "accepted_lbl": 3, "accepted_mov": 7}
    reader.close()
    buffer.close()


def _fill_other_tables(buffer: Buffer) -> dict[str, int]:
    buffer.add_readings([("s", Reading(T0 + 30 * i, Kind.LBL, float(i % 6))) for i in range(500)])
    windows = [(T0 + 600 * i, [0.1 * i] * 12, i % 2) for i in range(40)]
    buffer.save_night("2026-11-24", T0, T0 + 24_000, 800, windows, 0.9)
    version = buffer.save_model(3, "run-1", b"\x00" * 50_000)
    buffer.save_prediction("2026-11-24", version, 0.9, "good")
    buffer.add_night_report("2026-11-24", "good")
    return _other_counts(buffer)


def _other_counts(buffer: Buffer) -> dict[str, int]:
    tables = ["stage_labels", "windows", "models", "predictions", "nights", "night_reports"]
    return {t: buffer.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def test_size_cap_evicts_oldest_raw_readings_only(tmp_path: Path) -> None:
    n = 300_000
    buffer = Buffer(tmp_path / "buffer.db", synchronous="normal")
    others = _fill_other_tables(buffer)
    assert others == {
        "stage_labels": 500,
        "windows": 40,
        "models": 1,
        "predictions": 1,
        "nights": 1,
        "night_reports": 1,
    }
    kinds = (Kind.HR, Kind.RR, Kind.MOV)
    # ids follow insertion order; timestamps increase with it
    for start in range(0, n, 100_000):
        buffer.add_readings(
            [
                ("s", Reading(T0 + 0.01 * i, kinds[i % 3], 100.0))
                for i in range(start, start + 100_000)
            ]
        )
    assert buffer.counts().readings == n
    before = buffer.used_bytes()

    assert enforce_cap(buffer) == 0  # no cap: nothing happens
    buffer.max_bytes = before // 3
    evicted = enforce_cap(buffer)
    survivors = [r[0] for r in buffer.conn.execute("SELECT ts FROM readings ORDER BY id")]
    assert evicted > 0
    assert evicted + len(survivors) == n
    assert 0 < len(survivors) < n * 2 // 3
    # exactly the newest readings survive, in order
    expected = [T0 + 0.01 * i for i in range(n - len(survivors), n)]
    assert survivors == expected
    assert buffer.used_bytes() <= buffer.max_bytes
    assert buffer.counters()["evicted_readings"] == evicted
    assert _other_counts(buffer) == others
    assert buffer.latest_model()[3] == b"\x00" * 50_000  # type: ignore[index]
    assert buffer.integrity_check() == "ok"

    # A cap below what the kept tables need: every raw reading goes, nothing else does.
    buffer.max_bytes = 1
    assert enforce_cap(buffer) == len(survivors)
    assert buffer.counts().readings == 0
    assert buffer.counters()["evicted_readings"] == n
    assert _other_counts(buffer) == others
    assert enforce_cap(buffer) == 0
    buffer.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    Buffer(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(BufferError, match="99"):
        Buffer(path)
    with pytest.raises(BufferError, match="99"):
        Buffer(path, readonly=True)
    with sqlite3.connect(path) as conn:  # left as it was: no downgrade attempted
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
    conn.close()
