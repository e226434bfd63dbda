"""The simulation seam: the boards' own ClientApp on prepared buffers, no boards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp.strategy import FedAvg

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.training.client_app import buffer_path
from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset, walch_subjects
from sleepfed.server.research.simulation import prepare_buffers, run_federated


def _context(node_config: dict[str, object], run_config: dict[str, object]) -> Context:
    return Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def test_buffer_path_on_boards_and_in_simulation(tmp_path: Path) -> None:
    board = tmp_path / "buffer.db"
    assert buffer_path(_context({"buffer-path": str(board)}, {})) == board
    (tmp_path / "partition-3.db").touch()
    simulated = _context({"partition-id": 3, "num-partitions": 5}, {"sim-buffer-dir": tmp_path})
    assert buffer_path(simulated) == tmp_path / "partition-3.db"
    with pytest.raises(ValueError, match="no prepared buffer"):
        buffer_path(_context({"partition-id": 4}, {"sim-buffer-dir": str(tmp_path)}))
    with pytest.raises(ValueError, match="neither buffer-path nor partition-id"):
        buffer_path(_context({}, {}))


def test_federated_run_over_prepared_buffers(walch_dir: Path, tmp_path: Path) -> None:
    subjects = walch_subjects(walch_dir)[:3]
    nights = walch_dataset(walch_dir, subjects)
    paths = prepare_buffers(tmp_path, [nights[s] for s in subjects])
    assert [p.name for p in paths] == ["partition-0.db", "partition-1.db", "partition-2.db"]
    seen: list[int] = []
    per_round = run_federated(
        FedAvg(), tmp_path, 3, rounds=2, on_round=lambda r, _arrays: seen.append(r)
    )
    assert seen == [1, 2]
    assert [[x.shape for x in a] for a in per_round] == [[model.SHAPE], [model.SHAPE]]
    assert not np.allclose(per_round[0][0], 0.0)  # the boards trained
    for path, subject in zip(paths, subjects, strict=True):
        buffer = Buffer(path, readonly=True)
        try:
            assert buffer.counters()["rounds_trained"] == 2
            assert buffer.labelled_window_count() == int(nights[subject].labelled.sum())
        finally:
            buffer.close()
