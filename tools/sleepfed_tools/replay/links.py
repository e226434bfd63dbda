"""The serial links the replay writes into, reading the agent's ACKs back meanwhile: a
pseudo-terminal it creates (``PtyLink``) or an existing device opened with pyserial
(``SerialLink``)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import time
import tty

from sleepfed.board.sources.protocol import parse_ack


class AckTracker:
    """Splits bytes coming back from the agent into lines and keeps the latest ACK."""

    def __init__(self) -> None:
        self._buffer = b""
        self.last_ack: tuple[float, int] | None = None
        self.acks = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                ack = parse_ack(line)
            except ValueError:
                ack = None
            if ack is not None:
                self.last_ack = ack
                self.acks += 1
        if len(self._buffer) > 4096:  # garbage without newlines
            self._buffer = self._buffer[-256:]


OPEN_SETTLE_SECONDS = 0.5


def opened_elsewhere(device_path: str) -> bool:
    """True if a process other than this one holds ``device_path`` open (Linux /proc)."""
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == me:
            continue
        with contextlib.suppress(OSError):  # gone, or not ours to look at
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == device_path:
                        return True
    return False


class PtyLink:
    """A pseudo-terminal pair: the replay writes on the master, the agent opens ``device_path``.

    The slave fd stays open for the link's lifetime, so the device path stays valid while the
    agent opens and closes it. The master is non-blocking; :meth:`write` waits (draining ACKs)
    while the kernel buffer is full, so a slow reader slows the replay down.
    """

    def __init__(self) -> None:
        self.master_fd, self.slave_fd = pty.openpty()
        tty.setraw(self.master_fd)
        tty.setraw(self.slave_fd)
        os.set_blocking(self.master_fd, False)
        self.device_path = os.ttyname(self.slave_fd)
        self.acks = AckTracker()
        self._closed = False

    @property
    def last_ack(self) -> tuple[float, int] | None:
        return self.acks.last_ack

    def drain(self) -> int:
        """Read whatever the agent wrote back (ACKs); returns the number of bytes read."""
        total = 0
        while True:
            try:
                data = os.read(self.master_fd, 4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EIO: no slave open (cannot happen while we hold it)
                break
            if not data:
                break
            total += len(data)
            self.acks.feed(data)
        return total

    def write(self, data: bytes, timeout: float | None = None) -> None:
        view = memoryview(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        while view:
            try:
                n = os.write(self.master_fd, view)
                view = view[n:]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            self.drain()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"pty {self.device_path}: nobody reads ({len(view)} bytes left)")
            select.select([self.master_fd], [self.master_fd], [], 0.05)
        self.drain()

    def wait(self, seconds: float) -> None:
        """Keep the link open for ``seconds``, recording ACKs meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([self.master_fd], [], [], min(left, 0.1))
            self.drain()

    def wait_opened(self, seconds: float, settle: float = OPEN_SETTLE_SECONDS) -> bool:
        """Wait up to ``seconds`` for another process (the agent) to open the device, then
        ``settle`` more: pyserial discards the input queue right after it opens a port, so a
        line written at that moment would be lost. False if nobody opened it in time."""
        deadline = time.monotonic() + seconds
        while not opened_elsewhere(self.device_path):
            if time.monotonic() >= deadline:
                return False
            self.wait(0.1)
        self.wait(settle)
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.drain()
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> PtyLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialLink:
    """An existing serial device or PTY path, written with pyserial."""

    def __init__(self, path: str, baudrate: int = 115200) -> None:
        import serial  # pyserial, a project dependency

        self.device_path = path
        self._port = serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=None)
        self.acks = AckTracker()

    @property
    def last_ack(self) -> tuple[float, int] | None:
        return self.acks.last_ack

    def drain(self) -> int:
        waiting = self._port.in_waiting
        if waiting:
            data = self._port.read(waiting)
            self.acks.feed(data)
            return len(data)
        return 0

    def write(self, data: bytes) -> None:
        self._port.write(data)
        self.drain()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while deadline - time.monotonic() > 0:
            self.drain()
            time.sleep(0.05)
        self.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.drain()
        self._port.close()
