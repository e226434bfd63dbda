"""The rounds of a run: one train message per board per round, and one last message.

Flower's ``Strategy.start`` sends every round a train message and then an evaluate message
to each board: two messages, two ClientApp processes on every board, per round. Here the
evaluation of round r's global model rides on round r+1's train message: its config names
the model's global round (``model-round``), and the board keeps and scores that model before
it trains on it (sleepfed.board.training.client_app), returning the scores with its update.
The last round's model reaches the boards in one evaluate message after the loop, which is
also the whole of an evaluation-only run (no round: the history's latest model is sent and
scored). Every strategy the server offers runs through here (they all aggregate through
``aggregate_train``; the DP wrapper delegates to it); SecAgg+ runs Flower's legacy workflow
instead (sleepfed.server.app.secure_aggregation), whose masked replies carry no scalar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from sleepfed.board.training.client_app import GOOD_SHARE_KEY, MODEL_ROUND_KEY
from sleepfed.common.packed_arrays import (
    PackedArraysError,
    is_packed,
    pack,
    unpack,
    without_packed,
)
from sleepfed.server.app.recording_strategy import RecordingFedAvg

log = logging.getLogger("sleepfed.server")

# How often the ServerApp asks the SuperLink for replies (Flower's send_and_receive: 3 s). A
# board ends its node a few seconds after its last reply (sleepfed.board.federation.session
# FINISH_GRACE_SECONDS), and the SuperLink answers a reply asked for after that with "node
# unavailable" although it holds the reply; a round also ends sooner, and a waiting board
# polls less.
PULL_INTERVAL_SECONDS = 0.5


def packed_message(message: Message) -> Message:
    message.content = pack(message.content)
    return message


def unpacked_reply(reply: Message) -> Message:
    """The reply with its arrays unpacked; arrays that do not unpack are left out (logged),
    and the update screening rejects the reply for its structure."""
    if reply.has_error() or not is_packed(reply.content):
        return reply
    try:
        reply.content = unpack(reply.content)
    except PackedArraysError as error:
        log.warning("node %d sent arrays that do not unpack: %s", reply.metadata.src_node_id, error)
        reply.content = without_packed(reply.content)
    return reply


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Flower's ``Grid.send_and_receive``, asking for the replies every
    ``PULL_INTERVAL_SECONDS``, with the model's arrays packed both ways
    (sleepfed.common.packed_arrays: fewer requests per message)."""
    waiting = set(grid.push_messages([packed_message(message) for message in messages]))
    replies: list[Message] = []
    end = time.monotonic() + timeout
    while waiting and time.monotonic() < end:
        got = list(grid.pull_messages(waiting))
        replies += [unpacked_reply(reply) for reply in got]
        waiting -= {reply.metadata.reply_to_message_id for reply in got}
        if waiting:
            time.sleep(PULL_INTERVAL_SECONDS)
    return replies


def train_config(
    base: dict[str, int | float | bool],
    model_round: int,
    good_share: float | None,
) -> ConfigRecord:
    """A round's train config: the training settings, the global round of the model the
    message carries (from round 1 of the history on: the initial model is nobody's to keep)
    and the boards' pooled share of Good windows of that round."""
    config: dict[str, int | float | bool] = dict(base)
    if model_round > 0:
        config[MODEL_ROUND_KEY] = model_round
    if good_share is not None and 0.0 < good_share < 1.0:
        config[GOOD_SHARE_KEY] = good_share
    return ConfigRecord(config)


def run_rounds(
    strategy: Strategy,
    recording: RecordingFedAvg,
    grid: Grid,
    *,
    initial: ArrayRecord,
    num_rounds: int,
    timeout: float,
    config_of_round: Callable[[int], ConfigRecord],
    evaluate_config: ConfigRecord,
    on_round: Callable[[int, ArrayRecord], None],
    on_evaluated: Callable[[int], None],
) -> ArrayRecord:
    """``num_rounds`` rounds of ``strategy`` (``recording`` is the recording strategy inside
    it, perhaps the same object), then the last model to every sampled board.

    ``config_of_round(r)`` is round r's train config (:func:`train_config`); ``on_round(r,
    arrays)`` persists round r; ``on_evaluated(r)`` records the boards' scores of round r's
    model once they arrived (r = 0: the model the run started from)."""
    arrays = initial
    for server_round in range(1, num_rounds + 1):
        log.info("[ROUND %d/%d]", server_round, num_rounds)
        config = config_of_round(server_round)
        if MODEL_ROUND_KEY in config:
            recording.scored_with_train.add(server_round)
        replies = send_and_receive(
            grid, strategy.configure_train(server_round, arrays, config, grid), timeout
        )
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        on_round(server_round, arrays)
        if server_round in recording.scored_with_train:
            on_evaluated(server_round - 1)
    replies = send_and_receive(
        grid, strategy.configure_evaluate(num_rounds, arrays, evaluate_config, grid), timeout
    )
    strategy.aggregate_evaluate(num_rounds, replies)
    on_evaluated(num_rounds)
    return arrays
