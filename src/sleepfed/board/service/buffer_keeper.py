"""The daemon's buffer connection through what an SD card does to it.

* **Corrupt** (SQLITE_CORRUPT / NOTADB, at start or from a running buffer): moved aside and
  salvaged into a fresh buffer (sleepfed.board.buffer.buffer_recovery), which the daemon's
  parts are handed at once; collection goes on.
* **Unwritable** (the card remounted read-only, an I/O error, the buffer's folder or file
  gone, no permission): nothing is committed and so nothing acknowledged (the sensor keeps
  its readings), the connection is closed (an open file would keep an unmounted card's file
  system alive), the board reports ``degraded`` with the reason (status, sd_notify STATUS=,
  metrics), and the keeper reopens the buffer by its path every 1, 2, 4 … 30 s until a write
  works again. No exit, no restart loop: restarting cannot make a card writable.

A buffer whose path now names another file (the folder unmounted or replaced) counts as
gone: writing on into the old, unlinked file would lose every reading at the next restart.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from sleepfed.board.buffer.buffer_recovery import open_checked, recover
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.service import clock
from sleepfed.common.sqlite_recovery import is_corrupt

log = logging.getLogger("sleepfed.agent")

RETRY_MAX_SECONDS = 30.0
UNWRITABLE_LOG_SECONDS = 300.0
_UNWRITABLE = {"ERROR_CLASS": "buffer_unwritable"}
# SQLite's primary result codes for a file system that refuses writes or the file itself
_UNWRITABLE_CODES = (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN)


def unwritable_reason(path: Path, error: BaseException | None) -> str | None:
    """Why the buffer at ``path`` cannot be written, in words, or None if ``error`` is not
    about the file system (disk full and corruption have their own handling)."""
    folder = path.parent
    if not folder.is_dir():
        return f"the buffer's folder {folder} does not exist"
    try:
        if read_only(folder):
            return f"the file system of {folder} is read-only"
    except OSError as stat_error:
        return f"the buffer's folder {folder} cannot be read ({stat_error.strerror})"
    if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EIO):
        return f"{folder}: {error.strerror}"
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(error, sqlite3.Error) and code is not None and code & 0xFF in _UNWRITABLE_CODES:
        return f"{path} cannot be written ({error})"
    return None


def read_only(folder: Path) -> bool:
    """Whether ``folder``'s file system refuses writes: mounted read-only, or ext4 after an
    error with ``errors=remount-ro`` (Linux 6.x marks that ``emergency_ro`` in the mount's
    options and keeps ST_RDONLY clear)."""
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return True
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    resolved, best, options = str(folder.resolve()), "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, options = point, fields[3]
    return bool({"ro", "emergency_ro"} & set(options.split(",")))


class BufferKeeper:
    """Opens the buffer, notices when it is unwritable, gone or corrupt, and hands a new
    connection to ``on_new`` when it had to make one."""

    def __init__(
        self, path: Path, synchronous: str, max_bytes: int | None, stop: Callable[[], bool]
    ) -> None:
        self.path = path
        self.options = {"synchronous": synchronous, "max_bytes": max_bytes}
        self.stopping = stop
        self.on_new: Callable[[Buffer], None] = lambda _buffer: None
        self.unwritable: str | None = None  # why writes are held
        self.unwritable_since: float | None = None  # wall clock, for status
        self._inode: tuple[int, int] | None = None
        self._retry_at = 0.0
        self._retry_delay = 1.0
        self._logged_at = 0.0

    # -- opening --------------------------------------------------------------------------
    def open(self) -> Buffer:
        """The buffer (recovered first if corrupt); raises what opening raised."""
        buffer = open_checked(self.path, **self.options)  # type: ignore[arg-type]
        self._remember(buffer)
        return buffer

    def open_waiting(self, waiting: Callable[[str], None]) -> Buffer | None:
        """At start: the buffer, once it can be opened; until then ``waiting(reason)`` each
        second (status, watchdog). None if the daemon is stopped meanwhile."""
        while not self.stopping():
            try:
                buffer = self.open()
            except (sqlite3.OperationalError, OSError) as error:
                reason = unwritable_reason(self.path, error) or f"cannot be opened: {error}"
                self._held(reason)
                while time.monotonic() < self._retry_at and not self.stopping():
                    waiting(reason)
                    time.sleep(min(1.0, max(0.0, self._retry_at - time.monotonic())))
                continue
            self._writable_again()
            return buffer
        return None

    def _remember(self, buffer: Buffer) -> None:
        stat = buffer.path.stat()
        self._inode = (stat.st_dev, stat.st_ino)

    # -- while running --------------------------------------------------------------------
    def write_failed(self, buffer: Buffer, error: sqlite3.Error) -> bool:
        """A write of ``buffer`` failed. True if handled here: corrupt (recovered, and the
        fresh buffer handed over) or unwritable (held until writable); False otherwise."""
        if is_corrupt(error):
            buffer.close()
            try:
                fresh = recover(self.path, str(error), **self.options)  # type: ignore[arg-type]
            except (sqlite3.OperationalError, OSError) as failed:
                self._held(unwritable_reason(self.path, failed) or str(failed))
                return True
            self._remember(fresh)
            self.on_new(fresh)
            return True
        reason = unwritable_reason(self.path, error)
        if reason is None:
            return False
        self._let_go(buffer)
        self._held(reason)
        return True

    @staticmethod
    def _let_go(buffer: Buffer) -> None:
        """Close the connection while writes are held: an open file keeps the card's file
        system (and its read-only error state) alive after it is unmounted to be checked
        and mounted again."""
        buffer.close()

    def gone_since_check(self) -> bool:
        """Whether the buffer's path no longer names the file the agent writes (a stat)."""
        return self._gone() is not None

    def check(self, buffer: Buffer) -> None:
        """Each housekeeping turn: is the buffer's file still the one at its path? When
        writes are held, is it time to try again?"""
        if self.unwritable is None:
            gone = self._gone()
            if gone is None:
                return
            self._let_go(buffer)
            self._held(gone)
        if time.monotonic() < self._retry_at:
            return
        if not self.path.parent.is_dir():  # not made anew on the root file system
            self._held(f"the buffer's folder {self.path.parent} does not exist")
            return
        try:
            fresh = self.open()
        except (sqlite3.OperationalError, OSError) as error:
            self._held(unwritable_reason(self.path, error) or str(error))
            return
        try:
            fresh.set_state(heartbeat_at=clock.now())  # proves a write works
        except sqlite3.Error as error:
            fresh.close()
            self._held(unwritable_reason(self.path, error) or str(error))
            return
        buffer.close()
        self._writable_again()
        self.on_new(fresh)

    def _gone(self) -> str | None:
        try:
            stat = self.path.stat()
        except OSError:
            return unwritable_reason(self.path, None) or f"the buffer {self.path} is gone"
        if (stat.st_dev, stat.st_ino) != self._inode:
            return f"{self.path} is no longer the file the agent opened (replaced or remounted)"
        return None

    # -- the held state -------------------------------------------------------------------
    def _held(self, reason: str) -> None:
        now = time.monotonic()
        first = self.unwritable is None
        if first:
            self.unwritable_since = clock.now()
            self._retry_delay = 1.0
        if first or reason != self.unwritable or now - self._logged_at >= UNWRITABLE_LOG_SECONDS:
            log.error(
                "buffer unwritable: %s; nothing is committed or acknowledged until it is "
                "writable again (retrying every %.0f s at most)",
                reason,
                RETRY_MAX_SECONDS,
                extra=_UNWRITABLE,
            )
            self._logged_at = now
        self.unwritable = reason
        self._retry_at = now + self._retry_delay
        self._retry_delay = min(RETRY_MAX_SECONDS, self._retry_delay * 2)

    def _writable_again(self) -> None:
        if self.unwritable is not None:
            since = self.unwritable_since or clock.now()
            log.warning(
                "buffer writable again after %.0f s (was: %s)", clock.now() - since, self.unwritable
            )
        self.unwritable = self.unwritable_since = None
