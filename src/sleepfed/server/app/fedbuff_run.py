"""A ServerApp run under ``strategy = "fedbuff"``: the run's rounds are FedBuff versions
(sleepfed.server.app.fedbuff_loop), each persisted to the history like a round, then the
last version to every online board in one evaluate message.

A version's history row: its model, the boards whose updates made it (``train_nodes``), its
staleness (``staleness-max``, ``staleness-mean``, ``stale-rejected`` so far), the updates the
screening rejected, and the server's held-out scores. The run ends when it made its versions,
or after ``num_rounds`` × the round timeout without them (logged; the versions made are kept
and the next run goes on from the last one).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from sleepfed.model import logistic as model
from sleepfed.server.app.fedbuff import Contribution, FedBuffBuffer
from sleepfed.server.app.fedbuff_loop import LoopCounts, run_fedbuff_loop
from sleepfed.server.app.privacy import PrivacySettings
from sleepfed.server.app.round_loop import send_and_receive
from sleepfed.server.app.strategies import StrategySettings
from sleepfed.server.app.update_validation import Rejection, ValidationRules

log = logging.getLogger("sleepfed.server")

# (version, model, contributions, buffer, updates rejected since the last version) → the
# history row is written
Persist = Callable[[int, model.Arrays, list[Contribution], FedBuffBuffer, list[Rejection]], None]


def staleness_metrics(contributions: list[Contribution], buffer: FedBuffBuffer) -> dict[str, float]:
    """A version's staleness: max, mean, the updates refused as too stale so far, and the
    histogram (``staleness-τ``: how many of its updates were τ versions old)."""
    ages = [c.staleness for c in contributions]
    histogram = Counter(ages)
    return {
        "staleness-max": float(max(ages, default=0)),
        "staleness-mean": float(sum(ages) / len(ages)) if ages else 0.0,
        "stale-rejected": float(buffer.rejected_stale),
        **{f"staleness-{tau}": float(n) for tau, n in sorted(histogram.items())},
    }


def version_row(
    version: int, ndarrays: model.Arrays, used: list[Contribution], buffer: FedBuffBuffer
) -> dict[str, object]:
    """A version's fields of its history row (History.add_round)."""
    return {
        "server_round": version,
        "arrays": model.arrays_to_bytes(ndarrays),
        "train_metrics": staleness_metrics(used, buffer),
        "eval_metrics": {},
        "train_nodes": len({c.node_id for c in used}),
        "eval_nodes": 0,
    }


def new_buffer(
    initial: model.Arrays,
    settings: StrategySettings,
    rules: ValidationRules,
    privacy: PrivacySettings | None = None,
) -> FedBuffBuffer:
    """The buffer of ``settings`` (K, max staleness, server learning rate), a board's
    examples capped as the validation caps them; under DP (``privacy``) one update per
    board a version and noise σ·C/K on each version's mean update (sleepfed.server.app.fedbuff)."""
    dp = privacy is not None and privacy.dp
    return FedBuffBuffer(
        initial,
        settings.buffer_size,
        settings.max_staleness,
        float(rules.max_num_examples),
        settings.server_learning_rate,
        one_update_per_board=dp,
        noise_stddev=(
            privacy.noise_multiplier * privacy.clipping_norm / settings.buffer_size
            if privacy is not None and dp
            else 0.0
        ),
    )


def run_fedbuff(
    grid: Grid,
    *,
    initial: model.Arrays,
    rounds: tuple[int, int],
    settings: StrategySettings,
    rules: ValidationRules,
    training: dict[str, int | float | bool],
    round_timeout: float,
    persist: Persist,
    privacy: PrivacySettings | None = None,
) -> FedBuffBuffer:
    """``rounds``: the history's last round before the run, and the versions to make. Under
    DP (``privacy``; ``rules`` already cap an update's norm at C) the boards are asked to
    clip to C and send no scalar, and every update weighs 1."""
    start_round, versions = rounds
    buffer = new_buffer(initial, settings, rules, privacy)
    dp = privacy is not None and privacy.dp
    if privacy is not None and dp:
        training = {**training, KEY_CLIPPING_NORM: privacy.clipping_norm}
    counts = LoopCounts()
    reported = 0  # rejections already written with a version

    def on_version(version: int, used: list[Contribution]) -> None:
        nonlocal reported
        persist(version, buffer.model, used, buffer, counts.rejections[reported:])
        reported = len(counts.rejections)

    run_fedbuff_loop(
        grid,
        buffer,
        versions=versions,
        train_config=training,
        uniform_weights=dp,
        rules=rules,
        task_timeout=round_timeout,
        on_version=on_version,
        deadline=time.monotonic() + versions * round_timeout,
        global_offset=start_round,
        counts=counts,
    )
    log.info(
        "fedbuff: %d versions from %d updates (%d rejected, %d too stale, %d errors, %d "
        "without a reply)",
        buffer.version,
        counts.taken,
        counts.rejected,
        counts.stale,
        counts.errors,
        counts.expired,
    )
    if buffer.version < versions:
        log.warning("fedbuff: %d of %d versions made in the run's time", buffer.version, versions)
    _send_last_version(grid, buffer, start_round, round_timeout)
    return buffer


def _send_last_version(
    grid: Grid, buffer: FedBuffBuffer, start_round: int, round_timeout: float
) -> None:
    """The last version to every online board in one evaluate message (they keep it)."""
    if buffer.version == 0:
        return
    evaluate_config: dict[str, int | float | bool] = {
        "server-round": buffer.version,
        "global-round-offset": start_round,
        "final-global-round": start_round + buffer.version,
    }
    messages = [
        grid.create_message(
            RecordDict(
                {"arrays": ArrayRecord(buffer.model), "config": ConfigRecord(evaluate_config)}
            ),
            MessageType.EVALUATE,
            node,
            group_id="final",
        )
        for node in grid.get_node_ids()
    ]
    send_and_receive(grid, messages, round_timeout)
