"""The agent daemon: sources -> batched commits -> nights -> participation -> predictions.

Threads: one per source (blocking reads), one for a participation session while a window
is open; the main thread owns the buffer connection, commits batches, sends ACKs once a
batch is committed, and does the housekeeping. flwr and scikit-learn are never imported
here: they live in the SuperNode child and its ClientApp processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from collections import Counter
from datetime import tzinfo
from types import FrameType
from typing import TYPE_CHECKING

from sleepfed.board.buffer.store import RESERVE_BYTES, Buffer
from sleepfed.board.nights.schedule import still_waiting
from sleepfed.board.nights.tracker import NightTracker, extract_night, predict_nights
from sleepfed.board.service import clock
from sleepfed.board.service.config import AgentConfig, SerialSourceConfig, SourceConfig
from sleepfed.board.service.notify import Notifier
from sleepfed.board.sources import Item, Rejection, Source, SourceEvent
from sleepfed.board.sources.protocol import Kind, Reading
from sleepfed.board.sources.serial_source import SerialSource

if TYPE_CHECKING:
    from sleepfed.common.prometheus import MetricsServer

log = logging.getLogger("sleepfed.agent")

# Chunks (one device read each, up to 4 KiB of lines): bounds memory; sources wait when full.
QUEUE_LIMIT = 256
HOUSEKEEPING_SECONDS = 1.0
CAP_CHECK_SECONDS = 30.0
REJECTION_LOGS_PER_MINUTE = 5
EXIT_BUFFER_UNWRITABLE = 3
ACCEPTED_COUNTER = {kind: f"accepted_{kind.name.lower()}" for kind in Kind}
_DISK_FULL = {"ERROR_CLASS": "disk_full"}


def is_disk_full(error: sqlite3.Error) -> bool:
    """SQLITE_FULL (or the OS's ENOSPC under another name)."""
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(error)


class RejectionLog:
    """Logs the first few rejections of each reason per minute, then only counts."""

    def __init__(self) -> None:
        self.window_start = time.monotonic()
        self.logged: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()

    def note(self, source: str, rejection: Rejection) -> None:
        now = time.monotonic()
        if now - self.window_start >= 60:
            for reason, count in self.suppressed.items():
                log.warning(
                    "source=%s reason=%s rejected %d more lines (not logged)",
                    source,
                    reason,
                    count,
                    extra={"SOURCE": source, "ERROR_CLASS": reason},
                )
            self.window_start, self.logged, self.suppressed = now, Counter(), Counter()
        if self.logged[rejection.reason] < REJECTION_LOGS_PER_MINUTE:
            self.logged[rejection.reason] += 1
            log.warning(
                "source=%s reason=%s rejected: %s",
                source,
                rejection.reason,
                rejection.detail,
                extra={"SOURCE": source, "ERROR_CLASS": rejection.reason},
            )
        else:
            self.suppressed[rejection.reason] += 1


def make_source(config: SourceConfig, timezone: tzinfo) -> Source:
    if isinstance(config, SerialSourceConfig):
        return SerialSource(config.name, config.port, config.baudrate, config.send_acks)
    from sleepfed.board.sources.ble_source import BleSource

    return BleSource(
        config.name, config.devices, config.adapter, config.scan_timeout_seconds, timezone
    )


class Daemon:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self.events: queue.Queue[tuple[str, list[Item]]] = queue.Queue(QUEUE_LIMIT)
        self.sources: list[Source] = [make_source(s, config.timezone) for s in config.sources]
        self.tracker = NightTracker(config.timezone, config.night_settle_seconds)
        self.rejections = RejectionLog()
        self.committed_per_source: Counter[str] = Counter()
        self.session_thread: threading.Thread | None = None
        self.buffer: Buffer | None = None
        self.notifier = Notifier()
        self.write_failing = False  # the last buffer write failed (no watchdog pings then)

    # -- lifecycle ------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        self.notifier.stopping()
        self.stop.set()

    def run(self) -> int:
        os.umask(0o077)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.buffer = Buffer(
            self.config.buffer_path,
            synchronous=self.config.synchronous,
            max_bytes=self.config.max_bytes,
        )
        try:
            self._make_room(emergency=False)
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
            return EXIT_BUFFER_UNWRITABLE
        threads = [
            threading.Thread(
                target=s.run, args=(self._emit, self.stop), name=f"source-{s.name}", daemon=True
            )
            for s in self.sources
        ]
        for thread in threads:
            thread.start()
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
        metrics = self._start_metrics()
        code = 0
        try:
            code = self._loop()
        finally:
            if metrics is not None:
                metrics.stop()
            self.notifier.stopping()
            self.stop.set()
            for thread in threads:
                thread.join(timeout=5)
            if self.session_thread is not None:
                self.session_thread.join(timeout=30)
            with contextlib.suppress(sqlite3.Error):
                self.buffer.set_state(health="stopped", daemon_pid=0)
            self.buffer.close()
            log.info("agent stopped")
        return code

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
                "buffer_write_failing": float(self.write_failing),
                "queued_chunks": float(self.events.qsize()),
            },
        )
        return start_metrics(self.config.metrics_host, self.config.metrics_port, [collector])

    def _emit(self, source: str, items: list[Item]) -> None:
        while not self.stop.is_set():
            try:
                self.events.put((source, items), timeout=0.5)
                return
            except queue.Full:
                continue  # back-pressure: the source stops reading until we catch up

    # -- main loop ------------------------------------------------------------------------
    def _loop(self) -> int:
        assert self.buffer is not None
        batch: list[tuple[str, Reading]] = []
        counters: Counter[str] = Counter()
        last_housekeeping = last_cap_check = last_ping = 0.0
        failing_since: float | None = None
        ping_every = self.notifier.watchdog_interval()
        # A long batch_max_seconds must not starve the watchdog: wait at most one ping interval.
        wait = min(self.config.batch_max_seconds, ping_every or self.config.batch_max_seconds)
        while True:
            stopping = self.stop.is_set()
            deadline = time.monotonic() + wait
            while len(batch) < self.config.batch_max_readings and not stopping:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    source, items = self.events.get(timeout=timeout)
                except queue.Empty:
                    break
                self._take(source, items, batch, counters)
            if stopping:  # take what is already queued, then flush it
                while True:
                    try:
                        source, items = self.events.get_nowait()
                    except queue.Empty:
                        break
                    self._take(source, items, batch, counters)
            if batch or counters:
                try:
                    self._commit(batch, counters)
                    batch, counters, failing_since = [], Counter(), None
                    self.write_failing = False
                except sqlite3.Error as error:
                    failing_since = failing_since or time.monotonic()
                    self.write_failing = True
                    full = is_disk_full(error)
                    # counted with the batch, once it commits
                    counters["buffer_disk_full" if full else "buffer_write_failed"] += 1
                    log.error(
                        "buffer write failed (%s); %d readings held, not acknowledged",
                        error,
                        len(batch),
                        extra=_DISK_FULL if full else {"ERROR_CLASS": "buffer_write_failed"},
                    )
                    give_up = self.config.unwritable_exit_seconds
                    if time.monotonic() - failing_since > give_up:
                        log.critical("buffer unwritable for %.0fs: exiting", give_up)
                        return EXIT_BUFFER_UNWRITABLE
                    if not (full and self._make_room(emergency=True)):
                        self.stop.wait(1.0)
            if stopping:
                return 0
            now = time.monotonic()
            try:
                if now - last_housekeeping >= HOUSEKEEPING_SECONDS:
                    last_housekeeping = now
                    self._make_room(emergency=False)
                    self._housekeeping()
                if now - last_cap_check >= CAP_CHECK_SECONDS:
                    last_cap_check = now
                    evicted = self.buffer.enforce_cap()
                    if evicted:
                        log.warning("buffer over cap: evicted %d oldest raw readings", evicted)
            except sqlite3.Error as error:  # readings keep their own retry; this waits a turn
                log.error("housekeeping could not write the buffer: %s", error, extra=_DISK_FULL)
            # Healthy = this loop iterates and the last buffer write worked: only then ping.
            if ping_every is not None and failing_since is None and now - last_ping >= ping_every:
                last_ping = now
                self.notifier.watchdog()

    def _make_room(self, emergency: bool) -> bool:
        """Keep ``buffer.min_free_mb`` free on the buffer's disk by evicting the oldest raw
        readings. ``emergency`` (a write failed: disk full) first gives up the reserve file
        so that evicting itself can write. Returns whether it evicted anything."""
        assert self.buffer is not None
        free = self.buffer.free_bytes()
        if not emergency and free >= self.config.min_free_bytes:
            if not self.buffer.reserve_path.exists() and free >= 2 * RESERVE_BYTES:
                self.buffer.keep_reserve()
            return False
        if emergency:
            self.buffer.release_reserve()
        # room for the reserve too, when it has to be made again
        target = self.config.min_free_bytes
        if not self.buffer.reserve_path.exists():
            target += RESERVE_BYTES
        try:
            evicted = self.buffer.make_room(target)
        except sqlite3.Error as error:
            if self.buffer.reserve_path.exists():
                # Evicting writes too (its checkpoint may grow the file first): on a disk that
                # ingest alone filled it needs the reserve as much as a failed commit does.
                log.warning(
                    "disk full: evicting could not write (%s); giving up the reserve",
                    error,
                    extra=_DISK_FULL,
                )
                return self._make_room(emergency=True)
            log.error("disk full: could not evict (%s)", error, extra=_DISK_FULL)
            return False
        if evicted:
            log.warning(
                "disk low: evicted %d oldest raw readings, %.1f MB free now",
                evicted,
                self.buffer.free_bytes() / 1e6,
                extra=_DISK_FULL,
            )
        if not self.buffer.keep_reserve():
            log.warning("disk full: no room for the buffer's reserve file", extra=_DISK_FULL)
        return evicted > 0

    def _take(
        self,
        source: str,
        items: list[Item],
        batch: list[tuple[str, Reading]],
        counters: Counter[str],
    ) -> None:
        for item in items:
            if isinstance(item, Reading):
                batch.append((source, item))
                counters[ACCEPTED_COUNTER[item.kind]] += 1
            elif isinstance(item, SourceEvent):
                counters[item.counter] += 1
                log.warning(
                    "source=%s %s: %s",
                    source,
                    item.counter,
                    item.detail,
                    extra={"SOURCE": source, "ERROR_CLASS": item.counter},
                )
            else:
                counters[f"rejected_{item.reason}"] += 1
                self.rejections.note(source, item)

    def _commit(self, batch: list[tuple[str, Reading]], counters: Counter[str]) -> None:
        assert self.buffer is not None
        by_source: dict[str, list[Reading]] = {}
        for source, reading in batch:
            by_source.setdefault(source, []).append(reading)
        self.buffer.add_readings(batch, dict(counters))
        # Committed: now acknowledge.
        if batch:
            stamps = [r.timestamp for _, r in batch]
            self.tracker.saw(min(stamps), max(stamps))
        for source in self.sources:
            items = by_source.get(source.name)
            if items:
                self.committed_per_source[source.name] += len(items)
                source.acknowledge(
                    max(r.timestamp for r in items), self.committed_per_source[source.name]
                )

    # -- housekeeping ---------------------------------------------------------------------
    def _housekeeping(self) -> None:
        assert self.buffer is not None
        for night in self.tracker.due():
            extract_night(self.buffer, night, self.config.timezone)
            self.tracker.done(night)
        predict_nights(self.buffer)
        self._participation()
        connected = sum(1 for s in self.sources if s.connected.is_set())
        health = "ok" if connected == len(self.sources) else "degraded"
        self.buffer.set_state(
            health=health,
            heartbeat_at=clock.now(),
            sources_connected=f"{connected}/{len(self.sources)}",
            session_running=self.session_thread is not None,
        )
        if self.notifier.enabled:
            self.notifier.status(self._status_line(health, connected))

    def _status_line(self, health: str, connected: int) -> str:
        """One line for ``systemctl status`` (sd_notify STATUS=), e.g. ``ok: 2/2 sources,
        12345 readings, model v5 (round 5), last session finished``."""
        assert self.buffer is not None
        counters = self.buffer.counters()
        readings = sum(v for k, v in counters.items() if k.startswith("accepted_"))
        model = self.buffer.latest_model_version()
        outcome = self.buffer.state().get("last_session_outcome")
        parts = [
            f"{'buffer write failing' if self.write_failing else health}: "
            f"{connected}/{len(self.sources)} sources",
            f"{readings} readings",
            f"model v{model[0]} (round {model[1]})" if model else "no model yet",
            "session running"
            if self.session_thread is not None
            else f"last session {outcome or 'none'}",
        ]
        return ", ".join(parts)

    def _participation(self) -> None:
        from sleepfed.board.federation.session import Session

        fed = self.config.federation
        assert self.buffer is not None
        if fed is None:
            return
        if self.session_thread is not None:
            if self.session_thread.is_alive():
                return
            self.session_thread = None
        now = clock.now()
        window = fed.window.current(now, self.config.timezone)
        state = self.buffer.state()
        if window is None:
            self.buffer.set_state(next_window_at=fed.window.next_start(now, self.config.timezone))
            return
        start, end = window
        if state.get("closed_window_start") == start:
            return  # the server stayed unreachable until this window's end
        refused_until = float(state.get("refused_until", 0) or 0)  # type: ignore[arg-type]
        if still_waiting(refused_until, now, fed.refused_retry_seconds):
            return  # refused (key not registered, revoked, wrong CA): wait before asking again
        labelled = self.buffer.labelled_window_count()
        since = int(state.get("labelled_at_last_session", 0))  # type: ignore[arg-type]
        if labelled - since < fed.min_new_labelled_windows:
            return
        run_finished_before = state.get("run_finished")
        buffer_path = self.config.buffer_path
        state_dir = self.config.state_dir

        def finished() -> bool:
            reader = Buffer(buffer_path, readonly=True)
            try:
                return reader.state().get("run_finished") != run_finished_before
            finally:
                reader.close()

        def record(counter: str, **state: object) -> None:
            # Visible at once in `sleepfed-agent status`, not only when the session ends.
            writer = Buffer(buffer_path)
            try:
                writer.bump_counters({counter: 1})
                writer.set_state(**state)
            finally:
                writer.close()

        def on_retry(attempt: int, sleep: float, why: str) -> None:
            record(
                "federation_retries",
                last_retry={
                    "attempt": attempt,
                    "at": time.time(),
                    "sleep": sleep,
                    "error": why[:200],
                },
                session_attempts=list(session.attempt_times),
            )

        def on_node_fault(counter: str, detail: str) -> None:
            record(
                counter, last_node_fault={"counter": counter, "at": time.time(), "detail": detail}
            )

        session = Session(
            fed, buffer_path, state_dir, end, self.stop, finished, on_retry, on_node_fault
        )

        def run_session() -> None:
            outcome = "error"
            try:
                outcome = session.run()
            except Exception:
                log.exception("participation session crashed")
            log.info(
                "participation session ended: %s (attempts at %s)",
                outcome,
                ", ".join(f"{t:.1f}" for t in session.attempt_times),
            )
            self._session_done(outcome, start, labelled, session.attempt_times)

        self.buffer.set_state(session_started_at=now, session_window_end=end)
        self.session_thread = threading.Thread(
            target=run_session, name="participation", daemon=True
        )
        self.session_thread.start()

    def _session_done(
        self,
        outcome: str,
        window_start: float,
        labelled: int,
        attempts: list[float],
    ) -> None:
        writer = Buffer(self.config.buffer_path)
        try:
            values: dict[str, object] = {
                "last_session_outcome": outcome,
                "last_session_ended_at": time.time(),
                "last_session_attempts": attempts,
            }
            if outcome == "finished":
                values["labelled_at_last_session"] = labelled
            if outcome == "gave_up":
                values["closed_window_start"] = window_start
            if outcome == "refused":
                assert self.config.federation is not None
                values["refused_until"] = clock.now() + self.config.federation.refused_retry_seconds
            writer.set_state(**values)
            writer.bump_counters({f"sessions_{outcome}": 1})
        finally:
            writer.close()
