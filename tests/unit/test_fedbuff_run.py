"""A ServerApp run under ``strategy = "fedbuff"`` (sleepfed.server.app.fedbuff_run): the real
ServerApp and the boards' real ClientApp in this process; each version is a history round,
and the boards keep the last one; the configurations it cannot run are refused."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.training import client_app
from sleepfed.board.training.client_app import MODEL_ROUND_KEY
from sleepfed.common.config_fields import ConfigError
from sleepfed.common.packed_arrays import unpack
from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset, walch_subjects
from sleepfed.server.app import server_app
from sleepfed.server.app.history import History
from sleepfed.server.app.privacy import epsilon_spent, run_config_entries
from sleepfed.server.app.strategies import StrategySettings
from sleepfed.server.ops.config import parse_config
from sleepfed.server.ops.history_commands import format_round
from sleepfed.server.research.methods import EvaluationSettings, train_federated
from sleepfed.server.research.people import load_people
from sleepfed.server.research.simulation import InProcessGrid, prepare_buffers

BOARDS = 3


def _fleet(tmp_path: Path, walch_dir: Path, **settings: object) -> tuple[list[Path], dict]:
    """Prepared buffers of BOARDS real people and a fedbuff run config (K = 2, 4 versions)."""
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
        **settings,
    }
    return paths, config


def _run(grid: InProcessGrid, config: dict, run_id: int) -> None:
    context = Context(
        run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=config
    )
    server_app.main(grid, context)  # type: ignore[arg-type]


def _history(tmp_path: Path) -> tuple[list[Any], list[dict[str, Any]]]:
    history = History(tmp_path / "history.db")
    try:
        return history.rounds(), history.runs()
    finally:
        history.close()


def test_each_fedbuff_version_is_a_round_of_the_history(tmp_path: Path, walch_dir: Path) -> None:
    paths, config = _fleet(tmp_path, walch_dir)
    _run(InProcessGrid(client_app.app, BOARDS, config), config, 1)

    rounds, runs = _history(tmp_path)
    assert [r.global_round for r in rounds] == [1, 2, 3, 4]
    assert all(1 <= r.train_nodes <= 2 for r in rounds)  # K = 2 updates per version
    assert all("staleness-max" in r.train_metrics for r in rounds)
    assert max(r.train_metrics["staleness-max"] for r in rounds) >= 1  # a late update counted
    # the staleness histogram: K = 2 updates in each version, by their staleness
    for r in rounds:
        histogram = {k: v for k, v in r.train_metrics.items() if k[len("staleness-") :].isdigit()}
        assert sum(histogram.values()) == 2, r.train_metrics
        assert max(int(k.rsplit("-", 1)[1]) for k in histogram) == r.train_metrics["staleness-max"]
    assert [run["status"] for run in runs] == ["finished"]
    # `sleepfed-server history` prints a version's updates by staleness (version 1: two fresh)
    line = format_round(rounds[0])
    assert "nodes train 2 eval 0  staleness 0:2  no held-out set" in line, line
    for path in paths:  # every board keeps the last version (the final evaluate message)
        buffer = Buffer(path, readonly=True)
        try:
            assert max(r[1] for r in buffer.model_receipts()) == 4
        finally:
            buffer.close()


def _server_toml(tmp_path: Path, privacy: str) -> Any:
    data = tomllib.loads(
        f'[server]\nstate_dir = "state"\ninsecure = true\n'
        f'[federation]\nstrategy = "fedbuff"\n[privacy]\n{privacy}\n'
    )
    return parse_config(data, tmp_path)


def test_fedbuff_refuses_secure_aggregation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SecAgg\+ needs synchronous cohorts"):
        _server_toml(tmp_path, "secure_aggregation = true")


class KilledGrid(InProcessGrid):
    """The SuperLink goes away (raises) once the history holds ``versions`` rounds; records
    the model-round of each train message and the arrays it carried."""

    def __init__(self, history: Path, versions: int, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.history, self.versions = history, versions
        self.sent: list[tuple[object, np.ndarray]] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        if self.versions and len(_history(self.history.parent)[0]) >= self.versions:
            raise ConnectionError("the SuperLink went away")
        messages = list(messages)
        for message in messages:
            content = unpack(message.content)
            if message.metadata.message_type == "train":
                arrays = content["arrays"].to_numpy_ndarrays()[0]
                self.sent.append((content["config"].get(MODEL_ROUND_KEY), arrays))
        return super().push_messages(messages)


def test_a_fedbuff_run_cut_short_goes_on_from_its_last_version(
    tmp_path: Path, walch_dir: Path
) -> None:
    paths, config = _fleet(tmp_path, walch_dir)
    history_path = tmp_path / "history.db"
    with pytest.raises(ConnectionError):
        _run(KilledGrid(history_path, 2, client_app.app, BOARDS, config), config, 1)
    history = History(history_path)
    history.reopen_run("1")  # as the server does when its SuperLink was killed under the run
    history.close()
    resumed = KilledGrid(history_path, 0, client_app.app, BOARDS, config)
    _run(resumed, config, 2)

    rounds, runs = _history(tmp_path)
    # the cut run made 2 or 3 versions (a pull may bring the replies of two), the new run the
    # ones it had left
    done = sum(r.run_id == "1" for r in rounds)
    assert 2 <= done < 4 and [r.global_round for r in rounds] == [1, 2, 3, 4]
    assert [run["status"] for run in runs] == ["interrupted", "finished"]
    # the new run starts from the last version's model and names it by its global round
    first_round, first_arrays = resumed.sent[0]
    assert first_round == done
    np.testing.assert_array_equal(first_arrays, model.arrays_from_bytes(rounds[done - 1].arrays)[0])
    assert {r for r, _ in resumed.sent} <= set(range(done, 4))
    for path in paths:  # and the boards keep the last version, by its global round
        buffer = Buffer(path, readonly=True)
        try:
            assert max(r[1] for r in buffer.model_receipts()) == 4
        finally:
            buffer.close()


def test_fedbuff_under_dp_accounts_epsilon_per_version(tmp_path: Path, walch_dir: Path) -> None:
    settings = _server_toml(
        tmp_path, "differential_privacy = true\nnoise_multiplier = 1.0\nclipping_norm = 0.1"
    )
    assert settings.privacy.dp  # the combination is accepted
    _, config = _fleet(
        tmp_path, walch_dir, **run_config_entries(settings.privacy), **{"buffer-size": 3}
    )
    _run(InProcessGrid(client_app.app, BOARDS, config), config, 1)

    rounds, _ = _history(tmp_path)
    assert [r.global_round for r in rounds] == [1, 2, 3, 4]
    # one Gaussian mechanism per version: ε after version n is that of n releases at σ = 1
    epsilons = [r.privacy["epsilon"] for r in rounds]
    assert epsilons == pytest.approx([epsilon_spent([1.0] * n, 1e-5) for n in (1, 2, 3, 4)])
    assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1]
    # the boards weigh equally (they sent no num-examples) and each counts once a version
    assert all(r.train_nodes == 3 for r in rounds)


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
