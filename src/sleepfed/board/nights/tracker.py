"""Finished nights: feature extraction into the buffer, and predictions with the latest model."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.personal_model import model_for_predictions
from sleepfed.board.nights.schedule import night_bounds, night_of
from sleepfed.board.service import clock
from sleepfed.board.sources.protocol import Kind
from sleepfed.model import logistic as model
from sleepfed.model.features import (
    EPOCH_SECONDS,
    epochs_from_readings,
    estimated_efficiency,
    night_quality,
    night_windows,
    reference_efficiency,
)

log = logging.getLogger("sleepfed.nights")


class NightTracker:
    """Knows which nights have new readings and when each is finished.

    A night is finished when its end (noon, local time) has passed on the board's wall
    clock and no reading for it has been committed for ``settle_seconds``, measured on the
    monotonic clock: a wall clock stepped back by hours does not hold a night back for
    hours once its end has passed, and one stepped forward does not skip the settling. Late
    readings make a night dirty again, and it is extracted anew (its windows replaced).
    """

    def __init__(
        self,
        tz: ZoneInfo,
        settle_seconds: float,
        wall: Callable[[], float] = clock.now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tz = tz
        self.settle_seconds = settle_seconds
        self.wall = wall
        self.monotonic = monotonic
        self.last_commit: dict[str, float] = {}  # night -> monotonic time of its last commit

    def saw(self, first: float, last: float) -> None:
        """Readings with timestamps from ``first`` to ``last`` were just committed."""
        now = self.monotonic()
        night, final = night_of(first, self.tz), night_of(last, self.tz)
        while True:
            self.last_commit[night] = now
            if night >= final:
                break
            night = (date.fromisoformat(night) + timedelta(days=1)).isoformat()

    def discover(self, buffer: Buffer) -> None:
        """After a restart: every night with readings but no extraction is pending."""
        now = self.monotonic()
        span = buffer.reading_time_span()
        if span is None:
            return
        done = set(buffer.night_names())
        first, last = span
        ts = first
        while ts <= last + 86400:
            night = night_of(ts, self.tz)
            if night not in done and night not in self.last_commit:
                self.last_commit[night] = now
            ts += 86400
        self.last_commit.pop(night_of(last + 86400, self.tz), None)

    def due(self) -> list[str]:
        wall, now = self.wall(), self.monotonic()
        ready = []
        for night, seen in self.last_commit.items():
            _, end = night_bounds(night, self.tz)
            if wall >= end and now - seen >= self.settle_seconds:
                ready.append(night)
        return sorted(ready)

    def done(self, night: str) -> None:
        self.last_commit.pop(night, None)


def extract_night(buffer: Buffer, night: str, tz: ZoneInfo) -> int:
    """Compute and store the windows of one night; returns the number of windows."""
    start, end = night_bounds(night, tz)
    # A device's battery level says nothing of the night: it must not move its first epoch.
    readings = [r for r in buffer.readings_between(start, end) if r[1] != Kind.BAT]
    labels = buffer.labels_between(start, end)
    stamps = [r[0] for r in readings] + [lab[0] for lab in labels]
    if not stamps:
        return 0
    first, last = min(stamps), max(stamps)
    # Epochs sit on the clock's 30-s grid (as actigraphs do), not on the first reading: a
    # reading a few milliseconds early (BLE delivery jitter) must not change its epoch.
    grid_start = math.floor(first / EPOCH_SECONDS) * EPOCH_SECONDS
    series = epochs_from_readings(readings, labels, grid_start, last)
    windows = night_windows(series)
    rows = [
        (
            grid_start + int(start_epoch) * EPOCH_SECONDS,
            [float(v) for v in features],
            int(label) if label >= 0 else None,
        )
        for start_epoch, features, label in zip(
            windows.start_epochs, windows.features, windows.labels, strict=True
        )
    ]
    buffer.save_night(
        night, first, last, len(series), rows, reference_efficiency(series), series.has_movement
    )
    log.info(
        "night=%s extracted epochs=%d windows=%d labelled=%d movement=%s",
        night,
        len(series),
        len(rows),
        sum(1 for r in rows if r[2] is not None),
        "yes" if series.has_movement else "none",
    )
    return len(rows)


def _usable_model(
    buffer: Buffer, version: int, server_round: int, blob: bytes
) -> model.Arrays | None:
    """Model ``version``'s arrays, or None: a corrupt blob must not stop the daemon (counted
    and logged once, the model marked unusable)."""
    try:
        arrays = model.arrays_from_bytes(blob)
        model.check_arrays(arrays)
    except Exception as error:
        buffer.bump_counters({"model_unusable": 1})
        buffer.set_state(unusable_model_version=version)
        log.error(
            "model=%d (round %d) cannot be used for predictions: %s: %s",
            version,
            server_round,
            type(error).__name__,
            error,
            extra={"ERROR_CLASS": "model_unusable"},
        )
        return None
    return arrays


def _predicting_model(
    buffer: Buffer, version: int, arrays: model.Arrays
) -> tuple[model.Arrays, str]:
    """The person's own model when it wins (sleepfed.board.nights.personal_model), else the
    global one; a failure there is counted and the global model predicts."""
    try:
        return model_for_predictions(buffer, version, arrays)
    except Exception as error:
        buffer.bump_counters({"personal_model_failed": 1})
        log.error(
            "personal model for model=%d failed: %s: %s", version, type(error).__name__, error
        )
        return arrays, "global"


def predict_nights(buffer: Buffer) -> list[tuple[str, float, str]]:
    """Predict every night that has no prediction from the latest model yet."""
    # Runs every second on the idle path: the model's arrays are read and decoded only
    # when some night still lacks a prediction from it.
    newest = buffer.latest_model_version()
    if newest is None:
        return []
    version, server_round = newest
    done = buffer.latest_predictions()
    pending = [n for n in buffer.night_names() if n not in done or done[n][0] < version]
    if not pending:
        return []
    latest = buffer.latest_model()
    assert latest is not None
    version, server_round, _, blob = latest  # a newer one may have arrived meanwhile
    state = buffer.state()
    if state.get("unusable_model_version") == version:
        return []  # already counted and logged; waits for the next round's model
    arrays = _usable_model(buffer, version, server_round, blob)
    if arrays is None:
        return []
    arrays, kind = _predicting_model(buffer, version, arrays)
    share = state.get("population_good_share")
    good_share = float(share) if isinstance(share, int | float) else None
    made = []
    still_unknown = buffer.nights_without_movement()
    for night in pending:
        rows = buffer.windows(night)
        if not rows:
            continue
        features = np.array([r[2] for r in rows], dtype=float)
        # A night without movement readings: the head that never learnt from movement.
        head = model.NO_MOVEMENT if night in still_unknown else model.FULL
        probabilities = model.good_probability(arrays, features, head)
        efficiency = estimated_efficiency(probabilities, good_share)
        if math.isnan(efficiency):
            continue
        quality = night_quality(efficiency)
        buffer.save_prediction(night, version, efficiency, quality, kind, model.HEADS[head])
        made.append((night, efficiency, quality))
        log.info(
            "night=%s predicted efficiency=%.3f quality=%s model=%d (round %d, %s, %s head)",
            night,
            efficiency,
            quality,
            version,
            server_round,
            kind,
            model.HEADS[head],
            extra={"ROUND": server_round},
        )
    return made
