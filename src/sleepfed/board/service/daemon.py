"""The agent daemon: sources -> batched commits -> nights -> participation -> predictions.

Threads: one per source (blocking reads), one for a participation session while a window
is open; the main thread owns the buffer connection, commits batches, sends ACKs once a
batch is committed, and does the housekeeping. flwr and scikit-learn are never imported
here: they live in the SuperNode child and its ClientApp processes.

The parts: sleepfed.board.service.ingest (batches, commits, ACKs, giving up on an
unwritable buffer), sleepfed.board.buffer.disk_guard (cap, free space, reserve file),
sleepfed.board.federation.participation (when to join, the session's thread),
sleepfed.board.service.buffer_keeper (a corrupt, read-only or vanished buffer). This module
starts and stops them, and runs the main loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
import time
from datetime import tzinfo
from types import FrameType
from typing import TYPE_CHECKING

from sleepfed.board.buffer.disk_guard import DiskGuard
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.federation.participation import Participation
from sleepfed.board.nights.tracker import NightTracker, extract_night, predict_nights
from sleepfed.board.service import clock
from sleepfed.board.service.buffer_keeper import BufferKeeper
from sleepfed.board.service.config import AgentConfig, SerialSourceConfig, SourceConfig
from sleepfed.board.service.ingest import EXIT_BUFFER_UNWRITABLE, Ingest
from sleepfed.board.service.notify import Notifier
from sleepfed.board.sources import Source
from sleepfed.board.sources.serial_source import SerialSource

if TYPE_CHECKING:
    from sleepfed.common.prometheus import MetricsServer

log = logging.getLogger("sleepfed.agent")

HOUSEKEEPING_SECONDS = 1.0
CAP_CHECK_SECONDS = 30.0
_DISK_FULL = {"ERROR_CLASS": "disk_full"}


def make_source(config: SourceConfig, timezone: tzinfo) -> Source:
    if isinstance(config, SerialSourceConfig):
        return SerialSource(config.name, config.port, config.baudrate, config.send_acks)
    from sleepfed.board.sources.ble_source import BleSource

    return BleSource(
        config.name, config.devices, config.adapter, config.scan_timeout_seconds, timezone
    )


class Daemon:
    # Wired in run(), once the buffer is open (under the daemon's umask).
    buffer: Buffer
    disk: DiskGuard
    ingest: Ingest
    participation: Participation

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self.sources: list[Source] = [make_source(s, config.timezone) for s in config.sources]
        self.tracker = NightTracker(config.timezone, config.night_settle_seconds)
        self.notifier = Notifier()
        self.keeper = BufferKeeper(
            config.buffer_path, config.synchronous, config.max_bytes, self.stop.is_set
        )
        self.keeper.on_new = self._swap
        self._ready_sent = False

    def _wire(self, buffer: Buffer) -> None:
        config = self.config
        self.buffer = buffer
        self.disk = DiskGuard(buffer, config.min_free_bytes)
        self.ingest = Ingest(
            buffer,
            self.sources,
            self.tracker,
            self.disk,
            self.stop,
            config.batch_max_readings,
            config.unwritable_exit_seconds,
            self.keeper,
        )
        self.participation = Participation(config, buffer, self.stop)

    def _swap(self, buffer: Buffer) -> None:
        """A new connection from the keeper (a recovered or reopened buffer) for every part."""
        self.buffer = self.ingest.buffer = self.disk.buffer = self.participation.buffer = buffer
        self.tracker.discover(buffer)

    def _waiting(self, reason: str) -> None:
        """At start, while the buffer cannot be opened: alive and saying why."""
        line = f"degraded: buffer unwritable: {reason}; readings held, not acknowledged"
        if not self._ready_sent:
            self._ready_sent = self.notifier.ready(line) or True
        self.notifier.status(line)
        self.notifier.watchdog()  # restarting cannot make the card writable

    # -- lifecycle ------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        self.notifier.stopping()
        self.stop.set()

    def run(self) -> int:
        os.umask(0o077)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        buffer = self.keeper.open_waiting(self._waiting)
        if buffer is None:
            return 0
        self._wire(buffer)
        if not self._start_buffer():
            return EXIT_BUFFER_UNWRITABLE
        threads = [
            threading.Thread(
                target=s.run,
                args=(self.ingest.emit, self.stop),
                name=f"source-{s.name}",
                daemon=True,
            )
            for s in self.sources
        ]
        for thread in threads:
            thread.start()
        self._announce()
        metrics = self._start_metrics()
        code = 0
        try:
            code = self._loop()
        finally:
            if metrics is not None:
                metrics.stop()
            self._shut_down(threads)
        return code

    def _start_buffer(self) -> bool:
        """Room on the disk, the nights so far, and the daemon's state; False (and the
        buffer closed) if not even that could be written."""
        try:
            self.disk.make_room(emergency=False)
            self.tracker.discover(self.buffer)
            self.buffer.set_state(
                daemon_pid=os.getpid(),
                daemon_started_at=clock.now(),
                health="starting",
                # not the previous run's value: status must not report "1/1" before we connect
                sources_connected=f"0/{len(self.sources)}",
            )
        except sqlite3.Error as error:  # a disk so full that not even evicting helped
            log.critical("buffer unwritable at start (%s): exiting", error, extra=_DISK_FULL)
            self.buffer.close()
            return False
        return True

    def _announce(self) -> None:
        log.info(
            "agent board=%s buffer=%s sources=%s ready",
            self.config.board_id,
            self.config.buffer_path,
            ",".join(s.name for s in self.sources),
        )
        fed = self.config.federation
        if fed is not None and fed.insecure:
            # Once per start, where every operator looks: a test setting must not reach a
            # real board unnoticed.
            log.warning(
                "federation.insecure = true: sessions with %s run WITHOUT TLS: traffic is "
                "unencrypted and the board's identity is not authenticated; for tests only",
                fed.server,
            )
        self.notifier.ready(f"starting: 0/{len(self.sources)} sources")

    def _shut_down(self, threads: list[threading.Thread]) -> None:
        self.notifier.stopping()
        self.stop.set()
        for thread in threads:
            thread.join(timeout=5)
        self.participation.join(timeout=30)
        with contextlib.suppress(sqlite3.Error):
            self.buffer.set_state(health="stopped", daemon_pid=0)
        self.buffer.close()
        log.info("agent stopped")

    def _start_metrics(self) -> MetricsServer | None:
        """The Prometheus endpoint (board.service.metrics), if ``[metrics] port`` is set."""
        if not self.config.metrics_port:
            return None
        from sleepfed.board.service.metrics import AgentCollector
        from sleepfed.common.prometheus import start_metrics

        collector = AgentCollector(
            self.config.buffer_path,
            self.config.max_bytes,
            len(self.sources),
            lambda: {
                "buffer_write_failing": float(self.ingest.write_failing),
                # held without end: read-only card, folder gone (sd_notify STATUS= says why)
                "buffer_unwritable": float(self.keeper.unwritable is not None),
                "queued_chunks": float(self.ingest.events.qsize()),
            },
        )
        return start_metrics(self.config.metrics_host, self.config.metrics_port, [collector])

    # -- main loop ------------------------------------------------------------------------
    def _loop(self) -> int:
        last_housekeeping = last_cap_check = last_ping = 0.0
        ping_every = self.notifier.watchdog_interval()
        # A long batch_max_seconds must not starve the watchdog: wait at most one ping interval.
        wait = min(self.config.batch_max_seconds, ping_every or self.config.batch_max_seconds)
        while True:
            stopping = self.stop.is_set()
            self.ingest.collect(wait, stopping)  # when stopping: what is queued, then flush it
            code = self.ingest.flush()
            if code is not None:
                return code
            if stopping:
                return 0
            now = time.monotonic()
            due = now - last_housekeeping >= HOUSEKEEPING_SECONDS
            if due:
                last_housekeeping = now
                self.keeper.check(self.buffer)  # the buffer gone? time to reopen it?
            if self.keeper.unwritable is not None:
                if due:
                    self._waiting(self.keeper.unwritable)
                continue
            try:
                if due:
                    self.disk.make_room(emergency=False)
                    self._housekeeping()
                if now - last_cap_check >= CAP_CHECK_SECONDS:
                    last_cap_check = now
                    self.disk.check_cap()
            except sqlite3.Error as error:  # readings keep their own retry; this waits a turn
                if not self.keeper.write_failed(self.buffer, error):
                    log.error(
                        "housekeeping could not write the buffer: %s", error, extra=_DISK_FULL
                    )
            # Healthy = this loop iterates and the last buffer write worked: only then ping.
            healthy = not self.ingest.write_failing
            if ping_every is not None and healthy and now - last_ping >= ping_every:
                last_ping = now
                self.notifier.watchdog()

    # -- housekeeping ---------------------------------------------------------------------
    def _housekeeping(self) -> None:
        for night in self.tracker.due():
            extract_night(self.buffer, night, self.config.timezone)
            self.tracker.done(night)
        predict_nights(self.buffer)
        self.participation.tick()
        connected = sum(1 for s in self.sources if s.connected.is_set())
        health = "ok" if connected == len(self.sources) else "degraded"
        self.buffer.set_state(
            health=health,
            heartbeat_at=clock.now(),
            sources_connected=f"{connected}/{len(self.sources)}",
            session_running=self.participation.running,
        )
        if self.notifier.enabled:
            self.notifier.status(self._status_line(health, connected))

    def _status_line(self, health: str, connected: int) -> str:
        """One line for ``systemctl status`` (sd_notify STATUS=), e.g. ``ok: 2/2 sources,
        12345 readings, model v5 (round 5), last session finished``."""
        counters = self.buffer.counters()
        readings = sum(v for k, v in counters.items() if k.startswith("accepted_"))
        model = self.buffer.latest_model_version()
        outcome = self.buffer.board_state().last_session_outcome
        parts = [
            f"{'buffer write failing' if self.ingest.write_failing else health}: "
            f"{connected}/{len(self.sources)} sources",
            f"{readings} readings",
            f"model v{model[0]} (round {model[1]})" if model else "no model yet",
            "session running"
            if self.participation.running
            else f"last session {outcome or 'none'}",
        ]
        return ", ".join(parts)
