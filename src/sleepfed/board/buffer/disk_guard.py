"""Room on the buffer's disk: the size cap, ``buffer.min_free_mb`` and the reserve file.

Both limits first remove the quarantined copies of a corrupt buffer
(``<buffer>.corrupt-<time>``, sleepfed.board.buffer.buffer_recovery: they count against the
cap), oldest first, then evict the same way (one loop, ``evict_oldest``): the oldest raw
readings, a chunk per transaction, counted as ``evicted_readings``; stage labels, night
reports, windows, models and predictions stay. The SQL is the buffer's
(sleepfed.board.buffer.store).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from sleepfed.board.buffer.connection import WAL_SIZE_LIMIT_BYTES
from sleepfed.board.buffer.store import Buffer
from sleepfed.common.sqlite_recovery import quarantined_files

log = logging.getLogger("sleepfed.agent")

# Held beside the buffer (``<buffer>.reserve``) and given up when the disk is full: evicting
# needs room even on a full disk. Deleting rows writes to the WAL, and the checkpoint that
# gives the space back first copies the WAL's pages into the file, which may grow it by up
# to the WAL's size (1 MB): with a reserve of just that size evicting could still fail (seen
# in tests/faults/test_faults_disk.py), so it holds twice that.
RESERVE_BYTES = 2 * WAL_SIZE_LIMIT_BYTES
CAP_CHUNK_ROWS = 20_000
FREE_CHUNK_ROWS = 5000
_DISK_FULL = {"ERROR_CLASS": "disk_full"}


def evict_oldest(
    buffer: Buffer,
    enough: Callable[[], bool],
    chunk_rows: int,
    after_chunk: Callable[[], None] = lambda: None,
) -> int:
    """Evict the oldest raw readings, ``chunk_rows`` per transaction, until ``enough()`` or
    no raw reading is left. Returns the rows evicted; raises sqlite3.Error if evicting
    cannot write."""
    evicted = 0
    while not enough():
        rows = buffer.evict_oldest_readings(chunk_rows)
        if rows == 0:
            break
        evicted += rows
        after_chunk()
    return evicted


def enforce_cap(buffer: Buffer, chunk_rows: int = CAP_CHUNK_ROWS) -> int:
    """Evict until the buffer's used size is under its cap (``buffer.max_bytes``, if any)."""
    cap = buffer.max_bytes
    if not cap:
        return 0
    evicted = evict_oldest(buffer, lambda: buffer.used_bytes() <= cap, chunk_rows)
    if evicted:
        buffer.release_free_pages()
    return evicted


def free_bytes(path: Path) -> int:
    """Bytes free for us on the filesystem holding ``path``."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class DiskGuard:
    """Keeps ``min_free_bytes`` free on the buffer's disk, the cap, and the reserve file."""

    def __init__(
        self, buffer: Buffer, min_free_bytes: int, reserve_bytes: int = RESERVE_BYTES
    ) -> None:
        self.buffer = buffer
        self.min_free_bytes = min_free_bytes
        self.reserve_bytes = reserve_bytes

    @property
    def reserve_path(self) -> Path:
        return self.buffer.path.with_name(self.buffer.path.name + ".reserve")

    def free_bytes(self) -> int:
        return free_bytes(self.buffer.path.parent)

    def keep_reserve(self) -> bool:
        """Hold ``reserve_bytes`` of the disk in ``<buffer>.reserve``; False if there is no
        room for it (it is then retried later)."""
        path = self.reserve_path
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size >= self.reserve_bytes:
                return True
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            self.release_reserve()  # never hold half a reserve
            return False
        return True

    def release_reserve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.reserve_path.unlink()

    def quarantined_bytes(self) -> int:
        return sum(_size(file) for file in quarantined_files(self.buffer.path))

    def drop_quarantined(self, enough: Callable[[], bool]) -> int:
        """Remove quarantined copies of a corrupt buffer, oldest first (each with its side
        files), until ``enough()``; returns the copies removed."""
        removed = 0
        for file in quarantined_files(self.buffer.path):
            if enough():
                break
            if file.name.endswith(("-wal", "-shm", "-journal")):
                continue  # removed with their file
            sides = [file.with_name(file.name + s) for s in ("", "-wal", "-shm", "-journal")]
            size = sum(_size(side) for side in sides)
            for side in sides:
                side.unlink(missing_ok=True)
            removed += 1
            log.warning(
                "removed the quarantined buffer %s (%.1f MB) to make room",
                file.name,
                size / 1e6,
                extra=_DISK_FULL,
            )
        return removed

    def check_cap(self) -> int:
        """Keep the buffer and its quarantined copies under the cap: the copies go first,
        then the oldest raw readings; returns the rows evicted."""
        cap = self.buffer.max_bytes
        if cap and quarantined_files(self.buffer.path):
            used = self.buffer.used_bytes
            self.drop_quarantined(lambda: used() + self.quarantined_bytes() <= cap)
        evicted = enforce_cap(self.buffer)
        if evicted:
            log.warning("buffer over cap: evicted %d oldest raw readings", evicted)
        return evicted

    def make_room(self, emergency: bool) -> bool:
        """Keep ``min_free_bytes`` free by evicting the oldest raw readings. ``emergency``
        (a write failed: disk full) first gives up the reserve file so that evicting itself
        can write. Returns whether it evicted anything."""
        free = self.free_bytes()
        if not emergency and free >= self.min_free_bytes:
            if not self.reserve_path.exists() and free >= 2 * self.reserve_bytes:
                self.keep_reserve()
            return False
        if emergency:
            self.release_reserve()
        # room for the reserve too, when it has to be made again
        target = self.min_free_bytes
        if not self.reserve_path.exists():
            target += self.reserve_bytes
        enough = lambda: self.free_bytes() >= target  # noqa: E731
        if self.drop_quarantined(enough) and enough():
            self.keep_reserve()
            return True
        try:
            evicted = self._evict_for_free_space(target)
        except sqlite3.Error as error:
            if self.reserve_path.exists():
                # Evicting writes too (its checkpoint may grow the file first): on a disk that
                # ingest alone filled it needs the reserve as much as a failed commit does.
                log.warning(
                    "disk full: evicting could not write (%s); giving up the reserve",
                    error,
                    extra=_DISK_FULL,
                )
                return self.make_room(emergency=True)
            log.error("disk full: could not evict (%s)", error, extra=_DISK_FULL)
            return False
        if evicted:
            log.warning(
                "disk low: evicted %d oldest raw readings, %.1f MB free now",
                evicted,
                self.free_bytes() / 1e6,
                extra=_DISK_FULL,
            )
        if not self.keep_reserve():
            log.warning("disk full: no room for the buffer's reserve file", extra=_DISK_FULL)
        return evicted > 0

    def _evict_for_free_space(self, min_free_bytes: int) -> int:
        """Evict until the filesystem has ``min_free_bytes`` free, giving the freed pages
        back to it after each chunk."""
        self.buffer.shrink()
        return evict_oldest(
            self.buffer,
            lambda: self.free_bytes() >= min_free_bytes,
            FREE_CHUNK_ROWS,
            after_chunk=self.buffer.shrink,
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
