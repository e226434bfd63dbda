"""sd_notify(3) for ``Type=notify`` units: readiness, status line, watchdog pings, stopping.

Uses systemd-python (``systemd.daemon.notify``) when it is importable, else a few lines of
pure Python speaking the same protocol: one unix datagram per message to ``$NOTIFY_SOCKET``
(a name starting with ``@`` is in the abstract namespace). Without ``$NOTIFY_SOCKET`` (not
started by systemd, or a plain ``Type=simple`` unit) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("sleepfed.notify")


def _systemd_python() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon
    except ImportError:  # not installed, or hidden (sys.modules["systemd"] = None)
        return None
    notify = getattr(daemon, "notify", None)
    return notify if callable(notify) else None


class _DatagramSender:
    """The pure-Python fallback: ``sendto`` on an unconnected unix datagram socket."""

    def __init__(self, path: str) -> None:
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.sock: socket.socket | None = None

    def __call__(self, message: str) -> bool:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.sendto(message.encode("utf-8"), self.address)
        return True


class Notifier:
    """Tells the service manager how the daemon is doing; silent when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._stopping_sent = False
        self._send: Callable[[str], bool] | None = None
        self.backend = "none"
        if self.socket_path is None:
            return
        if (native := _systemd_python()) is not None and environ is None:
            # libsystemd reads $NOTIFY_SOCKET itself: only usable with the real environment.
            self._send, self.backend = native, "systemd-python"
        else:
            self._send, self.backend = _DatagramSender(self.socket_path), "fallback"
        log.info("sd_notify to %s via %s", self.socket_path, self.backend)

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def notify(self, message: str) -> bool:
        """Send one raw message (``KEY=value`` lines); False when not sent."""
        if self._send is None:
            return False
        try:
            return bool(self._send(message))
        except OSError as error:  # the manager went away: nothing we can do but carry on
            log.debug("sd_notify %r failed: %s", message.split("=", 1)[0], error)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """``STOPPING=1``, once per process (later calls do nothing)."""
        if self._stopping_sent:
            return False
        self._stopping_sent = True
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: half of ``$WATCHDOG_USEC`` when the watchdog is
        meant for this process (``$WATCHDOG_PID`` unset or ours); None when off."""
        if self._send is None or not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.split())
