"""Differential privacy accounting and settings, the board's code guard, and the history's
privacy and rejection columns (old history files included)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.cli.build import build_fab_from_disk, build_fab_from_files
from flwr.supercore.task_identity import TaskIdentity

from sleepfed.board.training.code_guard import ForeignCodeError, check_fab
from sleepfed.board.training.privacy_mods import dp_clipping_mod, legacy_records_mod
from sleepfed.common.config_fields import ConfigError
from sleepfed.model import logistic as model
from sleepfed.server.app.history import History
from sleepfed.server.app.privacy import (
    PrivacySettings,
    epsilon_spent,
    noise_multiplier_for,
    parse_privacy,
    round_privacy,
)

FLOWER_APP = (
    Path(__file__).resolve().parents[2] / "src" / "sleepfed" / "server" / "app" / "flower_app"
)


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_noise_multiplier_spends_the_target_over_the_rounds(target: float) -> None:
    sigma = noise_multiplier_for(target, 1e-5, 20)
    assert epsilon_spent([sigma] * 20, 1e-5) <= target
    assert epsilon_spent([sigma * 0.99] * 20, 1e-5) > target  # the smallest such σ (to 1%)
    # more rounds on the same budget need more noise
    assert noise_multiplier_for(target, 1e-5, 40) > sigma


def test_epsilon_composes_over_rounds_and_matches_a_known_value() -> None:
    # One Gaussian mechanism with σ = 1 at δ = 1e-5: the RDP bound is about 4.3-4.4
    # (the classic analytic bound is 4.8).
    one = epsilon_spent([1.0], 1e-5)
    assert 4.0 < one < 4.8
    assert epsilon_spent([1.0] * 5, 1e-5) > one
    assert epsilon_spent([], 1e-5) == 0.0
    settings = PrivacySettings(dp=True, noise_multiplier=1.0, clipping_norm=0.5)
    first = round_privacy([], settings)
    second = round_privacy([first, {}], settings)  # a non-DP round in between costs nothing
    assert first["epsilon"] == pytest.approx(one)
    assert second["epsilon"] == pytest.approx(epsilon_spent([1.0, 1.0], 1e-5))
    assert second["dp_rounds"] == 2.0 and second["clipping_norm"] == 0.5
    assert round_privacy([first], PrivacySettings()) == {}


def test_privacy_settings_are_checked() -> None:
    ok = parse_privacy({"privacy": {"differential_privacy": True, "target_epsilon": 4}}, 10)
    assert ok.noise_multiplier == pytest.approx(noise_multiplier_for(4.0, 1e-5, 10))
    for table, field in [
        ({"differential_privacy": True}, "privacy: give exactly one"),
        ({"differential_privacy": True, "noise_multiplier": 1, "clipping_norm": 0}, "clipping"),
        ({"differential_privacy": True, "noise_multiplier": 1, "delta": 2.0}, "privacy.delta"),
        ({"differential_privacy": True, "secure_aggregation": True}, "cannot be combined"),
        ({"secure_aggregation": True, "secagg_threshold": 0}, "privacy.secagg_threshold"),
        ({"noise_multiplier": "x"}, "privacy.noise_multiplier"),
    ]:
        with pytest.raises(ConfigError, match=field):
            parse_privacy({"privacy": table}, 5)
    off = parse_privacy({}, 5)
    assert not off.dp and not off.secure_aggregation


def _train_message(arrays: list[np.ndarray], config: dict[str, float]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(config)})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_dp_clipping_mod_clips_only_when_asked() -> None:
    global_arrays = model.initial_arrays()
    trained = model.from_parts(np.full(model.N_FEATURES, 3.0), 4.0)

    def app(msg: Message, ctxt: Context) -> Message:
        reply = RecordDict(
            {"arrays": ArrayRecord(trained), "metrics": MetricRecord({"num-examples": 10})}
        )
        return Message(content=reply, reply_to=msg)

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # Flower's log
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    plain = dp_clipping_mod(_train_message(global_arrays, {}), context, app)
    norm = np.sqrt(sum(np.sum(a**2) for a in plain.content["arrays"].to_numpy_ndarrays()))
    # both heads: 12 coefficients and the intercept, then the 6 not of movement and it
    assert norm == pytest.approx(np.sqrt((12 + 6) * 9 + 2 * 16))
    asked = _train_message(global_arrays, {"clipping_norm": 0.5})
    clipped = dp_clipping_mod(asked, context, app).content["arrays"].to_numpy_ndarrays()
    assert np.sqrt(sum(np.sum(a**2) for a in clipped)) == pytest.approx(0.5)
    # a one-class board returns the global model unchanged: a zero update, sent as it is
    unchanged = dp_clipping_mod(
        _train_message(global_arrays, {"clipping_norm": 0.5}),
        context,
        lambda msg, ctxt: Message(
            content=RecordDict(
                {"arrays": ArrayRecord(global_arrays), "metrics": MetricRecord({"num-examples": 7})}
            ),
            reply_to=msg,
        ),
    )
    assert not unchanged.has_error()
    returned = unchanged.content["arrays"].to_numpy_ndarrays()
    assert all(np.array_equal(a, b) for a, b in zip(returned, global_arrays, strict=True))
    assert unchanged.content["metrics"]["num-examples"] == 7
    # the legacy (SecAgg+) records are translated both ways
    legacy = Message(
        content=RecordDict(
            {
                "fitins.parameters": ArrayRecord(global_arrays),
                "fitins.config": ConfigRecord({"server-round": 1}),
            }
        ),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    out = legacy_records_mod(legacy, context, app).content
    assert out.metric_records["fitres.num_examples"]["num_examples"] == 10
    (theta,) = out.array_records["fitres.parameters"].to_numpy_ndarrays()
    assert theta[0, -1] == 4.0  # the intercept of ``trained``
    assert "fitins.parameters" in legacy.content  # the incoming message is left as it was


def test_code_guard_accepts_only_a_code_free_bundle_naming_the_installed_app() -> None:
    check_fab(build_fab_from_disk(FLOWER_APP))  # the bundle the server really ships
    project = (FLOWER_APP / "pyproject.toml").read_bytes()
    with_code = build_fab_from_files(
        {
            "pyproject.toml": project,
            "src/sleepfed/board/training/client_app.py": b"import os; os.system('id')\n",
        }
    )[0]
    with pytest.raises(
        ForeignCodeError, match=r"carries files: src/sleepfed/board/training/client_app\.py"
    ):
        check_fab(with_code)
    elsewhere = project.replace(
        b'"sleepfed.board.training.client_app:app"', b'"server_only.evil:app"'
    )
    with pytest.raises(ForeignCodeError, match=r"server_only\.evil:app"):
        check_fab(build_fab_from_files({"pyproject.toml": elsewhere})[0])
    with pytest.raises(ForeignCodeError, match="not a zip"):
        check_fab(b"#!/bin/sh\n")


def test_old_history_files_gain_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE rounds (id INTEGER PRIMARY KEY, global_round INTEGER NOT NULL,
        run_id TEXT NOT NULL, server_round INTEGER NOT NULL, arrays BLOB NOT NULL,
        train_metrics TEXT NOT NULL, eval_metrics TEXT NOT NULL, server_metrics TEXT NOT NULL,
        train_nodes INTEGER NOT NULL, eval_nodes INTEGER NOT NULL, created_at REAL NOT NULL,
        rolled_back INTEGER NOT NULL DEFAULT 0);
        INSERT INTO rounds VALUES (1, 1, 'r', 1, x'00', '{}', '{}', '{}', 2, 2, 0.0, 0);"""
    )
    old.close()
    history = History(path)
    history.add_round(
        global_round=2,
        run_id="r",
        server_round=2,
        arrays=b"\x00",
        train_metrics={},
        eval_metrics={},
        server_metrics={},
        train_nodes=2,
        eval_nodes=2,
        rejected=[{"node": 7, "reason": "non-finite", "detail": "x"}],
        privacy={"epsilon": 1.5},
    )
    first, second = history.rounds()
    assert (first.rejected, first.privacy) == ([], {})
    assert second.rejected[0]["reason"] == "non-finite" and second.privacy == {"epsilon": 1.5}
    history.close()
    History(path).close()  # migrating twice is a no-op
