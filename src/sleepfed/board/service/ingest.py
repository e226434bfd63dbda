"""Ingest: the sources' chunks -> batches -> one commit each -> ACKs.

Sources hand their chunks to ``Ingest.emit`` (their own threads; a full queue makes them
wait); the daemon's main thread collects them into a batch, commits it with its counters in
one transaction, and only then acknowledges its readings to their sources. A batch that
cannot be written is held (nothing more is acknowledged) and retried; past
``buffer.unwritable_exit_seconds`` the agent exits (``EXIT_BUFFER_UNWRITABLE``). Not so for
a corrupt buffer (recovered, and the batch committed into the fresh one) or an unwritable
file system (the batch held, without end, until it is writable again): the daemon's
``BufferKeeper`` (sleepfed.board.service.buffer_keeper) handles those.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter

from sleepfed.board.buffer.disk_guard import DiskGuard
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.tracker import NightTracker
from sleepfed.board.service.buffer_keeper import BufferKeeper
from sleepfed.board.sources import Item, Rejection, Source, SourceEvent
from sleepfed.board.sources.protocol import Kind, Reading

log = logging.getLogger("sleepfed.agent")

# Chunks (one device read each, up to 4 KiB of lines): bounds memory; sources wait when full.
QUEUE_LIMIT = 256
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


class Batch:
    """Readings and counter increments waiting for one commit."""

    def __init__(self) -> None:
        self.readings: list[tuple[str, Reading]] = []
        self.counters: Counter[str] = Counter()

    def __bool__(self) -> bool:
        return bool(self.readings or self.counters)

    def take(self, source: str, items: list[Item], rejections: RejectionLog) -> None:
        for item in items:
            if isinstance(item, Reading):
                self.readings.append((source, item))
                self.counters[ACCEPTED_COUNTER[item.kind]] += 1
            elif isinstance(item, SourceEvent):
                self.counters[item.counter] += 1
                log.warning(
                    "source=%s %s: %s",
                    source,
                    item.counter,
                    item.detail,
                    extra={"SOURCE": source, "ERROR_CLASS": item.counter},
                )
            else:
                self.counters[f"rejected_{item.reason}"] += 1
                rejections.note(source, item)

    def by_source(self) -> dict[str, list[Reading]]:
        grouped: dict[str, list[Reading]] = {}
        for source, reading in self.readings:
            grouped.setdefault(source, []).append(reading)
        return grouped


class Ingest:
    """The queue from the sources, the batch being filled, its commit and ACKs."""

    def __init__(
        self,
        buffer: Buffer,
        sources: list[Source],
        tracker: NightTracker,
        disk: DiskGuard,
        stop: threading.Event,
        batch_max_readings: int,
        unwritable_exit_seconds: float,
        keeper: BufferKeeper,
    ) -> None:
        self.buffer = buffer
        self.keeper = keeper
        self.sources = sources
        self.tracker = tracker
        self.disk = disk
        self.stop = stop
        self.batch_max_readings = batch_max_readings
        self.unwritable_exit_seconds = unwritable_exit_seconds
        self.events: queue.Queue[tuple[str, list[Item]]] = queue.Queue(QUEUE_LIMIT)
        self.rejections = RejectionLog()
        self.committed_per_source: Counter[str] = Counter()
        self.batch = Batch()
        self.failing_since: float | None = None  # when the held batch's first write failed

    @property
    def write_failing(self) -> bool:
        """Whether the last buffer write failed (no watchdog pings then)."""
        return self.failing_since is not None

    def emit(self, source: str, items: list[Item]) -> None:
        """A source's chunk (called from the source's thread)."""
        while not self.stop.is_set():
            try:
                self.events.put((source, items), timeout=0.5)
                return
            except queue.Full:
                continue  # back-pressure: the source stops reading until we catch up

    def collect(self, wait: float, stopping: bool) -> None:
        """Fill the batch for up to ``wait`` seconds or ``batch_max_readings``; when
        ``stopping``, take only what is already queued."""
        deadline = time.monotonic() + wait
        while len(self.batch.readings) < self.batch_max_readings and not stopping:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                source, items = self.events.get(timeout=timeout)
            except queue.Empty:
                break
            self.batch.take(source, items, self.rejections)
        if stopping:
            while True:
                try:
                    source, items = self.events.get_nowait()
                except queue.Empty:
                    break
                self.batch.take(source, items, self.rejections)

    def flush(self) -> int | None:
        """Commit the batch, if any. A failed write holds it for the next turn; returns
        ``EXIT_BUFFER_UNWRITABLE`` once writes have failed for too long, else None."""
        if not self.batch:
            return None
        if self.keeper.unwritable is not None or self.keeper.gone_since_check():
            self.stop.wait(0.5)  # held: the sources wait (a full queue), not a busy loop
            return None
        try:
            self._commit()
        except sqlite3.Error as error:
            return self._write_failed(error)
        self.batch, self.failing_since = Batch(), None
        return None

    def _write_failed(self, error: sqlite3.Error) -> int | None:
        if self.keeper.write_failed(self.buffer, error):
            self.batch.counters["buffer_write_held"] += 1  # counted with the batch
            return None
        self.failing_since = self.failing_since or time.monotonic()
        full = is_disk_full(error)
        # counted with the batch, once it commits
        self.batch.counters["buffer_disk_full" if full else "buffer_write_failed"] += 1
        log.error(
            "buffer write failed (%s); %d readings held, not acknowledged",
            error,
            len(self.batch.readings),
            extra=_DISK_FULL if full else {"ERROR_CLASS": "buffer_write_failed"},
        )
        give_up = self.unwritable_exit_seconds
        if time.monotonic() - self.failing_since > give_up:
            log.critical("buffer unwritable for %.0fs: exiting", give_up)
            return EXIT_BUFFER_UNWRITABLE
        if not (full and self.disk.make_room(emergency=True)):
            self.stop.wait(1.0)
        return None

    def _commit(self) -> None:
        batch = self.batch.readings
        self.buffer.add_readings(batch, dict(self.batch.counters))
        # Committed: now acknowledge.
        if batch:
            stamps = [r.timestamp for _, r in batch]
            self.tracker.saw(min(stamps), max(stamps))
        by_source = self.batch.by_source()
        for source in self.sources:
            items = by_source.get(source.name)
            if items:
                self.committed_per_source[source.name] += len(items)
                source.acknowledge(
                    max(r.timestamp for r in items), self.committed_per_source[source.name]
                )
