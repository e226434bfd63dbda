"""A ServerApp run under ``strategy = "fedbuff"`` (sleepfed.server.app.fedbuff_run): the real
ServerApp and the boards' real ClientApp in this process; each version is a history round,
and the boards keep the last one; the configurations it cannot run are refused."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.training import client_app
from sleepfed.common.config_fields import ConfigError
from sleepfed.model.walch import walch_dataset, walch_subjects
from sleepfed.server.app import server_app
from sleepfed.server.app.history import History
from sleepfed.server.app.strategies import StrategySettings
from sleepfed.server.ops.config import parse_config
from sleepfed.server.research.methods import EvaluationSettings, train_federated
from sleepfed.server.research.people import load_people
from sleepfed.server.research.simulation import InProcessGrid, prepare_buffers

BOARDS = 3


def test_each_fedbuff_version_is_a_round_of_the_history(tmp_path: Path, walch_dir: Path) -> None:
    subjects = walch_subjects(walch_dir)[:BOARDS]
    nights = walch_dataset(walch_dir, subjects)
    paths = prepare_buffers(tmp_path / "boards", [nights[s] for s in subjects])
    text = (resources.files("sleepfed.server.app") / "flower_app" / "pyproject.toml").read_text()
    config = {
        **tomllib.loads(text)["tool"]["flwr"]["app"]["config"],
        "strategy": "fedbuff",
        "buffer-size": 2,
        "num-rounds": 4,
        "min-nodes": BOARDS,
        "history-path": str(tmp_path / "history.db"),
        client_app.SIM_BUFFER_DIR_KEY: str(tmp_path / "boards"),
    }
    grid = InProcessGrid(client_app.app, BOARDS, config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    server_app.main(grid, context)  # type: ignore[arg-type]

    history = History(tmp_path / "history.db")
    try:
        rounds = history.rounds()
        runs = history.runs()
    finally:
        history.close()
    assert [r.global_round for r in rounds] == [1, 2, 3, 4]
    assert all(1 <= r.train_nodes <= 2 for r in rounds)  # K = 2 updates per version
    assert all("staleness-max" in r.train_metrics for r in rounds)
    assert max(r.train_metrics["staleness-max"] for r in rounds) >= 1  # a late update counted
    assert [run["status"] for run in runs] == ["finished"]
    for path in paths:  # every board keeps the last version (the final evaluate message)
        buffer = Buffer(path, readonly=True)
        try:
            assert max(r[1] for r in buffer.model_receipts()) == 4
        finally:
            buffer.close()


@pytest.mark.parametrize(
    ("privacy", "refused"),
    [
        ("secure_aggregation = true", r"SecAgg\+ needs synchronous cohorts"),
        ("differential_privacy = true\nnoise_multiplier = 1.0", "differential privacy"),
    ],
)
def test_fedbuff_refuses_what_it_cannot_run(tmp_path: Path, privacy: str, refused: str) -> None:
    data = tomllib.loads(
        f'[server]\nstate_dir = "state"\ninsecure = true\n'
        f'[federation]\nstrategy = "fedbuff"\n[privacy]\n{privacy}\n'
    )
    with pytest.raises(ConfigError, match=refused):
        parse_config(data, tmp_path)


def test_evaluate_trains_fedbuff_like_the_other_strategies(walch_dir: Path) -> None:
    people = load_people(walch_dir, walch_subjects(walch_dir)[:8])
    train, test = people[:6], people[6:]
    settings = EvaluationSettings(
        rounds=4, strategy=StrategySettings(name="fedbuff", buffer_size=3)
    )
    arrays, curve = train_federated(train, test, settings)
    assert len(curve) == 4 * 6 // 3  # as many board updates as 4 rounds of 6 boards
    assert curve[-1] > 0.7 and np.isfinite(arrays[0]).all()
    with pytest.raises(ValueError, match="in-process"):
        train_federated(train, test, replace(settings, engine="ray"))
