"""A FUSE file system for power-cut tests: a passthrough over a backing folder that records,
in order, every operation that decides what a power cut would leave on a disk.

Each record is (sequence number, ``time.monotonic()``, operation, path, a number, bytes):
create, write (offset, the bytes), truncate (length), fsync (of one file; fdatasync too),
fsyncdir, unlink and rename (the new path as bytes). The time is taken before the operation
returns to the caller, so an fsync's record precedes anything its caller did after it (an
ACK). ``*-shm`` files are passed through but not recorded: SQLite rebuilds the WAL index
when it opens a database after a crash, so their content can never matter.

The mount is single-threaded, so the order of the records is the order in which the kernel
handed over the operations; the kernel writes through (no ``writeback_cache``: the writes
arrive at any offset and length, while the caller waits), so that is the order of the
callers' system calls. ``kernel_cache`` keeps the page cache of a file
across opens: every change comes through this mount, and SQLite's ``-shm``, mapped by
several processes at once, stays one set of pages. The replay of a log into the disk states
a power cut can leave is tests/support/power_cut_replay.py.

``python tests/support/power_cut_fs.py BACKING MOUNTPOINT LOG`` serves in the foreground
until unmounted; :class:`PowerCutMount` runs it as a child process.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

CREATE, WRITE, TRUNCATE, FSYNC, FSYNCDIR, UNLINK, RENAME = range(7)
NAMES = ("create", "write", "truncate", "fsync", "fsyncdir", "unlink", "rename")
# sequence number, monotonic time, operation, offset or length, path bytes, data bytes
HEADER = struct.Struct("<QdBqII")
STAT_KEYS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
TIME_KEYS = ("st_atime", "st_mtime", "st_ctime")


@dataclass(frozen=True)
class Op:
    """One recorded operation (see the module docstring for ``number`` and ``data``)."""

    seq: int
    time: float
    kind: int
    path: str
    number: int
    data: bytes


def read_log(path: Path) -> list[Op]:
    """The operations of a log, in their order."""
    raw = path.read_bytes()
    ops, at = [], 0
    while at < len(raw):
        seq, when, kind, number, path_len, data_len = HEADER.unpack_from(raw, at)
        at += HEADER.size
        name = raw[at : at + path_len].decode()
        at += path_len
        ops.append(Op(seq, when, kind, name, number, raw[at : at + data_len]))
        at += data_len
    return ops


class Recorder:
    """Appends records to the log file; flushed at every fsync, so that the log of a server
    that died still holds every fsync it had answered."""

    def __init__(self, log: BinaryIO) -> None:
        self.log = log
        self.seq = 0

    def __call__(self, kind: int, path: str, number: int = 0, data: bytes = b"") -> None:
        if path.endswith("-shm"):
            return
        encoded = path.encode()
        self.seq += 1
        header = HEADER.pack(self.seq, time.monotonic(), kind, number, len(encoded), len(data))
        self.log.write(header + encoded + data)
        if kind in (FSYNC, FSYNCDIR):
            self.log.flush()


class RecordingPassthrough:
    """The mfusepy operations: every call goes to the same path under ``root``."""

    use_ns = True

    def __init__(self, root: str, record: Recorder) -> None:
        self.root = root
        self.record = record
        self.paths: dict[int, str] = {}  # open descriptor -> the path it was opened as

    def _real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        attrs: dict[str, Any] = {key: getattr(st, key) for key in STAT_KEYS}
        attrs.update({key: getattr(st, key + "_ns") for key in TIME_KEYS})
        return attrs

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise OSError(errno.EACCES, path)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {key: getattr(st, key) for key in (*keys, "f_flag", "f_frsize", "f_namemax")}

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._real(path), ns=times)
        return 0

    def open(self, path: str, flags: int) -> int:
        # writes come with their offsets: O_APPEND would make pwrite ignore them
        fd = os.open(self._real(path), flags & ~(os.O_CREAT | os.O_APPEND))
        self.paths[fd] = path
        if flags & os.O_TRUNC:
            self.record(TRUNCATE, path, 0)
        return fd

    def create(self, path: str, mode: int, flags: int) -> int:
        fd = os.open(self._real(path), (flags | os.O_CREAT) & ~os.O_APPEND, mode)
        self.paths[fd] = path
        self.record(CREATE, path)
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        written = os.pwrite(fh, data, offset)
        self.record(WRITE, self.paths[fh], offset, data[:written])
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._real(path), length)
        self.record(TRUNCATE, path, length)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        # the backing folder never loses power: the record is the whole effect
        self.record(FSYNC, self.paths[fh])
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self.record(FSYNCDIR, path)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        del self.paths[fh]
        os.close(fh)
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._real(path))
        self.record(UNLINK, path)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._real(old), self._real(new))
        for fd, name in self.paths.items():
            if name == old:
                self.paths[fd] = new
        self.record(RENAME, old, 0, new.encode())
        return 0


def serve(backing: str, mountpoint: str, log_path: str) -> None:
    import mfusepy  # only the serving process needs libfuse

    with open(log_path, "wb") as log:
        operations = RecordingPassthrough(os.path.realpath(backing), Recorder(log))
        # nothreads: one operation at a time, recorded in the order served; hard_remove: an
        # unlinked open file is gone, not renamed to .fuse_hidden*
        mfusepy.FUSE(
            operations,
            mountpoint,
            foreground=True,
            nothreads=True,
            hard_remove=True,
            kernel_cache=True,
        )


class PowerCutMount:
    """The recording file system mounted at ``mountpoint`` by a child process, for a
    ``with`` block; leaving it unmounts (the log is complete then)."""

    def __init__(self, backing: Path, mountpoint: Path, log: Path) -> None:
        self.backing, self.mountpoint, self.log = backing, mountpoint, log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PowerCutMount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.errors.open("wb") as errors:
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(self.backing), str(self.mountpoint), str(self.log)],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(f"no FUSE mount at {self.mountpoint}: {self.errors.read_text()}")
            time.sleep(0.02)
        return self

    @property
    def errors(self) -> Path:
        return self.log.with_suffix(".err")

    def unmount(self) -> None:
        if self.process is None:
            return
        # busy while a process that just died still has a file of it open
        deadline = time.monotonic() + 10
        while os.path.ismount(self.mountpoint) and time.monotonic() < deadline:
            done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
            if done.returncode:
                time.sleep(0.1)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired as busy:
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)
            self.process.kill()
            self.process.wait(timeout=10)
            raise RuntimeError(f"{self.mountpoint} stayed busy: a process uses it") from busy
        finally:
            self.process = None
        # an operation that raised was answered with an error, and may be missing from the log
        if "Traceback" in self.errors.read_text():
            raise RuntimeError(f"the recording file system failed: {self.errors.read_text()}")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unmount()


if __name__ == "__main__":
    serve(*sys.argv[1:4])
