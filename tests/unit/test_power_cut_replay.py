"""The power-cut model of tests/support/power_cut_replay.py (what a cut leaves of the writes
recorded by tests/support/power_cut_fs.py), and the recording mount itself."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.support.power_cut_fs import (
    CREATE,
    FSYNC,
    FSYNCDIR,
    RENAME,
    TRUNCATE,
    UNLINK,
    WRITE,
    Op,
    PowerCutMount,
    read_log,
)
from tests.support.power_cut_replay import Disk, cut_states, unsynced_after


def _ops(*specs: tuple[int, str, int, bytes]) -> list[Op]:
    return [Op(seq, float(seq), *spec) for seq, spec in enumerate(specs, start=1)]


def test_a_cut_keeps_what_was_fsynced_and_drops_the_rest() -> None:
    ops = _ops(
        (CREATE, "/a", 0, b""),
        (WRITE, "/a", 0, b"hello"),
        (FSYNC, "/a", 0, b""),
        (WRITE, "/a", 5, b" world"),
        (TRUNCATE, "/a", 2, b""),
        (CREATE, "/b", 0, b""),
        (WRITE, "/b", 0, b"unsynced"),
    )
    states = {
        s.op.seq: s.files
        for s in cut_states({}, ops, {1, 2, 3, 7}, random.Random(0))
        if s.mode == "dropped"
    }
    hello = {"/a": b"hello"}
    assert states == {1: {"/a": b""}, 2: {"/a": b""}, 3: hello, 7: {**hello, "/b": b""}}


def test_a_partial_cut_keeps_whole_sectors_of_the_unsynced_writes() -> None:
    ops = _ops((WRITE, "/a", 0, b"x" * 1024), (WRITE, "/a", 1024, b"y" * 512))
    sizes, mixed = set(), 0
    for seed in range(200):
        state = next(cut_states({"/a": b"a" * 1024}, ops, {2}, random.Random(seed)))
        assert state.mode == "dropped" and state.files == {"/a": b"a" * 1024}
        disk = Disk({"/a": b"a" * 1024})
        for op in ops:
            disk.apply(op)
        content = disk.partial(random.Random(seed))["/a"]
        sectors = [content[at : at + 512] for at in range(0, len(content), 512)]
        assert sectors[0] in (b"a" * 512, b"x" * 512) and sectors[1] in (b"a" * 512, b"x" * 512)
        # the third sector: written, or only the size reached the disk, or nothing
        assert sectors[2:] in ([], [b"y" * 512], [bytes(512)])
        sizes.add(len(content))
        mixed += sectors[0] != sectors[1]
    assert sizes == {1024, 1536} and mixed > 0


def test_renames_and_unlinks_move_the_durable_content() -> None:
    ops = _ops(
        (WRITE, "/a", 0, b"new"),
        (RENAME, "/a", 0, b"/c"),
        (FSYNC, "/c", 0, b""),
        (UNLINK, "/b", 0, b""),
        (FSYNCDIR, "/", 0, b""),
    )
    disk = Disk({"/a": b"old", "/b": b"gone"})
    for op in ops:
        disk.apply(op)
    assert disk.dropped() == {"/c": b"new"}
    assert unsynced_after({"/a": b"", "/b": b""}, ops, "/a") == [1]
    assert unsynced_after({"/a": b"", "/b": b""}, ops, "/c") == [2]


@pytest.mark.skipif(
    not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None, reason="no FUSE"
)
def test_the_mount_records_sqlite_in_order_and_serves_its_shared_memory(tmp_path: Path) -> None:
    backing, mount, log = tmp_path / "backing", tmp_path / "mount", tmp_path / "ops.bin"
    backing.mkdir()
    with PowerCutMount(backing, mount, log):
        conn = sqlite3.connect(mount / "x.db", isolation_level=None)
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (v)")
        for value in range(20):
            conn.execute("INSERT INTO t VALUES (?)", (value,))
        other = sqlite3.connect(mount / "x.db")  # a second connection: the -shm, mapped
        assert other.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 20
        other.close()
        with open(mount / "plain", "wb") as plain:
            plain.write(b"unsynced")
        conn.close()
    ops = read_log(log)
    assert [op.seq for op in ops] == list(range(1, len(ops) + 1))
    assert all(not op.path.endswith("-shm") for op in ops)
    wal = [op.kind for op in ops if op.path == "/x.db-wal"]
    assert wal.count(FSYNC) >= 20 and wal[0] == CREATE  # a commit, an fsync
    assert ops[-1].kind == UNLINK and ops[-1].path == "/x.db-wal"  # the last close
    disk = Disk({})
    for op in ops:
        disk.apply(op)
    assert disk.dropped()["/plain"] == b""
    assert os.path.getsize(backing / "plain") == len(b"unsynced")  # the backing has it all
