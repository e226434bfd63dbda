"""Running the boards' own ClientApp on prepared buffers, without boards.

``prepare_buffers`` writes one real SQLite buffer per virtual board
(``partition-{id}.db``, the file the ClientApp opens when its node config carries
``partition-id`` instead of ``buffer-path``; see
:func:`sleepfed.board.training.client_app.buffer_path`).
``run_federated`` then runs a Flower strategy's own ``start`` loop over those boards and
returns every round's global model:

* ``engine="inprocess"``: :class:`InProcessGrid` hands each Flower ``Message`` to the
  ClientApp object in this process (mods included), one ``Context`` per virtual board. Same
  strategy code, same ClientApp code, same buffers; no transport and no Ray, so a fold of
  the evaluation takes seconds.
* ``engine="ray"``: Flower's simulation engine (``flwr.simulation.run_simulation``, Ray
  backend, from ``flwr[simulation]``), each board's ClientApp run by a Ray actor. Seen here:
  4 boards x 3 rounds in ~90 s, same model as in-process; on a heavily loaded machine Ray's
  raylet can time out at start, and Flower then leaves its ServerApp thread waiting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.training import client_app as board_app
from sleepfed.model import logistic as model
from sleepfed.model.features import NightWindows

ENGINES = ("inprocess", "ray")
SIM_NIGHT = "2026-01-01"


def _night_rows(night: NightWindows) -> list[tuple[float, list[float], int | None]]:
    return [
        (float(start) * 30.0, [float(v) for v in feats], int(label) if label >= 0 else None)
        for start, feats, label in zip(
            night.start_epochs, night.features, night.labels, strict=True
        )
    ]


def simulated_night_name(label: str, day: int) -> str:
    """The name of a prepared night (the board's held-out rule hashes it)."""
    return f"sim-{label}-{day:04d}"


def prepare_buffers(
    folder: str | Path,
    partitions: Sequence[NightWindows | Sequence[NightWindows]],
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """One buffer per partition in ``folder``: partition ``i`` → ``partition-{i}.db``.

    A partition is one night's windows or a list of nights (stored as consecutive days),
    named by :func:`simulated_night_name` from ``labels[i]`` (default: ``i``), so that a
    person keeps the same held-out windows whichever partition they land in.
    Existing files of the same name are replaced.
    """
    if labels is not None and len(labels) != len(partitions):
        raise ValueError(f"{len(labels)} labels for {len(partitions)} partitions")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for pid, partition in enumerate(partitions):
        nights = [partition] if isinstance(partition, NightWindows) else list(partition)
        path = folder / board_app.simulation_buffer_name(pid)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        buffer = Buffer(path, synchronous="normal")
        try:
            for day, night in enumerate(nights):
                name = simulated_night_name(labels[pid] if labels else str(pid), day)
                epochs = len(night.labels) * 20
                buffer.save_night(name, 0.0, epochs * 30.0, epochs, _night_rows(night), None)
        finally:
            buffer.close()
        paths.append(path)
    return paths


class InProcessGrid(Grid):
    """A Flower Grid whose nodes are ClientApp calls in this process (one Context each)."""

    def __init__(
        self, client_app: ClientApp, num_nodes: int, run_config: dict[str, object]
    ) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(run_id=1)
        self._contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": node_id - 1, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),  # type: ignore[arg-type]
            )
            for node_id in range(1, num_nodes + 1)
        }
        self._replies: dict[str, Message] = {}
        # What the simulation engine sets for its ServerApp thread: messages need it.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_run_id"] = self._run.run_id
            context = self._contexts[message.metadata.dst_node_id]
            try:
                reply = self._client_app(message, context)
            except Exception as error:  # a board's failure is an error reply, as on a link
                reason = f"{type(error).__name__}: {error}"
                reply = Message(Error(code=0, reason=reason), reply_to=message)
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


RoundCallback = Callable[[int, model.Arrays], None]


def run_federated(
    strategy: Strategy,
    buffers_dir: str | Path,
    num_boards: int,
    *,
    rounds: int,
    initial: model.Arrays | None = None,
    train_config: dict[str, object] | None = None,
    engine: str = "inprocess",
    client_app: ClientApp | None = None,
    run_config: dict[str, Any] | None = None,
    on_round: RoundCallback | None = None,
) -> list[model.Arrays]:
    """Run ``strategy`` for ``rounds`` over ``num_boards`` prepared buffers.

    Returns the global model after each round (index 0 = after round 1). ``on_round`` is
    called with each round's number and global model (e.g. to score it on held-out people).
    ``run_config`` adds entries to the ClientApp's run config (in-process engine only: the
    simulation engine's Python API carries none).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    client_app = client_app or board_app.app
    initial = initial or model.initial_arrays()
    per_round: list[model.Arrays] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round > 0:
            ndarrays = [np.asarray(a, dtype=float) for a in arrays.to_numpy_ndarrays()]
            per_round.append(ndarrays)
            if on_round is not None:
                on_round(server_round, ndarrays)
        return None

    def start(grid: Grid) -> None:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial),
            num_rounds=rounds,
            timeout=600.0,
            train_config=ConfigRecord(dict(train_config or {})),  # type: ignore[arg-type]
            evaluate_fn=evaluate_fn,
        )

    if engine == "inprocess":
        config = {**(run_config or {}), board_app.SIM_BUFFER_DIR_KEY: str(buffers_dir)}
        start(InProcessGrid(client_app, num_boards, config))
    else:
        if run_config:
            raise ValueError("engine 'ray' takes no run_config (Flower's Python API has none)")
        _run_ray(start, client_app, num_boards, str(buffers_dir))
    if len(per_round) != rounds:
        raise RuntimeError(f"federated run ended after {len(per_round)} of {rounds} rounds")
    return per_round


def _run_ray(
    start: Callable[[Grid], None], client_app: ClientApp, num_boards: int, buffers_dir: str
) -> None:
    """Flower's simulation engine (Ray). Its Python API carries no run config to the
    ClientApp, so the buffer folder travels in the environment of the Ray workers."""
    from flwr.simulation import run_simulation

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        start(grid)

    os.environ[board_app.SIM_BUFFER_DIR_ENV] = buffers_dir
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_boards,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2},  # Ray's workers inherit this environment
        },
    )
