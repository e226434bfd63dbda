"""``sleepfed-server evaluate`` on real people (a subset of Walch 2019, for speed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from agent.features import walch_subjects

SUBSET = 8


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_evaluate_meets_the_goals_on_all_of_walch_2019(walch_dir: Path) -> None:
    """The default run (21 people, 5 folds, 20 rounds): the issue's three goals, as values."""
    done = _evaluate("--data", str(walch_dir), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    federated, centralised = result["federated"], result["centralised"]
    # measured: federated 0.8895, centralised 0.8885, local-only 0.784; SE MAE 4.93 points
    assert federated["auc"] >= centralised["auc"], result
    assert federated["auc"] >= result["local_only"]["auc"] + 0.05, result
    assert federated["night_se_mae"] <= 5.0, result
    assert result["setup"]["subjects"] == 21 and len(federated["auc_by_round"]) == 20


def test_evaluate_json_on_a_subset_of_subjects(walch_dir: Path) -> None:
    subjects = walch_subjects(walch_dir)[:SUBSET]
    done = _evaluate(
        "--data", str(walch_dir), "--json", "--folds", "2", "--rounds", "6",
        "--local-iterations", "5", "--learning-rate", "1.0", "--subjects", ",".join(subjects),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for method in ("federated", "centralised", "local_only"):
        figures = result[method]
        assert 0.5 < figures["auc"] <= 1.0, (method, figures)
        assert 0.5 < figures["balanced_accuracy"] <= 1.0, (method, figures)
        assert 0.0 <= figures["night_se_mae"] < 30.0, (method, figures)
    federated = result["federated"]
    assert len(federated["auc_by_round"]) == 6
    assert 1 <= federated["rounds_to_99pct_auc"] <= 6
    assert math.isclose(federated["auc_by_round"][-1], federated["auc"], abs_tol=1e-3)
    # the point of the federation: better than what any one board learns alone
    assert federated["auc"] > result["local_only"]["auc"] + 0.02, result
    assert result["setup"]["subjects"] == SUBSET
    assert result["setup"]["local_iterations"] == 5 and result["setup"]["learning_rate"] == 1.0
    personal = result["personalisation"]
    assert 0.0 <= personal["personal_auc"] <= 1.0 and personal["windows"] > 0


def test_evaluate_refuses_a_folder_without_subjects(tmp_path: Path) -> None:
    done = _evaluate("--data", str(tmp_path), "--folds", "2")
    assert done.returncode == 2
    assert "0 subjects with labelled windows, at least 3 needed" in done.stderr
    assert done.stdout == ""
