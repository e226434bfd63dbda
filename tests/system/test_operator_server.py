"""What the operator sees on the server: ``sleepfed-server status`` (table, JSON, exit codes),
the Prometheus metrics of ``sleepfed-server run`` scraped over HTTP on 127.0.0.1 while a real
TLS federation runs (the boards' metrics too), and the HTML report rendered by headless
Chromium."""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset
from sleepfed.server.app.held_out import held_out_scores
from sleepfed.server.app.history import History
from sleepfed.server.ops.report_plots import FIGURE_DPI, FIGURE_INCHES
from tests.support.federation_helpers import (
    free_port,
    pki,
    start,
    start_agent,
    stop,
    wait_for,
    write_board,
    write_server_config,
)
from tests.support.helpers import run_server
from tests.support.prometheus_scrape import scrape, try_scrape

BOARD_SUBJECTS = ["4426783", "8258170", "9106476"]
HELD_OUT = ["1066528", "2638030", "8000685", "8692923"]
SCREEN = (1000, 2400)


def write_history(path: Path, walch_dir: Path, rounds: int) -> list[dict[str, float]]:
    """A history of real FedAvg rounds: three Walch subjects train the real model from the
    global one, the weighted mean is scored on held-out subjects as the ServerApp does, and
    each round goes through sleepfed.server.app.history (with a rejected update and ε where the
    history
    records them)."""
    boards = walch_dataset(walch_dir, BOARD_SUBJECTS)
    held = walch_dataset(walch_dir, HELD_OUT)
    hx = np.vstack([n.features[n.labelled] for n in held.values()])
    hy = np.concatenate([n.labels[n.labelled] for n in held.values()])
    records_extras = "rejected" in inspect.signature(History.add_round).parameters
    history = History(path)
    history.start_run("4242", 0, rounds)
    arrays = model.initial_arrays()
    scores = []
    for r in range(1, rounds + 1):
        updates, weights = [], []
        for night in boards.values():
            x, y = night.features[night.labelled], night.labels[night.labelled]
            updates.append(model.train(arrays, x, y, steps=5))
            weights.append(len(y))
        arrays = [
            sum(w * u[i] for w, u in zip(weights, updates, strict=True)) / sum(weights)
            for i in range(len(arrays))
        ]
        score = held_out_scores(arrays, hx, hy)
        scores.append(score)
        extras: dict[str, object] = {}
        if records_extras:
            extras = {
                "rejected": [{"node": 7, "reason": "not_finite", "detail": "nan"}]
                if r == 2
                else [],
                "privacy": {"epsilon": 0.9 * r, "delta": 1e-5},
            }
        history.add_round(
            global_round=r,
            run_id="4242",
            server_round=r,
            arrays=model.arrays_to_bytes(arrays),
            train_metrics={"train-loss": 0.3},
            eval_metrics={"eval-accuracy": 0.8},
            server_metrics=score,
            train_nodes=3,
            eval_nodes=3,
            **extras,  # type: ignore[arg-type]
        )
    history.finish_run("4242", "finished")
    history.close()
    return scores


def write_config(root: Path, port: int, extra: str = "") -> Path:
    path = root / "server.toml"
    path.write_text(
        f'[server]\nstate_dir = "{root / "state"}"\ninsecure = true\nport = {port}\n{extra}'
    )
    return path


def chromium_screenshot(page: Path, out: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # CI and this test run as root
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={SCREEN[0]},{SCREEN[1]}",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "HOME": str(out.parent)},
    )
    assert result.returncode == 0 and out.exists(), result.stderr[-2000:]


def embedded_pngs(page: str) -> list[np.ndarray]:
    blobs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [mpimg.imread(io.BytesIO(base64.b64decode(b)), format="png") for b in blobs]


def test_status_and_report_from_a_real_history(tmp_path: Path, walch_dir: Path) -> None:
    config = write_config(tmp_path, free_port())
    result = run_server("status", "--json", "--config", str(config))
    assert result.returncode == 1, result.stderr  # no SuperLink
    empty = json.loads(result.stdout)
    assert empty["rounds"]["in_history"] == 0 and empty["last_run"] is None
    assert not (tmp_path / "state" / "history.db").exists()  # status wrote nothing

    scores = write_history(tmp_path / "state" / "history.db", walch_dir, rounds=3)
    result = run_server("status", "--json", "--config", str(config))
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["health"] == "down" and status["superlink"]["up"] is False
    assert status["rounds"]["in_history"] == 3 and status["rounds"]["next_global_round"] == 4
    assert status["model"]["auc"] == pytest.approx(scores[-1]["auc"])
    assert 0.65 <= status["model"]["auc"] <= 1.0
    assert status["last_run"]["status"] == "finished"
    assert status["rounds"]["last_train_boards"] == 3
    table = run_server("status", "--config", str(config)).stdout
    assert "health          DOWN" in table and "global round 3" in table

    out = tmp_path / "report" / "report.html"
    result = run_server("report", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "3 rounds" in result.stdout
    page = out.read_text()
    pngs = embedded_pngs(page)
    assert len(pngs) == 5
    expected = (int(FIGURE_INCHES[1] * FIGURE_DPI), int(FIGURE_INCHES[0] * FIGURE_DPI))
    for png in pngs:
        assert png.shape[:2] == expected
        assert (png[..., :3] < 0.9).any(axis=2).mean() > 0.01  # drawn on, not blank
    for title in ("Held-out AUC and loss", "Boards per round", "Updates rejected", "ε spent"):
        assert title in page
    assert f"{scores[-1]['auc']:.3f}" in page  # the round table carries the real AUC
    if "rejected" in inspect.signature(History.add_round).parameters:
        assert status["rejected_updates"]["total"] == 1
        assert status["rejected_updates"]["by_reason"] == {"not_finite": 1}
        assert status["privacy"]["epsilon_spent"] == pytest.approx(2.7)

    shot = tmp_path / "report" / "shot.png"
    chromium_screenshot(out, shot)
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (SCREEN[1], SCREEN[0])
    ink = (pixels[..., :3] < 0.9).any(axis=2)
    assert ink.mean() > 0.03, "the page rendered (almost) blank"
    first_plot = ink[250:600, 50:900]  # where the first figure sits below the summary
    assert first_plot.mean() > 0.02, "the first figure did not render"
    colours = np.unique((pixels[::4, ::4, :3] * 15).round().reshape(-1, 3), axis=0)
    assert len(colours) > 20, "no plot colours on the page"


@pytest.mark.slow
def test_metrics_and_status_during_a_real_federation(tmp_path: Path, walch_dir: Path) -> None:
    certs = pki(tmp_path)
    port, metrics_port = free_port(), free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=2, min_nodes=2, walch_dir=walch_dir, held_out=HELD_OUT
    )
    with server_config.open("a") as handle:
        handle.write(f"\n[metrics]\nport = {metrics_port}\n")
    board_ports = [free_port() for _ in BOARD_SUBJECTS[:2]]
    boards = [
        write_board(tmp_path, f"board{i}", port, certs["ca"], walch_dir=walch_dir, subject=s)
        for i, s in enumerate(BOARD_SUBJECTS[:2])
    ]
    for config, board_port in zip(boards, board_ports, strict=True):
        with config.open("a") as handle:
            handle.write(f"\n[metrics]\nport = {board_port}\n")
    # `run` without --once: the process (and its metrics) stays up after the run.
    server = start(
        [sys.executable, "-m", "sleepfed.server.ops.cli", "run", "--config", str(server_config)],
        server_config.parent / "server.log",
    )
    agents: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: try_scrape(metrics_port), 90, "the server's metrics")
        before = scrape(metrics_port)
        assert before[("sleepfed_server_superlink_up", ())] == 1
        assert before[("sleepfed_server_rounds", ())] == 0
        assert before[("sleepfed_server_model_global_round", ())] == 0
        result = run_server("status", "--json", "--config", str(server_config))
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["superlink"]["up"] is True

        agents = [start_agent(b) for b in boards]
        history_path = tmp_path / "server" / "state" / "history.db"

        def run_finished() -> bool:
            if not history_path.exists():
                return False
            history = History(history_path)
            try:
                return any(r["status"] == "finished" for r in history.runs())
            finally:
                history.close()

        wait_for(run_finished, 540, "the run to finish")
        after = scrape(metrics_port)
        assert after[("sleepfed_server_rounds", ())] == 2
        assert after[("sleepfed_server_model_global_round", ())] == 2
        assert after[("sleepfed_server_runs", (("status", "finished"),))] == 1
        assert after[("sleepfed_server_round_duration_seconds_count", ())] == 2
        assert after[("sleepfed_server_round_duration_seconds_sum", ())] > 0
        assert after[("sleepfed_server_boards_last_round", (("phase", "train"),))] == 2
        assert 0.65 <= after[("sleepfed_server_auc", ())] <= 1.0
        # The fleet proxy dies: `run` restarts it, and the metrics count it.
        restarts = ("sleepfed_server_process_restarts_total", (("process", "fleet_proxy"),))
        assert after[restarts] == 0
        pid_file = tmp_path / "server" / "state" / "fleet-proxy" / "nginx.pid"
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        wait_for(lambda: scrape(metrics_port).get(restarts) == 1, 30, "the proxy's restart")
        wait_for(lambda: scrape(metrics_port)[("sleepfed_server_superlink_up", ())] == 1, 30,
                 "the restarted proxy to serve")  # fmt: skip
        assert scrape(metrics_port)[("sleepfed_server_registry_sync_failures_total", ())] == 0

        def board_joined(board_port: int) -> bool:
            values = scrape(board_port)
            return values[("sleepfed_agent_model_global_round", ())] == 2

        wait_for(lambda: all(board_joined(p) for p in board_ports), 60, "boards' round 2")
        for board_port in board_ports:
            values = scrape(board_port)
            assert values[("sleepfed_agent_rounds_joined_total", ())] == 2
            assert values[("sleepfed_agent_rounds_evaluated_total", ())] == 2
            assert values[("sleepfed_agent_model_version", ())] == 2
            assert values[("sleepfed_agent_round_duration_seconds_count", ())] == 1
            assert values[("sleepfed_agent_rounds_failed_total", ())] == 0

        stop([server])
        result = run_server("status", "--config", str(server_config))
        assert result.returncode == 1 and "superlink       127.0.0.1" in result.stdout
        assert "DOWN" in result.stdout and "2 in history" in result.stdout
        out = tmp_path / "report.html"
        result = run_server("report", "--config", str(server_config), "--out", str(out))
        assert result.returncode == 0 and "2 rounds" in result.stdout, result.stderr
        assert len(embedded_pngs(out.read_text())) == 5
    finally:
        stop([*agents, server])
