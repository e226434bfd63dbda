"""What the privacy and validation tests share: a board's update recomputed in the test
process (the same data and training the board's ClientApp uses), and boards running the
test-only adversarial ClientApp."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.labelled_windows import labelled_windows
from sleepfed.model import logistic as model
from tests.support.federation_helpers import start_agent

TESTS_DIR = Path(__file__).resolve().parent
LOCAL_ITERATIONS = 5  # write_server_config's federation.local_iterations


def board_update(board_config: Path, global_arrays: model.Arrays) -> tuple[model.Arrays, int]:
    """The arrays a board's ClientApp returns for ``global_arrays``, and its num-examples."""
    buffer = Buffer(board_config.parent / "buffer.db", readonly=True)
    try:
        features, labels, held_out, _ = labelled_windows(buffer)
    finally:
        buffer.close()
    x, y = features[~held_out], labels[~held_out]
    return model.train(global_arrays, x, y, steps=LOCAL_ITERATIONS), len(y)


def fedavg(updates: list[tuple[model.Arrays, int]]) -> model.Arrays:
    total = sum(n for _, n in updates)
    return [
        sum(arrays[i] * (n / total) for arrays, n in updates)  # type: ignore[misc]
        for i in range(len(updates[0][0]))
    ]


def start_adversarial_agent(config: Path, attack: str) -> subprocess.Popen[bytes]:
    """A board whose installed ClientApp is tests/support/adversarial_client_app.py."""
    return start_agent(
        config,
        env={
            "SLEEPFED_CLIENTAPP": "adversarial_client_app:app",
            "SLEEPFED_TEST_ATTACK": attack,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])
            ),
        },
    )


def append_to(config: Path, text: str) -> None:
    config.write_text(config.read_text() + "\n" + text)


def max_abs_difference(a: model.Arrays, b: model.Arrays) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def patient(board_config: Path) -> Path:
    """The board waits 15 minutes for the run to end (write_board's 300 s can run out on a
    loaded machine: a SecAgg+ round is four messages per board plus a dropout's wait)."""
    text = board_config.read_text()
    assert "session_idle_seconds = 300\n" in text
    board_config.write_text(
        text.replace("session_idle_seconds = 300\n", "session_idle_seconds = 900\n")
    )
    return board_config
