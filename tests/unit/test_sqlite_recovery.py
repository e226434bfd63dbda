"""Salvaging a corrupt SQLite file (sleepfed.common.sqlite_recovery) and the board's use of
it (sleepfed.board.buffer.buffer_recovery, sleepfed.board.service.buffer_keeper), on real
files damaged the way a card damages them: garbage over pages."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from pathlib import Path

from sleepfed.board.buffer.buffer_recovery import open_checked
from sleepfed.board.buffer.disk_guard import DiskGuard
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.service.buffer_keeper import BufferKeeper
from sleepfed.board.sources.protocol import Kind, Reading
from sleepfed.common.sqlite_recovery import QUARANTINE_INFIX, quarantine, salvage_into

READINGS = 20_000


def _board_buffer(path: Path) -> Buffer:
    buffer = Buffer(path)
    batch = [
        ("wrist", Reading(1_764_000_000 + i * 0.5, Kind.HR, 60 + i % 30)) for i in range(READINGS)
    ]
    buffer.add_readings(batch, {"accepted_hr": READINGS})
    buffer.shrink()  # everything in the main file, as after a checkpoint
    return buffer


def _garbage(path: Path, page: int, pages: int = 2) -> None:
    with path.open("r+b") as file:
        file.seek(page * 4096 + 100)
        file.write(random.Random(page).randbytes(pages * 4096))


def test_debian_12s_sqlite3_recover_cannot_read_pages_here(tmp_path: Path) -> None:
    """Why the salvage is ours: the system SQLite lacks the sqlite_dbpage table that SQLite's
    recovery reads pages through, and Debian 12's shell's ``.recover`` fails on any file."""
    db = tmp_path / "x.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (a)")
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_dbpage").fetchone()
            has_dbpage = True
        except sqlite3.OperationalError as error:
            has_dbpage = "no such table" not in str(error)
    conn.close()
    assert not has_dbpage, sqlite3.sqlite_version
    shell = subprocess.run(["sqlite3", str(db), ".recover"], capture_output=True, text=True)
    assert "SQL logic error" in shell.stderr + shell.stdout, (shell.stdout, shell.stderr)


def test_salvage_steps_over_damaged_pages_and_invents_nothing(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    _board_buffer(path).close()
    original = {row[0]: row for row in sqlite3.connect(path).execute("SELECT * FROM readings")}
    pages = path.stat().st_size // 4096
    _garbage(path, pages // 3)
    _garbage(path, 2 * pages // 3)
    quarantined = quarantine(path, now=0)
    assert quarantined.name == f"buffer.db{QUARANTINE_INFIX}19700101T000000Z"
    fresh = Buffer(path)
    salvage = salvage_into(quarantined, fresh.conn, ["readings", "counters"], at=0)
    rows = fresh.conn.execute("SELECT * FROM readings").fetchall()
    print(f"\nsalvaged {len(rows)} of {READINGS} readings, {salvage.damaged}")
    assert salvage.damaged["readings"] >= 1
    assert 0.95 * READINGS <= len(rows) < READINGS
    assert all(original.get(row[0]) == row for row in rows)  # nothing invented
    assert salvage.salvaged == {"readings": len(rows), "counters": 1}


def test_a_file_that_is_not_sqlite_salvages_nothing_and_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "buffer.db"
    bad.write_bytes(os.urandom(5000))
    fresh = Buffer(tmp_path / "fresh.db")
    salvage = salvage_into(bad, fresh.conn, ["readings"], at=0)
    assert salvage.salvaged == {} and "file is not a database" in str(salvage.problem)


def test_a_running_buffer_that_turns_corrupt_is_recovered_and_the_batch_commits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.db"
    keeper = BufferKeeper(path, "full", None, lambda: False)
    handed: list[Buffer] = []
    keeper.on_new = handed.append
    _board_buffer(path).close()
    buffer = keeper.open()
    buffer.conn.execute("PRAGMA cache_size = 10")  # pages are read from the file again
    _garbage(path, path.stat().st_size // 4096 // 2)
    try:
        buffer.counts()
        raise AssertionError("the damage was not read")
    except sqlite3.DatabaseError as error:
        assert keeper.write_failed(buffer, error)
    assert len(handed) == 1 and keeper.unwritable is None
    fresh = handed[0]
    assert fresh.counts().readings >= 0.95 * READINGS
    record = fresh.board_state().buffer_recovered
    assert record is not None and record["readings_lost"] == READINGS - fresh.counts().readings
    assert (tmp_path / record["quarantined"]).exists()
    fresh.add_readings([("wrist", Reading(1_765_000_000.0, Kind.HR, 70))], {"accepted_hr": 1})
    assert fresh.integrity_check() == "ok"
    assert fresh.counters()["buffer_recovered"] == 1


def test_a_buffer_opened_with_a_damaged_page_is_recovered_at_once(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    _board_buffer(path).close()
    _garbage(path, path.stat().st_size // 4096 // 2)
    buffer = open_checked(path)  # quick_check finds what opening alone does not
    assert buffer.integrity_check() == "ok"
    assert buffer.board_state().buffer_recovered is not None


def test_quarantined_copies_are_the_first_thing_the_cap_removes(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = _board_buffer(path)
    for name in ("buffer.db.corrupt-20260101T000000Z", "buffer.db.corrupt-20260101T000000Z-wal"):
        (tmp_path / name).write_bytes(b"\0" * (2 << 20))
    newer = tmp_path / "buffer.db.corrupt-20260102T000000Z"
    newer.write_bytes(b"\0" * (1 << 20))
    buffer.max_bytes = buffer.used_bytes() + (3 << 20) // 2  # room for the newer copy only
    assert DiskGuard(buffer, min_free_bytes=1).check_cap() == 0  # no reading evicted
    assert sorted(p.name for p in tmp_path.glob("*corrupt*")) == [newer.name]
    assert buffer.counts().readings == READINGS
