"""A stand-in for the service manager's NOTIFY_SOCKET: what a daemon tells systemd
(READY=1, STATUS=, WATCHDOG=1), each line with the time it arrived."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class NotifyListener:
    """A bound unix datagram socket standing in for the service manager's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            stamp = time.monotonic()  # taken after the datagram arrived
            with self.lock:
                self.messages += [(stamp, line) for line in data.decode().splitlines()]

    def lines(self, prefix: str = "") -> list[tuple[float, str]]:
        with self.lock:
            return [(t, m) for t, m in self.messages if m.startswith(prefix)]

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=2)
        self.sock.close()
