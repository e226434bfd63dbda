"""Strategy selection (sleepfed.server.app.strategies), Flower's robust aggregators on crafted
replies,
the board's objective (FedProx's proximal term, FedAvg over fixed-size steps) and on-device
personalisation on a real subject."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from sleepfed.board.nights.labelled_windows import is_held_out
from sleepfed.common.config_fields import ConfigError
from sleepfed.model import logistic as model
from sleepfed.model import objective
from sleepfed.model.personalisation import personalise
from sleepfed.model.walch import walch_dataset
from sleepfed.server.app.recording_strategy import RecordingFedAvg
from sleepfed.server.app.strategies import STRATEGIES, StrategySettings, build_strategy
from sleepfed.server.ops.config import parse_config
from sleepfed.server.research.simulation import InProcessGrid

COMMON = {"fraction_train": 1.0, "min_train_nodes": 2, "min_available_nodes": 2}


@pytest.fixture
def one_blas_thread() -> Iterator[None]:
    """Tiny models: BLAS threads only spin on a shared machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _config(federation: str, tmp_path: Path) -> object:
    import tomllib

    text = f'[server]\nstate_dir = "state"\ninsecure = true\n[federation]\n{federation}\n'
    return parse_config(tomllib.loads(text), tmp_path)


@pytest.mark.parametrize(
    ("name", "flower_class"),
    [
        ("fedavg", FedAvg),
        ("fedprox", FedProx),
        ("fedmedian", FedMedian),
        ("fedtrimmedavg", FedTrimmedAvg),
        ("krum", Krum),
    ],
)
def test_each_strategy_is_built_with_the_servers_recording(
    name: str, flower_class: type, tmp_path: Path
) -> None:
    config = _config(f'strategy = "{name}"\nproximal_mu = 0.5\ntrimmed_beta = 0.1', tmp_path)
    assert config.strategy.name == name  # type: ignore[attr-defined]
    strategy = build_strategy(config.strategy, RecordingFedAvg, **COMMON)  # type: ignore[attr-defined]
    assert isinstance(strategy, flower_class)
    assert isinstance(strategy, RecordingFedAvg)
    # the chosen Flower class aggregates; the recording class only wraps it
    assert type(strategy).aggregate_train is RecordingFedAvg.aggregate_train
    mro = type(strategy).__mro__
    assert mro.index(RecordingFedAvg) < mro.index(flower_class) <= mro.index(FedAvg)
    if name == "fedprox":
        assert strategy.proximal_mu == 0.5
    if name == "fedtrimmedavg":
        assert strategy.beta == 0.1


def test_strategy_config_errors_name_the_field(tmp_path: Path) -> None:
    assert _config("", tmp_path).strategy == StrategySettings()  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"federation\.strategy: unknown strategy 'fedsgd'"):
        _config('strategy = "fedsgd"', tmp_path)
    with pytest.raises(ConfigError, match=r"federation\.trimmed_beta"):
        _config('strategy = "fedtrimmedavg"\ntrimmed_beta = 0.5', tmp_path)
    with pytest.raises(ConfigError, match=r"federation\.proximal_mu"):
        _config("proximal_mu = -1.0", tmp_path)
    with pytest.raises(ConfigError, match=r"federation\.strategy: expected str"):
        _config("strategy = 3", tmp_path)
    with pytest.raises(ConfigError, match=r"federation\.learning_rate: must be > 0"):
        _config("learning_rate = 0.0", tmp_path)
    with pytest.raises(ConfigError, match=r"federation\.local_iterations: must be >= 1"):
        _config("local_iterations = 0", tmp_path)
    tuned = _config("learning_rate = 1.5\nlocal_iterations = 40", tmp_path)
    assert (tuned.learning_rate, tuned.local_iterations) == (1.5, 40)  # type: ignore[attr-defined]
    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum"}


# five boards' models: every coordinate of board i holds VALUES[i]; the last is an outlier
VALUES = [1.0, 2.0, 2.5, 4.0, 100.0]


def _replies() -> list[Message]:
    grid = InProcessGrid(ClientApp(), len(VALUES), {})  # sets Flower's task identity
    replies = []
    for node, value in enumerate(VALUES, start=1):
        request = grid.create_message(RecordDict(), "train", node, "1")
        request.metadata.__dict__["_message_id"] = f"m{node}"
        arrays = [np.full(model.SHAPE, value)]
        content = RecordDict(
            {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 10})}
        )
        replies.append(Message(content, reply_to=request))
    return replies


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (FedAvg(), np.mean(VALUES)),  # 21.9: dragged by the outlier
        (FedMedian(), 2.5),
        (FedTrimmedAvg(beta=0.2), np.mean([2.0, 2.5, 4.0])),  # drops 1 and 100
        # Krum, f = 1: each scores its n - f - 2 = 2 nearest; 2.0 has 0.25 + 1 (least)
        (Krum(num_malicious_nodes=1), 2.0),
    ],
)
def test_aggregate_on_crafted_replies_is_what_the_math_says(
    strategy: FedAvg, expected: float
) -> None:
    arrays, metrics = strategy.aggregate_train(1, _replies())
    assert arrays is not None
    (theta,) = arrays.to_numpy_ndarrays()
    assert theta == pytest.approx(np.full(model.SHAPE, expected))
    assert metrics is not None


def _subject_windows(walch_dir: Path, subject: str) -> tuple[np.ndarray, ...]:
    night = walch_dataset(walch_dir, [subject])[subject]
    held = np.array([is_held_out("n", float(s) * 30.0) for s in night.start_epochs])
    train, test = night.labelled & ~held, night.labelled & held
    return night.features[train], night.labels[train], night.features[test], night.labels[test]


def test_the_objective_is_sklearns_and_the_proximal_term_holds_the_model(
    walch_dir: Path, one_blas_thread: None
) -> None:
    x, y, _, _ = _subject_windows(walch_dir, "46343")
    start = model.initial_arrays()[0][model.FULL]
    reference = model.fit(x, y, iterations=500)[0][model.FULL]  # scikit-learn, C = 1/(alpha n)
    free = objective.fit_proximal(start, x, y, mu=0.0, iterations=500)
    assert np.abs(reference - free).max() < 0.05  # same objective, two solvers
    held = objective.fit_proximal(start, x, y, mu=10.0, iterations=500)
    drift = [float(np.linalg.norm(theta)) for theta in (free, held)]
    assert drift[1] < 0.5 * drift[0]  # the proximal term keeps the model near the start
    # FedProx on the board: the term keeps the gradient steps nearer the global model too
    steps = [model.train(model.initial_arrays(), x, y, steps=50, mu=m) for m in (0.0, 1.0)]
    moved = [float(np.linalg.norm(a[0][model.FULL])) for a in steps]
    assert moved[1] < 0.7 * moved[0]


def test_one_step_on_every_board_averaged_is_one_step_on_the_pooled_windows(
    walch_dir: Path,
) -> None:
    """Why the boards take fixed-size steps with a ridge per window: FedAvg (weights = window
    counts) of one step per board equals one gradient step on the boards' pooled objective."""
    boards = [_subject_windows(walch_dir, s)[:2] for s in ("46343", "9961348", "1066528")]
    start = model.from_parts(np.full(model.N_FEATURES, 0.1), 0.2)
    eta = 0.5
    stepped = [model.train(start, x, y, steps=1, learning_rate=eta) for x, y in boards]
    counts = np.array([len(y) for _, y in boards], dtype=float)
    thetas = np.array([arrays[0][0] for arrays in stepped])
    averaged = counts @ thetas / counts.sum()
    pooled_x = np.vstack([x for x, _ in boards])
    pooled_y = np.concatenate([y for _, y in boards])
    weights = np.concatenate([objective.balanced_weights(y) for _, y in boards])
    theta = start[0][0].copy()
    _, gradient = objective.value_and_gradient(
        theta, pooled_x, pooled_y, weights, alpha=objective.DEFAULT_ALPHA, anchor=theta, mu=0.0
    )
    assert np.allclose(averaged, theta - eta * gradient, atol=1e-12)
    assert not np.allclose(averaged, theta, atol=1e-3)  # the step moved the model


def test_personalisation_on_a_real_subject(walch_dir: Path, one_blas_thread: None) -> None:
    """Global model from 20 people, personalised on subject 9961348's own windows, both
    scored on the same held-out windows of that subject."""
    nights = walch_dataset(walch_dir)
    subject = "9961348"
    pooled_x = np.vstack([n.features[n.labelled] for s, n in nights.items() if s != subject])
    pooled_y = np.concatenate([n.labels[n.labelled] for s, n in nights.items() if s != subject])
    global_model = model.fit(pooled_x, pooled_y)
    x, y, test_x, test_y = _subject_windows(walch_dir, subject)
    mine = personalise(global_model, x, y)
    # the person's own intercept (their base rate) moved
    assert model.intercept(mine) != pytest.approx(model.intercept(global_model))
    loss_global = model.log_loss(global_model, test_x, test_y)
    loss_mine = model.log_loss(mine, test_x, test_y)
    assert loss_mine < loss_global
