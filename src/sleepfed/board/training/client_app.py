"""The sleepfed ClientApp: what a board runs when the server asks it to train or evaluate.

It is installed with the agent and started by the board's own ``flower-supernode`` (a child
of the daemon); the node config carries the path of the board's buffer. Only model arrays
and scalar metrics leave the board: never readings, timestamps or night names; and under DP
or SecAgg+ only the (clipped or masked) arrays:
``sleepfed.board.training.privacy_mods.withhold_scalars_mod``
empties the scalar metrics then.

* train: when the message names the global round of the model it carries (``model-round``,
  every round but a run's first), first keep that model and score it on the board's held-out
  windows, as evaluate does; the scores travel with the update (``eval-*`` metrics), so a
  round costs one message. Then, from the global arrays, take the configured number of
  fixed-size gradient steps (``local-iterations``, ``learning-rate``;
  :mod:`sleepfed.model.objective`) on the board's labelled windows (all but the held-out
  ones) and return the new arrays.
* evaluate: keep the global model (it is the board's latest model, used for its nightly
  predictions) with the boards' pooled share of Good windows when the server sends it (the
  prior of the board's night estimates), and score the model on the board's held-out windows.
  The server sends it once per run, with the last round's model, or alone in an
  evaluation-only run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.labelled_windows import labelled_windows
from sleepfed.board.training.privacy_mods import CLIENT_MODS
from sleepfed.model import logistic as model
from sleepfed.model import objective

app = ClientApp(mods=CLIENT_MODS)  # secure aggregation and DP clipping, when asked for

# Train metric (the board's share of Good training windows) and evaluate config (the boards'
# pooled share, from the server): the prior that calibrates the board's night estimates.
GOOD_SHARE_KEY = "good-share"
# Train config: the global round of the model the message carries (the board keeps and
# scores it before training). Reply metrics: its scores on the held-out windows.
MODEL_ROUND_KEY = "model-round"
EVAL_LOSS_KEY = "eval-loss"
EVAL_ACCURACY_KEY = "eval-accuracy"
EVAL_EXAMPLES_KEY = "eval-examples"
EVAL_KEYS = (EVAL_LOSS_KEY, EVAL_ACCURACY_KEY, EVAL_EXAMPLES_KEY)


def _score(
    arrays: model.Arrays, features: np.ndarray, labels: np.ndarray, movement: np.ndarray
) -> dict[str, float]:
    """Loss and accuracy, each window by the head its night calls for."""
    if len(labels) == 0:
        return {"loss": 0.0, "accuracy": 0.0}
    probabilities = model.probability_by_window(arrays, features, movement)
    return {
        "loss": model.log_loss(arrays, features, labels, movement),
        "accuracy": float(((probabilities >= 0.5).astype(int) == labels).mean()),
    }


SIM_BUFFER_DIR_KEY = "sim-buffer-dir"
SIM_BUFFER_DIR_ENV = "SLEEPFED_SIM_BUFFER_DIR"


def simulation_buffer_name(partition_id: int) -> str:
    """The buffer file of virtual board ``partition_id`` (server.research.simulation)."""
    return f"partition-{partition_id}.db"


def buffer_path(context: Context) -> Path:
    """The board's buffer: ``buffer-path`` on a board, a prepared file in simulation.

    Flower's simulation engine gives a virtual board ``partition-id`` and no ``buffer-path``;
    it then uses ``partition-{id}.db`` in the folder named by the run config key
    ``sim-buffer-dir`` (or the environment variable ``SLEEPFED_SIM_BUFFER_DIR``, which the
    simulation's Python API can pass where a run config cannot), prepared beforehand by
    ``sleepfed.server.research.simulation.prepare_buffers``. The ClientApp is otherwise the same.
    """
    node = context.node_config
    if "buffer-path" in node:
        return Path(str(node["buffer-path"]))
    if "partition-id" not in node:
        raise ValueError("node config has neither buffer-path nor partition-id")
    folder = str(context.run_config.get(SIM_BUFFER_DIR_KEY, "")) or os.environ.get(
        SIM_BUFFER_DIR_ENV, ""
    )
    if not folder:
        raise ValueError(
            f"simulated board (partition-id {node['partition-id']}) but no run config "
            f"{SIM_BUFFER_DIR_KEY} nor {SIM_BUFFER_DIR_ENV}"
        )
    path = Path(folder) / simulation_buffer_name(int(node["partition-id"]))
    if not path.exists():
        raise ValueError(f"simulated board: no prepared buffer at {path}")
    return path


def _open_buffer(context: Context) -> Buffer:
    return Buffer(buffer_path(context))


def _adopt_global_model(
    buffer: Buffer,
    arrays: model.Arrays,
    global_round: int,
    msg: Message,
    final_round: int,
) -> dict[str, float]:
    """Keep the global model of ``global_round`` as the board's latest (with the pooled share
    of Good windows when sent) and score it on the held-out windows."""
    config = msg.content["config"]
    version = buffer.save_model(
        global_round, str(msg.metadata.run_id), model.arrays_to_bytes(arrays)
    )
    windows = labelled_windows(buffer)
    held_out = windows.held_out
    test_y = windows.labels[held_out]
    scores = _score(arrays, windows.features[held_out], test_y, windows.movement[held_out])
    buffer.bump_counters({"rounds_evaluated": 1})
    state: dict[str, object] = {
        "model_version": version,
        "model_round": global_round,
        "last_participation_at": time.time(),
    }
    if global_round == final_round:
        state["run_finished"] = str(msg.metadata.run_id)
    share = config.get(GOOD_SHARE_KEY)
    if isinstance(share, int | float) and 0.0 < float(share) < 1.0:  # NaN fails too
        state["population_good_share"] = float(share)
    buffer.set_state(**state)
    return {
        EVAL_LOSS_KEY: scores["loss"],
        EVAL_ACCURACY_KEY: scores["accuracy"],
        EVAL_EXAMPLES_KEY: len(test_y),
    }


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    model.check_arrays(arrays)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    steps = int(config.get("local-iterations", objective.DEFAULT_STEPS))
    learning_rate = float(config.get("learning-rate", objective.DEFAULT_LEARNING_RATE))
    # FedProx (sleepfed.server.app.strategies) sends its proximal term's weight
    mu = float(config.get("proximal-mu", 0.0))
    model_round = config.get(MODEL_ROUND_KEY)
    buffer = _open_buffer(context)
    try:
        evaluation: dict[str, float] = {}
        if isinstance(model_round, int) and model_round > 0:
            evaluation = _adopt_global_model(buffer, arrays, model_round, msg, final_round=-1)
        windows = labelled_windows(buffer)
        training = ~windows.held_out
        train_x, train_y = windows.features[training], windows.labels[training]
        movement = windows.movement[training]
        started = time.perf_counter()
        new_arrays = model.train(
            arrays,
            train_x,
            train_y,
            movement=movement,
            steps=steps,
            learning_rate=learning_rate,
            mu=mu,
        )
        seconds = time.perf_counter() - started
        scores = _score(new_arrays, train_x, train_y, movement)
        buffer.bump_counters({"rounds_trained": 1})
        buffer.set_state(
            last_train_round=server_round,
            last_trained_from=model_round if isinstance(model_round, int) else 0,
            last_train_at=time.time(),
        )
    finally:
        buffer.close()
    metrics = MetricRecord(
        {
            "num-examples": len(train_y),
            "train-loss": scores["loss"],
            "train-accuracy": scores["accuracy"],
            "train-seconds": seconds,
            GOOD_SHARE_KEY: float(train_y.mean()) if len(train_y) else 0.0,
            **evaluation,
        }
    )
    reply = RecordDict({"arrays": ArrayRecord(new_arrays), "metrics": metrics})
    return Message(content=reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    model.check_arrays(arrays)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    global_round = int(config.get("global-round-offset", 0)) + server_round
    final_round = int(config.get("final-global-round", -1))
    buffer = _open_buffer(context)
    try:
        evaluation = _adopt_global_model(buffer, arrays, global_round, msg, final_round)
    finally:
        buffer.close()
    metrics = MetricRecord(
        {
            "num-examples": max(int(evaluation[EVAL_EXAMPLES_KEY]), 1),  # FedAvg divides by the sum
            EVAL_LOSS_KEY: evaluation[EVAL_LOSS_KEY],
            EVAL_ACCURACY_KEY: evaluation[EVAL_ACCURACY_KEY],
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
