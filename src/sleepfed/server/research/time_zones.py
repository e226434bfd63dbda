"""Federated training across time zones on a simulated clock: synchronous FedAvg and FedBuff
(sleepfed.server.app.fedbuff) over the same virtual fleet, side by side.

Each virtual board (sleepfed.server.research.partitions: one real person's labelled windows,
label-skewed) lives in a time zone and joins only inside its nightly participation window, in
its local time, as ``[federation] window`` makes a board do. A training takes it a fixed time
on the simulated clock (``slow_share`` of the boards ``slow_factor`` times longer); the
training itself is the boards' own (:func:`sleepfed.model.logistic.train`, the function their
ClientApp calls). A board that starts a training finishes it, even past its window.

* **FedAvg**: a round starts once at least ``min_nodes`` boards are online and idle, with all
  of them. It ends when its last board replies, or at ``round_timeout`` (a reply later than
  that is lost, and the round counts as having waited out its timeout). The new model is the
  example-weighted mean of the replies.
* **FedBuff**: every online, idle board gets the current model at once; its reply is buffered
  when it arrives, and every ``buffer_size`` replies make a new version (staleness-discounted,
  examples capped; replies over ``max_staleness`` versions old are rejected). A board that
  replied and is still online gets the newest model at once.

After every round or version the model is scored: window AUC on people no board holds.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sleepfed.model import logistic as model
from sleepfed.server.app.fedbuff import FedBuffBuffer
from sleepfed.server.app.update_validation import DEFAULT_MAX_NUM_EXAMPLES
from sleepfed.server.research.partitions import VirtualBoard

Arrays = list[np.ndarray]
Score = Callable[[Arrays], float]
HOUR = 3600.0


@dataclass(frozen=True)
class FleetSettings:
    """The virtual fleet and its clock (times in seconds, zones and window in hours)."""

    zones: tuple[float, ...] = (-8.0, -5.0, -3.0, 0.0, 3.0, 5.5, 9.0)
    window: tuple[float, float] = (1.0, 5.0)  # local time: from 01:00 to 05:00
    train_seconds: float = 120.0
    slow_share: float = 0.1
    slow_factor: float = 10.0
    steps: int = 20  # a training's gradient steps (the server's local-iterations)
    learning_rate: float = 0.5
    horizon_hours: float = 48.0
    tick_seconds: float = 60.0  # how often the server looks for boards that came online


@dataclass(frozen=True)
class SimBoard:
    features: np.ndarray
    labels: np.ndarray
    utc_offset_hours: float
    train_seconds: float


@dataclass
class Curve:
    """A strategy's run: (hours, board trainings so far, AUC) after each round or version."""

    strategy: str
    points: list[tuple[float, int, float]] = field(default_factory=list)
    timed_out: int = 0  # FedAvg rounds that waited out their timeout
    lost: int = 0  # FedAvg replies later than their round's timeout
    rejected_stale: int = 0  # FedBuff replies over max_staleness
    boards_counted: set[int] = field(default_factory=set)  # boards with a reply in a model

    def first_reaching(self, auc: float) -> tuple[float, int] | None:
        """(hours, trainings) at the first point whose AUC is at least ``auc``."""
        for hours, trainings, value in self.points:
            if value >= auc:
                return hours, trainings
        return None


def make_fleet(
    boards: Sequence[VirtualBoard], settings: FleetSettings, seed: int
) -> list[SimBoard]:
    """Boards spread over the zones round-robin; ``slow_share`` of them, at random, slow."""
    rng = np.random.default_rng(seed)
    zones = settings.zones
    fleet = []
    for index, board in enumerate(boards):
        labelled = board.windows.labelled
        slow = rng.random() < settings.slow_share
        seconds = settings.train_seconds * (settings.slow_factor if slow else 1.0)
        fleet.append(
            SimBoard(
                features=board.windows.features[labelled],
                labels=board.windows.labels[labelled],
                utc_offset_hours=zones[index % len(zones)],
                train_seconds=seconds,
            )
        )
    return fleet


def online(board: SimBoard, seconds: float, window: tuple[float, float]) -> bool:
    """Whether the board's local time (UTC ``seconds`` after the simulation's midnight) is in
    its window; a window may run over midnight (start > end)."""
    local = (seconds / HOUR + board.utc_offset_hours) % 24.0
    start, end = window
    return start <= local < end if start <= end else (local >= start or local < end)


def auc_on(features: np.ndarray, labels: np.ndarray) -> Score:
    return lambda arrays: model.auc(labels, model.good_probability(arrays, features))


def _train(board: SimBoard, arrays: Arrays, settings: FleetSettings) -> Arrays:
    return model.train(
        arrays,
        board.features,
        board.labels,
        steps=settings.steps,
        learning_rate=settings.learning_rate,
    )


def run_fedavg(
    fleet: Sequence[SimBoard],
    initial: Arrays,
    score: Score,
    settings: FleetSettings,
    *,
    min_nodes: int,
    round_timeout: float,
) -> Curve:
    curve = Curve("fedavg", [(0.0, 0, score(initial))])
    arrays, trainings, now = initial, 0, 0.0
    horizon = settings.horizon_hours * HOUR
    while now < horizon:
        cohort = [i for i, b in enumerate(fleet) if online(b, now, settings.window)]
        if len(cohort) < min_nodes:
            now += settings.tick_seconds
            continue
        in_time = [i for i in cohort if fleet[i].train_seconds <= round_timeout]
        curve.boards_counted |= set(in_time)
        if len(in_time) < len(cohort):
            curve.timed_out += 1
            curve.lost += len(cohort) - len(in_time)
        now += min(max(fleet[i].train_seconds for i in cohort), round_timeout)
        trainings += len(cohort)
        if in_time:
            weights = np.array([len(fleet[i].labels) for i in in_time], dtype=float)
            updates = [_train(fleet[i], arrays, settings) for i in in_time]
            arrays = [
                sum(w * u[k] for w, u in zip(weights, updates, strict=True)) / weights.sum()
                for k in range(len(arrays))
            ]
        curve.points.append((now / HOUR, trainings, score(arrays)))
    return curve


def run_fedbuff(
    fleet: Sequence[SimBoard],
    initial: Arrays,
    score: Score,
    settings: FleetSettings,
    *,
    buffer_size: int,
    max_staleness: int,
    server_learning_rate: float = 1.0,
) -> Curve:
    curve = Curve("fedbuff", [(0.0, 0, score(initial))])
    buffer = FedBuffBuffer(
        initial, buffer_size, max_staleness, DEFAULT_MAX_NUM_EXAMPLES, server_learning_rate
    )
    busy = [False] * len(fleet)
    flight: list[tuple[float, int, int, Arrays]] = []  # (replies at, board, base, arrays)
    trainings = 0

    def dispatch(index: int, at: float) -> None:
        board = fleet[index]
        trained = _train(board, buffer.model, settings)  # from the model it is sent now
        heapq.heappush(flight, (at + board.train_seconds, index, buffer.version, trained))
        busy[index] = True

    now, horizon = 0.0, settings.horizon_hours * HOUR
    while now < horizon:
        for index, board in enumerate(fleet):
            if not busy[index] and online(board, now, settings.window):
                dispatch(index, now)
        now += settings.tick_seconds
        while flight and flight[0][0] <= min(now, horizon):
            at, index, base, trained = heapq.heappop(flight)
            busy[index] = False
            trainings += 1
            outcome = buffer.offer(index, base, trained, len(fleet[index].labels))
            if outcome != "stale":
                curve.boards_counted.add(index)
            if outcome == "aggregated":
                curve.points.append((at / HOUR, trainings, score(buffer.model)))
            if online(fleet[index], at, settings.window):
                dispatch(index, at)
    curve.rejected_stale = buffer.rejected_stale
    return curve
