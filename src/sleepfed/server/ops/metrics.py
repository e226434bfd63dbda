"""The server's Prometheus metrics, served by ``sleepfed-server run`` on ``[metrics]
host:port``. The ServerApp runs in a process of its own (started by the SuperLink) and
writes every round to the history; each scrape reads the history, so the figures are the
persisted ones and survive restarts."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sleepfed.common.prometheus import ROUND_BUCKETS, histogram
from sleepfed.common.sqlite_checks import StateFileError
from sleepfed.server.ops.config import ServerConfig
from sleepfed.server.ops.round_figures import RoundFigures, board_counts, view_history

log = logging.getLogger("sleepfed.metrics")


class ServerCollector(Collector):
    def __init__(
        self,
        config: ServerConfig,
        superlink_alive: Callable[[], bool],
        supervision: Callable[[], tuple[dict[str, int], int]] | None = None,
    ) -> None:
        """``supervision``: (restarts by process, failed registry applications) so far."""
        self.config = config
        self.superlink_alive = superlink_alive
        self.supervision = supervision
        self.read_errors = 0
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sleepfed_server_superlink_up",
            "1 while the SuperLink and its fleet proxy run",
            value=1.0 if self.superlink_alive() else 0.0,
        )
        if self.supervision is not None:
            yield from _supervision_families(*self.supervision())
        try:
            view = view_history(self.config.history_path)
            boards = board_counts(self.config.state_dir)
        except StateFileError as error:  # says which file
            self.read_errors += 1
            log.error("metrics: %s", error)
            yield from self._readable(False)
            return
        except sqlite3.Error as error:
            self.read_errors += 1
            log.error("metrics: cannot read %s: %s", self.config.history_path, error)
            yield from self._readable(False)
            return
        yield from self._readable(True)
        rounds = view.rounds
        last = rounds[-1] if rounds else None
        yield from _round_families(rounds, view.runs, view.rolled_back, last)
        yield CounterMetricFamily(
            "sleepfed_server_history_recoveries",
            "times the history was found damaged, moved aside and salvaged",
            value=len(view.recoveries),
        )
        yield from _rejection_families(rounds, last)
        yield from _model_families(last)
        if boards is not None:
            family = GaugeMetricFamily(
                "sleepfed_server_boards", "enrolled boards, by status", labels=["status"]
            )
            for status, n in boards.items():
                family.add_metric([status], n)
            yield family

    def _readable(self, ok: bool) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sleepfed_server_history_readable",
            "1 if this scrape could read the history",
            value=1.0 if ok else 0.0,
        )
        yield CounterMetricFamily(
            "sleepfed_server_metrics_read_errors",
            "scrapes that could not read the history",
            value=self.read_errors,
        )


def _supervision_families(restarts: dict[str, int], sync_failures: int) -> Iterator[Metric]:
    family = CounterMetricFamily(
        "sleepfed_server_process_restarts",
        "times `run` restarted a child that had died (superlink, fleet_proxy)",
        labels=["process"],
    )
    for name, count in sorted(restarts.items()):
        family.add_metric([name], count)
    yield family
    yield CounterMetricFamily(
        "sleepfed_server_registry_sync_failures",
        "board registrations or revocations the SuperLink did not take (retried)",
        value=sync_failures,
    )


def _round_families(
    rounds: list[RoundFigures],
    runs: list[dict[str, object]],
    rolled_back: int,
    last: RoundFigures | None,
) -> Iterator[Metric]:
    """The rounds and runs in the history, round durations, boards in the last round."""
    yield GaugeMetricFamily(
        "sleepfed_server_rounds", "active rounds in the history", value=len(rounds)
    )
    yield GaugeMetricFamily(
        "sleepfed_server_rounds_rolled_back", "rounds rolled back", value=rolled_back
    )
    yield GaugeMetricFamily(
        "sleepfed_server_model_global_round",
        "global round of the current global model (0 = none yet)",
        value=last.global_round if last else 0,
    )
    runs_family = GaugeMetricFamily(
        "sleepfed_server_runs", "runs in the history, by status", labels=["status"]
    )
    for status in ("running", "finished", "failed", "interrupted"):
        runs_family.add_metric([status], sum(1 for r in runs if r["status"] == status))
    yield runs_family
    yield histogram(
        "sleepfed_server_round_duration_seconds",
        "round durations (from the previous round of the run, or the run's start)",
        [r.duration_seconds for r in rounds if r.duration_seconds is not None],
        ROUND_BUCKETS,
    )
    per_round = GaugeMetricFamily(
        "sleepfed_server_boards_last_round",
        "boards whose reply the last round used, by phase",
        labels=["phase"],
    )
    per_round.add_metric(["train"], last.train_nodes if last else 0)
    per_round.add_metric(["evaluate"], last.eval_nodes if last else 0)
    yield per_round


def _rejection_families(rounds: list[RoundFigures], last: RoundFigures | None) -> Iterator[Metric]:
    recorded = [r for r in rounds if r.rejected is not None]
    if not recorded:  # absent, not 0, when the history does not record rejections
        return
    yield CounterMetricFamily(
        "sleepfed_server_rejected_updates",
        "updates rejected before aggregation",
        value=sum(r.rejected or 0 for r in recorded),
    )
    yield GaugeMetricFamily(
        "sleepfed_server_rejected_updates_last_round",
        "updates the last round rejected",
        value=last.rejected or 0 if last else 0,
    )
    rejected = CounterMetricFamily(
        "sleepfed_server_rejected_updates_by_reason",
        "updates rejected before aggregation, by reason",
        labels=["reason"],
    )
    reasons: dict[str, int] = {}
    for r in recorded:
        for reason, n in r.rejected_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    for reason, n in sorted(reasons.items()):
        rejected.add_metric([reason], n)
    yield rejected


def _model_families(last: RoundFigures | None) -> Iterator[Metric]:
    """The current global model's held-out scores and the ε spent (absent when unknown)."""
    for name, value, doc in (
        ("auc", last.auc if last else None, "held-out AUC of the current global model"),
        ("loss", last.loss if last else None, "held-out log loss of the global model"),
        ("epsilon_spent", last.epsilon if last else None, "privacy budget ε spent so far"),
    ):
        if value is not None:
            yield GaugeMetricFamily(f"sleepfed_server_{name}", doc, value=value)
