"""The agent's Prometheus metrics, served by the daemon on ``[metrics] host:port``.

Each scrape reads the buffer through its own read-only connection (the counters there are
the ones ``sleepfed-agent status`` shows, and they survive restarts), so the endpoint never
touches the daemon's own connection and costs nothing between scrapes. A buffer that cannot
be read gives ``sleepfed_agent_buffer_readable 0`` and a logged, counted error, not a failed
scrape.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sleepfed.board.buffer.board_state import BoardState
from sleepfed.board.buffer.connection import BufferError
from sleepfed.board.buffer.counter_classes import (
    FAILED_SESSION_OUTCOMES,
    NODE_FAULT_CLASSES,
    SESSION_OUTCOMES,
    SOURCE_FAILURE_CLASSES,
    prefixed,
    rejection_classes,
)
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.sources.protocol import Kind
from sleepfed.common.prometheus import ROUND_BUCKETS, histogram

log = logging.getLogger("sleepfed.metrics")

HEARTBEAT_STALE_SECONDS = 30.0


def round_durations(receipts: list[tuple[int, int, str, float]]) -> list[float]:
    """Seconds between the board receiving consecutive rounds' global models of one run:
    a round as this board lived it (its training, the server's aggregation, evaluation)."""
    durations = []
    for (_, round_a, run_a, at_a), (_, round_b, run_b, at_b) in pairwise(receipts):
        if run_a == run_b and round_b == round_a + 1 and at_b >= at_a:
            durations.append(at_b - at_a)
    return durations


class AgentCollector(Collector):
    """Reads the board's buffer at each scrape; ``live`` adds the daemon's in-memory gauges."""

    def __init__(
        self,
        buffer_path: Path,
        cap_bytes: int | None,
        sources: int,
        live: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.buffer_path = buffer_path
        self.cap_bytes = cap_bytes or 0
        self.sources = sources
        self.live = live
        self.read_errors = 0
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        readable = GaugeMetricFamily(
            "sleepfed_agent_buffer_readable", "1 if this scrape could read the buffer"
        )
        try:
            buffer = Buffer(self.buffer_path, readonly=True)
            try:
                counters = buffer.counters()
                state = buffer.board_state()
                counts = buffer.counts()
                receipts = buffer.model_receipts()
            finally:
                buffer.close()
        except (sqlite3.Error, BufferError, OSError) as error:
            self.read_errors += 1
            log.error("metrics: cannot read the buffer %s: %s", self.buffer_path, error)
            readable.add_metric([], 0.0)
            yield readable
            yield self._read_errors()
            yield from self._live()  # why the daemon holds its writes, if it does
            return
        readable.add_metric([], 1.0)
        yield readable
        yield self._read_errors()
        yield from self._readings(counters)
        yield from self._buffer(counts.used_bytes, counts.file_bytes, counts.readings)
        yield from self._federation(counters, receipts)
        yield from self._daemon(state)
        yield from self._recovery(counters, state)
        yield from self._live()

    def _recovery(self, counters: dict[str, int], state: BoardState) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "sleepfed_agent_buffer_recovered",
            "corrupt buffers moved aside and salvaged (sleepfed.board.buffer.buffer_recovery)",
            value=counters.get("buffer_recovered", 0),
        )
        record = state.buffer_recovered or {}
        yield GaugeMetricFamily(
            "sleepfed_agent_buffer_recovered_timestamp_seconds",
            "when the last corrupt buffer was moved aside (0 = never)",
            value=float(record.get("at") or 0),
        )

    def _live(self) -> Iterator[Metric]:
        if self.live is not None:
            for name, value in self.live().items():
                yield GaugeMetricFamily(f"sleepfed_agent_{name}", name.replace("_", " "), value)

    def _read_errors(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "sleepfed_agent_metrics_read_errors",
            "scrapes that could not read the buffer",
            value=self.read_errors,
        )

    def _readings(self, counters: dict[str, int]) -> Iterator[Metric]:
        ingested = CounterMetricFamily(
            "sleepfed_agent_readings_ingested",
            "readings committed to the buffer (and acknowledged), by kind",
            labels=["kind"],
        )
        accepted = prefixed(counters, "accepted_")
        for kind in Kind:
            name = kind.name.lower()
            ingested.add_metric([name], accepted.get(name, 0))
        yield ingested
        rejected = CounterMetricFamily(
            "sleepfed_agent_readings_rejected",
            "lines and BLE payloads rejected, by reason",
            labels=["reason"],
        )
        for reason, value in rejection_classes(counters).items():
            rejected.add_metric([reason], value)
        yield rejected
        events = CounterMetricFamily(
            "sleepfed_agent_source_failures",
            "sensor links lost, not found or refused, by class",
            labels=["class"],
        )
        for name in SOURCE_FAILURE_CLASSES:
            events.add_metric([name], counters.get(name, 0))
        yield events
        yield CounterMetricFamily(
            "sleepfed_agent_evicted_readings",
            "oldest raw readings evicted to keep the buffer under its cap",
            value=counters.get("evicted_readings", 0),
        )

    def _buffer(self, used: int, file_bytes: int, readings: int) -> Iterator[Metric]:
        yield GaugeMetricFamily("sleepfed_agent_buffer_bytes", "bytes in use", value=used)
        yield GaugeMetricFamily(
            "sleepfed_agent_buffer_file_bytes", "size of the buffer file", value=file_bytes
        )
        yield GaugeMetricFamily(
            "sleepfed_agent_buffer_cap_bytes", "the buffer's cap (0 = none)", value=self.cap_bytes
        )
        yield GaugeMetricFamily(
            "sleepfed_agent_buffer_readings", "raw readings held", value=readings
        )

    def _federation(
        self, counters: dict[str, int], receipts: list[tuple[int, int, str, float]]
    ) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "sleepfed_agent_rounds_joined",
            "rounds this board trained in",
            value=counters.get("rounds_trained", 0),
        )
        yield CounterMetricFamily(
            "sleepfed_agent_rounds_evaluated",
            "rounds whose global model this board received and evaluated",
            value=counters.get("rounds_evaluated", 0),
        )
        yield CounterMetricFamily(
            "sleepfed_agent_rounds_failed",
            "participation sessions that ended before their run finished "
            f"({', '.join(FAILED_SESSION_OUTCOMES)})",
            value=sum(counters.get(f"sessions_{o}", 0) for o in FAILED_SESSION_OUTCOMES),
        )
        sessions = CounterMetricFamily(
            "sleepfed_agent_sessions", "participation sessions, by outcome", labels=["outcome"]
        )
        for outcome in SESSION_OUTCOMES:
            sessions.add_metric([outcome], counters.get(f"sessions_{outcome}", 0))
        yield sessions
        yield CounterMetricFamily(
            "sleepfed_agent_retry_attempts",
            "connection attempts to the server that failed and were retried",
            value=counters.get("federation_retries", 0),
        )
        node_faults = CounterMetricFamily(
            "sleepfed_agent_node_faults",
            "the SuperNode's replies lost and restarts after the server failed its pull",
            labels=["class"],
        )
        for name in NODE_FAULT_CLASSES:
            node_faults.add_metric([name], counters.get(name, 0))
        yield node_faults
        yield histogram(
            "sleepfed_agent_round_duration_seconds",
            "time between this board's receipts of consecutive rounds' global models",
            round_durations(receipts),
            ROUND_BUCKETS,
        )
        latest = receipts[-1] if receipts else None
        yield GaugeMetricFamily(
            "sleepfed_agent_model_version",
            "version of the board's newest model (0 = none)",
            value=latest[0] if latest else 0,
        )
        yield GaugeMetricFamily(
            "sleepfed_agent_model_global_round",
            "global round of the board's newest model (0 = none)",
            value=latest[1] if latest else 0,
        )

    def _daemon(self, state: BoardState) -> Iterator[Metric]:
        connected_text = state.sources_connected or f"0/{self.sources}"
        connected = int(connected_text.split("/")[0]) if "/" in connected_text else 0
        yield GaugeMetricFamily(
            "sleepfed_agent_sources_connected", "sensor sources connected", value=connected
        )
        yield GaugeMetricFamily(
            "sleepfed_agent_sources", "sensor sources configured", value=self.sources
        )
        healthy = (
            state.health == "ok" and time.time() - state.heartbeat_at < HEARTBEAT_STALE_SECONDS
        )
        yield GaugeMetricFamily(
            "sleepfed_agent_healthy",
            "1 if the daemon's last heartbeat is fresh and all its sources are connected",
            value=1.0 if healthy else 0.0,
        )
        yield GaugeMetricFamily(
            "sleepfed_agent_session_running",
            "1 while a participation session runs",
            value=1.0 if state.session_running else 0.0,
        )
