"""A Prometheus endpoint in a thread of its own, and histograms of already-known
observations: what the board's and the server's metrics (board.service.metrics,
server.ops.metrics) are served with."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("sleepfed.metrics")

# Round durations: from seconds (a few boards on a LAN) to the default 10-minute round timeout.
ROUND_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def histogram(
    name: str, documentation: str, values: Iterable[float], buckets: Iterable[float]
) -> HistogramMetricFamily:
    """A Prometheus histogram of already-known observations (e.g. read from a database)."""
    values = list(values)
    rows = [(str(le), float(sum(1 for v in values if v <= le))) for le in buckets]
    rows.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, documentation, buckets=rows, sum_value=sum(values))


class MetricsServer:
    """An HTTP endpoint for Prometheus (``/metrics``) in a thread of its own."""

    def __init__(self, host: str, port: int, collectors: list[Collector]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        for collector in collectors:
            self.registry.register(collector)
        self.server: WSGIServer | None = None
        self.host, self.port = host, port

    def start(self) -> None:
        self.server, _thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def start_metrics(host: str, port: int, collectors: list[Collector]) -> MetricsServer | None:
    """Start the endpoint unless ``port`` is 0. A port that cannot be bound is logged as an
    error and the caller goes on without metrics: collecting data matters more."""
    if port == 0:
        return None
    server = MetricsServer(host, port, collectors)
    try:
        server.start()
    except OSError as error:
        log.error(
            "metrics: cannot listen on %s:%d (%s); running without metrics",
            host,
            port,
            error,
            extra={"ERROR_CLASS": "metrics_bind"},
        )
        return None
    return server
