"""A real Walch night replayed as BLE notifications (through the BlueZ stand-in) plus its PSG
labels over a serial reference device: the board's windows match the data set's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from sleepfed_tools.bluez_standin import BlueZStandIn
from sleepfed_tools.replay import (
    PtyLink,
    default_night_start,
    replay,
    replay_ble,
    walch_ble_notifications,
    walch_labels,
)
from sleepfed_tools.replay.walch_polar import RATE as POLAR_RATE
from sleepfed_tools.replay.walch_polar import replay_polar, walch_polar_notifications

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.schedule import night_of
from sleepfed.board.nights.tracker import extract_night, predict_nights
from sleepfed.board.sources.ble_parsing import MOVEMENT
from sleepfed.model import logistic as model
from sleepfed.model.features import (
    FEATURE_NAMES,
    MOVEMENT_COLUMNS,
    estimated_efficiency,
    night_quality,
    night_windows,
)
from sleepfed.model.walch import load_walch_subject, walch_dataset, walch_subjects
from tests.support.helpers import (
    agent_status,
    run_agent,
    stop_agent,
    wait_connected,
    wait_for,
    write_agent_config,
)

SUBJECT = "1455390"
ADDRESS = "C0:FF:EE:00:00:05"
UTC = ZoneInfo("UTC")
# The synthesised frames reproduce each epoch's Walch count within the burst table's steps
# and the counter filter's memory (sleepfed_tools.replay.walch_polar)
ACTIVITY_TOLERANCE = 1.0


def board_config(
    tmp_path: Path, port: str, device: str = f'movement_characteristic = "{MOVEMENT}"'
) -> Path:
    """A BLE wearable (``device``: its movement lines) and a serial reference device."""
    sources = f"""
[[sources]]
type = "ble"
name = "wearable"

[[sources.devices]]
name = "strap"
address = "{ADDRESS}"
{device}
"""
    return write_agent_config(
        tmp_path / "agent.toml",
        buffer=tmp_path / "buffer.db",
        ports={"reference": port},
        settle_seconds=3600,
        extra=sources,
    )


def compare_with_dataset(buffer_path: Path, walch_dir: Path, night_start: float) -> None:
    night = night_of(night_start, UTC)
    buffer = Buffer(buffer_path)
    try:
        extract_night(buffer, night, UTC)
        rows = buffer.windows(night)
    finally:
        buffer.close()
    expected = night_windows(load_walch_subject(walch_dir, SUBJECT))
    got = np.array([r[2] for r in rows])
    labels = np.array([-1 if r[3] is None else r[3] for r in rows])
    assert got.shape == expected.features.shape
    assert (labels == expected.labels).all()
    # Activity, time and circadian features are exact (float32 counts); heart rate is sent
    # as whole bpm over BLE, which moves its z-scores a little.
    activity_and_time = [0, 1, 2, 3, 4, 5, 10, 11]
    assert np.allclose(
        got[:, activity_and_time], expected.features[:, activity_and_time], atol=1e-4
    )
    assert np.abs(got[:, 6:10] - expected.features[:, 6:10]).max() < 0.1


def send_night(
    config: Path,
    link: PtyLink,
    bluez: BlueZStandIn,
    walch_dir: Path,
    night_start: float,
    *,
    with_movement: bool = True,
) -> tuple[int, int, int]:
    """The subject's labels over the serial reference device and its notifications over
    BLE (without the movement ones unless ``with_movement``), until every heart rate and
    label is committed: (notifications sent, labels sent, epochs)."""
    labels = replay(
        walch_labels(walch_dir, SUBJECT, night_start), link.write, None, drain=link.drain
    )
    sent = replay_ble(
        (
            (uuid, value)
            for uuid, value in walch_ble_notifications(walch_dir, SUBJECT, night_start)
            if with_movement or uuid != MOVEMENT
        ),
        lambda uuid, value: bluez.notify(ADDRESS, uuid, value),
        lambda uuid: bluez.wait_until_notifying(ADDRESS, uuid, timeout=20),
    )
    epochs = len(load_walch_subject(walch_dir, SUBJECT).hr)
    wait_for(
        lambda: (
            (s := agent_status(config))
            and s["accepted"].get("hr") == epochs
            and s["accepted"].get("lbl") == labels
        ),
        60,
        message="every heart rate and label committed",
    )
    return sent, labels, epochs


def _model_of_others(walch_dir: Path) -> model.Arrays:
    """Both heads trained on eight other people's nights."""
    others = [s for s in walch_subjects(walch_dir) if s != SUBJECT][:8]
    people = walch_dataset(walch_dir, others)
    x = np.concatenate([people[s].features for s in others])
    y = np.concatenate([people[s].labels for s in others])
    return model.train(model.initial_arrays(), x[y >= 0], y[y >= 0], steps=300)


def test_a_walch_night_over_ble_gives_the_data_sets_windows(
    tmp_path: Path, walch_dir: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    bluez.add_heart_rate_sensor(ADDRESS, with_illuminance=False, with_current_time=True)
    bluez.advertise(ADDRESS)
    with PtyLink() as link:
        config = board_config(tmp_path, link.device_path)
        proc = agent_procs(config)
        wait_connected(config, expected="2/2", timeout=30, proc=proc)
        night_start = default_night_start()
        sent, labels, epochs = send_night(config, link, bluez, walch_dir, night_start)
        assert sent == 4 * epochs
        status = agent_status(config)
        assert status is not None
        assert status["accepted"] == {"hr": epochs, "rr": epochs, "mov": epochs, "lbl": labels}
        assert status["rejected"] == {}

    compare_with_dataset(tmp_path / "buffer.db", walch_dir, night_start)


def test_replay_cli_ble_mode(tmp_path: Path, walch_dir: Path, agent_procs: Any) -> None:
    """`sleepfed-replay --ble`: its own stand-in; an agent on that bus reads the night."""
    replayer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sleepfed_tools.replay",
            "--data",
            str(walch_dir),
            "--subject",
            SUBJECT,
            "--ble",
            ADDRESS,
            "--pty",
            "--linger",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert replayer.stdout is not None
        bus = replayer.stdout.readline().strip()
        assert bus.startswith("DBUS_SYSTEM_BUS_ADDRESS=unix:")
        assert replayer.stdout.readline().startswith(f"BLE wearable {ADDRESS}")
        pty_line = replayer.stdout.readline().split()
        assert pty_line[0] == "PTY"
        config = board_config(tmp_path, pty_line[1])
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.split("=", 1)[1]
        try:
            agent_procs(config)
        finally:
            del os.environ["DBUS_SYSTEM_BUS_ADDRESS"]
        out, _ = replayer.communicate(timeout=120)
        assert replayer.returncode == 0, out
        epochs = len(load_walch_subject(walch_dir, SUBJECT).hr)
        assert f"replayed {4 * epochs} BLE notifications" in out
        wait_for(
            lambda: (s := agent_status(config)) and s["accepted"].get("hr") == epochs,
            30,
            message="the replayed heart rates",
        )
    finally:
        if replayer.poll() is None:
            replayer.kill()


def test_a_walch_night_from_a_polar_strap_predicts_as_the_data_set_does(
    tmp_path: Path, walch_dir: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    """Heart rate over 0x2A37 and movement as PMD accelerometer frames, synthesised so that
    their counts follow the night (sleepfed_tools.replay.walch_polar): the board's windows
    are the data set's within the synthesis' error, and a model predicts the same night."""
    bluez.add_heart_rate_sensor(
        ADDRESS, "Polar H10 C0FFEE05", with_illuminance=False, with_movement=False,
        with_current_time=True,
    )  # fmt: skip
    bluez.add_pmd(ADDRESS)
    bluez.advertise(ADDRESS)
    with PtyLink() as link:
        config = board_config(tmp_path, link.device_path, f"pmd_acc_hz = {POLAR_RATE}")
        proc = agent_procs(config)
        wait_connected(config, expected="2/2", timeout=30, proc=proc)
        wait_for(lambda: bluez.pmd_measuring(ADDRESS), 20, message="the PMD measurement")
        night_start = default_night_start()
        replay(walch_labels(walch_dir, SUBJECT, night_start), link.write, None, drain=link.drain)
        replay_polar(
            walch_polar_notifications(walch_dir, SUBJECT, night_start),
            lambda uuid, values: bluez.notify_many(ADDRESS, uuid, values),
            lambda uuid: bluez.wait_until_notifying(ADDRESS, uuid, timeout=20),
        )
        epochs = len(load_walch_subject(walch_dir, SUBJECT).hr)
        wait_for(
            lambda: (s := agent_status(config)) and s["accepted"].get("mov") == epochs,
            120,
            message="one MOV reading per epoch",
        )
        status = agent_status(config)
        assert status is not None and status["rejected"] == {}, status

    night = night_of(night_start, UTC)
    buffer = Buffer(tmp_path / "buffer.db")
    try:
        extract_night(buffer, night, UTC)
        got = np.array([r[2] for r in buffer.windows(night)])
    finally:
        buffer.close()
    expected = night_windows(load_walch_subject(walch_dir, SUBJECT))
    assert got.shape == expected.features.shape
    time_features = [10, 11]
    assert np.allclose(got[:, time_features], expected.features[:, time_features], atol=1e-4)
    activity = got[:, :6] - expected.features[:, :6]
    print(
        f"activity features: |error| max {np.abs(activity).max():.3f}, mean "
        f"{np.abs(activity).mean():.3f} (log1p counts)"
    )
    assert np.abs(activity).max() < ACTIVITY_TOLERANCE and np.abs(activity).mean() < 0.2
    # the same model's estimate of the night, from the board's windows and the data set's
    trained = _model_of_others(walch_dir)
    on_board, in_dataset = (model.good_probability(trained, w) for w in (got, expected.features))
    board, dataset = (estimated_efficiency(p, None) for p in (on_board, in_dataset))
    differing = int(((on_board >= 0.5) != (in_dataset >= 0.5)).sum())
    print(f"estimated efficiency: board {board:.3f}, data set {dataset:.3f}; {differing} windows")
    assert differing <= 1  # of the night's 47 windows
    assert night_quality(board) == night_quality(dataset)


def test_a_plain_heart_rate_strap_is_predicted_by_the_movement_free_model(
    tmp_path: Path, walch_dir: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    """A strap that sends heart rate and nothing else (0x2A37; no movement characteristic, no
    PMD): status says the board has no movement, the night is kept as one without movement,
    and it is predicted by the model's movement-free head, as the data set's night is when
    its movement is taken away."""
    bluez.add_heart_rate_sensor(
        ADDRESS, "HR strap C0FFEE05", with_illuminance=False, with_movement=False,
        with_current_time=True,
    )  # fmt: skip
    bluez.advertise(ADDRESS)
    with PtyLink() as link:
        config = board_config(tmp_path, link.device_path, device="")
        proc = agent_procs(config)
        wait_connected(config, expected="2/2", timeout=30, proc=proc)
        night_start = default_night_start()
        sent, _, epochs = send_night(
            config, link, bluez, walch_dir, night_start, with_movement=False
        )
        assert sent == 3 * epochs
        stop_agent(proc, timeout=10)
    status = agent_status(config)
    assert status is not None
    assert status["movement"] == {"wearable/strap": "none", "reference": "serial"}
    assert "mov" not in status["accepted"] and status["rejected"] == {}

    night = night_of(night_start, UTC)
    trained = _model_of_others(walch_dir)
    buffer = Buffer(tmp_path / "buffer.db")
    try:
        extract_night(buffer, night, UTC)
        assert buffer.nights_without_movement() == {night}
        got = np.array([r[2] for r in buffer.windows(night)])
        buffer.save_model(1, "run-1", model.arrays_to_bytes(trained))
        ((_, efficiency, quality),) = predict_nights(buffer)
        assert buffer.latest_predictions()[night][3:] == ("global", "no_movement")
    finally:
        buffer.close()
    # Without a reading the movement features read as lying still (still share 1): only the
    # night's flag tells "no movement sensor" from "did not move", and the head ignores them.
    still_share = MOVEMENT_COLUMNS[FEATURE_NAMES.index("still_share")]
    assert (got[:, list(MOVEMENT_COLUMNS)] == 0).sum() == len(got) * (len(MOVEMENT_COLUMNS) - 1)
    assert (got[:, still_share] == 1).all()
    expected = night_windows(load_walch_subject(walch_dir, SUBJECT)).features
    on_board, in_dataset = (
        model.good_probability(trained, w, model.NO_MOVEMENT) for w in (got, expected)
    )
    assert efficiency == estimated_efficiency(on_board, None)
    dataset = estimated_efficiency(in_dataset, None)
    differing = int(((on_board >= 0.5) != (in_dataset >= 0.5)).sum())
    # the full head, given the missing movement as zeros, reads the night as lying still
    still = estimated_efficiency(model.good_probability(trained, got), None)
    print(
        f"movement-free head: board {efficiency:.3f}, data set {dataset:.3f}, {differing} "
        f"windows differ; the full head on the same windows: {still:.3f}"
    )
    assert differing <= 1 and quality == night_quality(dataset)
    assert still - efficiency > 0.2
    text = run_agent("status", "--config", str(config)).stdout
    assert "wearable/strap none (heart rate only: nights without movement are predicted" in text
    assert "global model, movement-free head: no movement readings that night" in text
