"""What ``sleepfed-server run`` keeps running: the SuperLink (loopback), the fleet proxy (the
boards' address), and the registry applied to the SuperLink.

A supervising thread checks both processes every second and restarts one that exited, and
applies the board registry to the SuperLink every ``reconcile_seconds`` (a revocation made
while the SuperLink could not be reached still takes effect within that time). A registry
found damaged (or not a registry) fails closed: the boards' address closes at once and the
server stops, its SuperLink with it (``fatal`` says why; sleepfed.server.fleet.registry_file).
One that cannot be read for another reason (busy, a permission) is logged and tried again,
the SuperLink's nodes left as they were (``run`` refuses to start on it). Stopping the
server stops both processes; if the server itself is killed, they get SIGTERM from the
kernel (``die_with_parent``).
"""

from __future__ import annotations

import logging
import threading
import time

from sleepfed.common.sqlite_checks import StateFileError
from sleepfed.server.fleet.fleet_proxy import FleetProxy
from sleepfed.server.fleet.superlink import SuperLink
from sleepfed.server.ops.config import ServerConfig

log = logging.getLogger("sleepfed.server")

CHECK_SECONDS = 1.0


class ServerProcesses:
    def __init__(self, config: ServerConfig, stopping: threading.Event | None = None) -> None:
        """``stopping``: set when the server is asked to stop (its signal handler); from then
        on a child that exits is not restarted (systemd signals the whole unit at once)."""
        self.config = config
        self.stopping = stopping or threading.Event()
        self.superlink = SuperLink(config)
        self.proxy = FleetProxy(config)
        self.restarts = {"superlink": 0, "fleet_proxy": 0}
        self.reconcile_failures = 0
        self.fatal: str | None = None  # why the server stopped on its own
        # SuperLinks started so far: a run submitted to an earlier one is gone with it
        self.superlink_starts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> list[str]:
        """Both processes up and the registry applied; returns what the registry sync did."""
        if not self.config.node_auth:
            log.warning(
                "node authentication is OFF (server.node_auth = false): any node that reaches "
                "%s may join and receive the model",
                self.config.address,
            )
        self.proxy.check()  # a configuration nginx refuses stops us before anything runs
        self.superlink.start()
        self.superlink_starts += 1
        # The registry before the proxy: a board that reached the SuperLink before its key was
        # registered would be refused, and stay away for its refusal back-off.
        try:
            lines = self.reconcile(new_superlink=True)
            self.proxy.start()
        except Exception:
            self.superlink.stop()
            raise
        self._thread = threading.Thread(target=self._supervise, name="supervision", daemon=True)
        self._thread.start()
        return lines

    def alive(self) -> bool:
        return self.superlink.alive() and self.proxy.alive()

    def reconcile(self, new_superlink: bool = False) -> list[str]:
        """Apply pending registrations and revocations; a failure is logged, never raised.
        ``new_superlink``: the SuperLink was just (re)started; with its state in memory it
        knows no board, and every enrolled one is registered again."""
        if not self.config.node_auth:
            return []
        from sleepfed.server.fleet.boards import Registry

        try:
            registry = Registry(self.config)
        except StateFileError as error:
            self.reconcile_failures += 1
            if error.kind == "unreadable":  # busy, or a permission: its content is not in doubt
                log.error("board registry unreadable: %s", error)
                return []
            # nobody's entry is decided by a registry whose content cannot be trusted
            self.fatal = f"the board registry cannot be used: {error}"
            log.error(self.fatal, extra={"ERROR_CLASS": "registry_unusable"})
            raise
        except Exception as error:  # a transient failure must not stop the federation loop
            self.reconcile_failures += 1
            log.error("board registry unreadable: %s", error)
            return []
        try:
            lines = []
            if new_superlink and self.config.superlink_state == "memory":
                lines = registry.forget_superlink()
            lines += registry.sync()
            self.reconcile_failures += registry.sync_failures
            return lines
        finally:
            registry.close()

    def _supervise(self) -> None:
        next_reconcile = time.monotonic() + self.config.reconcile_seconds
        while not self._stop.wait(CHECK_SECONDS) and self.fatal is None:
            self.superlink.remember_children()
            for name, process in (("superlink", self.superlink), ("fleet_proxy", self.proxy)):
                if process.alive() or self._stop.is_set() or self.stopping.is_set():
                    continue
                code = process.process.returncode if process.process is not None else None
                log.warning("%s exited (status %s): restarting it", name, code)
                self.restarts[name] += 1
                try:
                    if process is self.superlink:
                        self._restart_superlink()
                    else:
                        process.stop()
                        process.start()
                except Exception as error:  # try again on the next check
                    log.error("%s could not be restarted: %s", name, error)
            if time.monotonic() >= next_reconcile and self.superlink.alive():
                if not self._reconcile_or_stop():
                    return
                next_reconcile = time.monotonic() + self.config.reconcile_seconds

    def _restart_superlink(self) -> None:
        """A new SuperLink, and the registry applied to it before boards reach it again: with
        its state in memory it knows no board until then, and would refuse them (a refused
        board stays away for its refusal back-off), so the boards' address is closed
        meanwhile (a board sees the server unreachable, and retries)."""
        closed = self.config.superlink_state == "memory" and self.proxy.alive()
        if closed:
            self.proxy.stop()
        self.superlink.stop()  # and what it left behind: its superexec, the run's ServerApp
        self.superlink.start()
        self.superlink_starts += 1
        if self._reconcile_or_stop(new_superlink=True) and closed:
            self.proxy.start()

    def _reconcile_or_stop(self, new_superlink: bool = False) -> bool:
        """``reconcile``; False if the registry cannot be used, after closing the boards'
        address and asking ``run`` to stop (it stops the SuperLink and exits EXIT_STATE)."""
        try:
            lines = self.reconcile(new_superlink)
        except StateFileError:
            self.proxy.stop()
            self.stopping.set()
            return False
        for line in lines:
            log.info("registry: %s", line)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.proxy.stop()
        self.superlink.stop()
