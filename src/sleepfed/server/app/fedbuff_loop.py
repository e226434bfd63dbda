"""FedBuff on Flower's Grid: boards get the current model as soon as they are online and
idle, their updates are taken as they arrive, and every K of them make a new version
(sleepfed.server.app.fedbuff).

A board never has two tasks in flight: it gets a new train message only once its last one is
answered, or has waited ``task_timeout`` seconds (its node went away; a reply after that is
not taken). Each reply is unpacked (sleepfed.common.packed_arrays) and screened by the
server's update validation against the model the board trained from, its rules that need a
majority (norm and num-examples outliers) counting the updates accepted in the last two
versions' time beside it; a rejected one is logged and counted and changes nothing. The
train message names the version it carries (``model-round``): the board keeps that model and
scores it before training, as in a synchronous round.

The ServerApp runs it under ``strategy = "fedbuff"`` (sleepfed.server.app.fedbuff_run).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid

from sleepfed.board.training.client_app import MODEL_ROUND_KEY
from sleepfed.server.app.fedbuff import Contribution, FedBuffBuffer
from sleepfed.server.app.reply_records import arrays_of, metrics_of
from sleepfed.server.app.round_loop import PULL_INTERVAL_SECONDS, packed_message, unpacked_reply
from sleepfed.server.app.update_validation import Rejection, ValidationRules, validate_replies

log = logging.getLogger("sleepfed.server")

# The updates the majority rules count beside a new one: those of the last two versions.
RECENT_UPDATES_PER_VERSION = 2

OnVersion = Callable[[int, list[Contribution]], None]


@dataclass
class Task:
    message_id: str
    base_version: int
    sent_at: float


@dataclass
class LoopCounts:
    sent: int = 0
    taken: int = 0
    rejected: int = 0  # by the update validation
    stale: int = 0  # over max_staleness
    errors: int = 0  # error replies
    expired: int = 0  # no reply within task_timeout
    rejections: list[Rejection] = field(default_factory=list)  # each, in order


TrainConfig = dict[str, int | float | bool]


def _train_message(
    grid: Grid, buffer: FedBuffBuffer, node: int, base: TrainConfig, offset: int
) -> Message:
    config: TrainConfig = dict(base)
    if offset + buffer.version > 0:  # the initial model is nobody's to keep
        config[MODEL_ROUND_KEY] = offset + buffer.version
    content = RecordDict({"arrays": ArrayRecord(buffer.model), "config": ConfigRecord(config)})
    return grid.create_message(content, MessageType.TRAIN, node, group_id=str(buffer.version))


def _take(
    reply: Message,
    task: Task,
    buffer: FedBuffBuffer,
    rules: ValidationRules,
    recent: deque[tuple[float, float]],
    counts: LoopCounts,
    uniform_weights: bool = False,
) -> bool:
    """Offer one reply to the buffer; whether a new version was made. ``recent``: the
    (norm, num-examples) of the updates accepted lately, which the validation's majority
    rules (norm and num-examples outliers) count beside this one. ``uniform_weights``
    (differential privacy): no scalar of the board is read, every update weighs 1."""
    node = reply.metadata.src_node_id
    if reply.has_error():
        counts.errors += 1
        log.warning("fedbuff: node %d answered with an error: %s", node, reply.error.reason)
        return False
    if buffer.refuse_if_stale(task.base_version):
        counts.stale += 1
        return False
    base = buffer.model_of(task.base_version)
    assert base is not None  # not stale
    _, rejected, norms = validate_replies(
        [reply], base, rules, use_scalars=not uniform_weights, recent=recent
    )
    if rejected:
        counts.rejected += 1
        counts.rejections.append(rejected[0])
        log.warning("fedbuff: rejected the update of node %d (%s)", node, rejected[0].reason)
        return False
    arrays, metrics = arrays_of(reply), metrics_of(reply)
    assert arrays is not None  # validated
    examples = 1.0 if uniform_weights else float(metrics[rules.weight_key])  # type: ignore[index,arg-type]
    recent.append((norms[node], examples))
    counts.taken += 1
    return buffer.offer(node, task.base_version, arrays.to_numpy_ndarrays(), examples) == (
        "aggregated"
    )


def run_fedbuff_loop(
    grid: Grid,
    buffer: FedBuffBuffer,
    *,
    versions: int,
    train_config: TrainConfig,
    rules: ValidationRules,
    task_timeout: float,
    on_version: OnVersion,
    deadline: float | None = None,
    poll_seconds: float = PULL_INTERVAL_SECONDS,
    global_offset: int = 0,
    uniform_weights: bool = False,
    counts: LoopCounts | None = None,
) -> LoopCounts:
    """Run until the buffer made ``versions`` versions (or ``deadline``, monotonic time),
    asking for replies and for idle boards every ``poll_seconds``. ``global_offset``: the
    history's global round of the buffer's version 0 (a run resumed after earlier ones); the
    train messages name their model's global round. ``uniform_weights``: see :func:`_take`.
    A buffer with ``one_update_per_board`` sends a board no task while its update waits.
    ``counts``: where to count (read while the loop runs, e.g. by ``on_version``)."""
    counts = counts if counts is not None else LoopCounts()
    tasks: dict[int, Task] = {}
    recent: deque[tuple[float, float]] = deque(
        maxlen=RECENT_UPDATES_PER_VERSION * buffer.buffer_size
    )
    while buffer.version < versions and (deadline is None or time.monotonic() < deadline):
        now = time.monotonic()
        for node, task in list(tasks.items()):
            if now - task.sent_at > task_timeout:
                del tasks[node]
                counts.expired += 1
        idle = [
            n
            for n in grid.get_node_ids()
            if n not in tasks and not (buffer.one_update_per_board and buffer.holds_update_of(n))
        ]
        if idle:
            messages = [
                packed_message(_train_message(grid, buffer, n, train_config, global_offset))
                for n in idle
            ]
            for node, message_id in zip(idle, grid.push_messages(messages), strict=True):
                tasks[node] = Task(message_id, buffer.version, now)
            counts.sent += len(idle)
        by_message = {task.message_id: node for node, task in tasks.items()}
        for reply in grid.pull_messages(list(by_message)):
            node = by_message[reply.metadata.reply_to_message_id]
            task = tasks.pop(node)
            if _take(unpacked_reply(reply), task, buffer, rules, recent, counts, uniform_weights):
                on_version(buffer.version, buffer.last_contributions)
        time.sleep(poll_seconds)
    return counts
