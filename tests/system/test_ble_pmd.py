"""The agent reading a Polar-H10-like strap: heart rate over 0x2A37 and the accelerometer over
Polar's PMD service, through bleak's real BlueZ backend against the BlueZ stand-in
(sleepfed_tools.bluez_standin.mock.pmd). The acceleration is a real recording: 3 minutes of
an ActiGraph Link at 100 Hz (tests/data/actilife_link_100hz), sent as the strap's ACC frames,
raw and delta-compressed, each within the ATT MTU. Rows are read back from the real buffer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sleepfed_tools.bluez_standin import BlueZStandIn

from sleepfed.board.sources.activity_counts import activity_counts
from sleepfed.board.sources.ble_parsing import HEART_RATE_MEASUREMENT
from sleepfed.board.sources.polar_pmd import PMD_DATA, build_acc_frame
from tests.support.helpers import wait_for, write_agent_config
from tests.system.test_ble_agent import (
    ADDRESS,
    HR_KIND,
    MOV_KIND,
    counters,
    hrm,
    push_until_stored,
    rows,
)

RATE = 100
RECORDING = Path(__file__).parents[1] / "data" / "actilife_link_100hz" / "raw_xyz_256ths_g.csv.gz"
SAMPLES_PER_FRAME = 36  # 10 + 36 × 6 = 226 bytes raw, within the MTU (247 - 3)
SENSOR_START_NS = 800_000_000_000_000_000  # the strap's clock: 2025 in ns since 2000


def recorded_mg() -> np.ndarray:
    """The recording in mG, as the strap sends it (int16)."""
    raw = np.loadtxt(RECORDING, delimiter=",", skiprows=1)
    return np.round(raw * 1000.0 / 256.0).astype(np.int64)


def acc_frames(samples: np.ndarray, first_index: int = 0) -> list[bytes]:
    """ACC frames of ``samples``, every other one delta-compressed; each frame's timestamp is
    its last sample's on the strap's clock."""
    frames = []
    for n, start in enumerate(range(0, len(samples), SAMPLES_PER_FRAME)):
        chunk = samples[start : start + SAMPLES_PER_FRAME]
        last = first_index + start + len(chunk) - 1
        stamp = SENSOR_START_NS + round(last * 1e9 / RATE)
        frames.append(build_acc_frame(stamp, chunk, compressed=n % 2 == 1))
    return frames


def pmd_config(tmp_path: Path) -> Path:
    source = f"""
[[sources]]
type = "ble"
name = "ble"
scan_timeout_seconds = 2

[[sources.devices]]
name = "h10"
address = "{ADDRESS}"
pmd_acc_hz = {RATE}
pmd_acc_range_g = 8
"""
    return write_agent_config(tmp_path / "agent.toml", buffer=tmp_path / "buffer.db", extra=source)


def start_strap(bluez: BlueZStandIn, agent_procs: Any, config: Path, pmd: bool = True) -> Any:
    bluez.add_heart_rate_sensor(ADDRESS, "Polar H10 C0FFEE01", with_illuminance=False)
    if pmd:
        bluez.add_pmd(ADDRESS)
    bluez.advertise(ADDRESS)
    proc = agent_procs(config)
    bluez.wait_until_notifying(ADDRESS, HEART_RATE_MEASUREMENT, timeout=20)
    return proc


def send(bluez: BlueZStandIn, frames: list[bytes]) -> None:
    for start in range(0, len(frames), 50):
        assert bluez.notify_many(ADDRESS, PMD_DATA, frames[start : start + 50]) == len(
            frames[start : start + 50]
        )


@pytest.mark.slow
def test_the_straps_accelerometer_becomes_one_mov_reading_per_epoch(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = pmd_config(tmp_path)
    proc = start_strap(bluez, agent_procs, config)
    wait_for(lambda: bluez.pmd_measuring(ADDRESS), 20, message="the PMD measurement")
    samples = recorded_mg()
    epochs = len(samples) // (RATE * 30)
    assert epochs == 6
    send(bluez, acc_frames(samples))
    wait_for(lambda: len(rows(config, MOV_KIND)) >= epochs, 20, message=f"{epochs} MOV rows")

    mov = rows(config, MOV_KIND)
    expected = activity_counts(samples / 1000.0, RATE)
    assert len(mov) == epochs and len(expected) == epochs
    # streamed epoch by epoch (a warm-up epoch before each) as counted in one go, within
    # one count; real movement: thousands of counts an epoch
    assert np.abs(np.array([v for _, v in mov]) - expected).max() <= 1.0, (mov, expected)
    assert min(expected) > 1000
    # each reading at its epoch's end on the strap's clock: 30 s apart, although the frames
    # came in a burst
    stamps = np.array([t for t, _ in mov])
    assert np.allclose(np.diff(stamps), 30.0, atol=1e-6), np.diff(stamps)

    # a malformed frame is counted and the stream goes on; heart rate is unaffected
    assert bluez.notify(ADDRESS, PMD_DATA, b"\x07" + bytes(20))  # not ACC
    push_until_stored(bluez, config, [hrm(58)], HR_KIND, 1)
    wait_for(lambda: counters(config).get("rejected_pmd_wrong_type") == 1, 10)
    assert proc.poll() is None


@pytest.mark.slow
def test_a_refused_stalled_or_lost_measurement_is_counted_and_started_again(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = pmd_config(tmp_path)
    start_strap(bluez, agent_procs, config)
    wait_for(lambda: bluez.pmd_measuring(ADDRESS), 20, message="the PMD measurement")
    assert bluez.pmd_starts(ADDRESS) == 1

    # the strap ends its measurement by itself, heart rate goes on
    bluez.end_pmd_measurement(ADDRESS)
    push_until_stored(bluez, config, [hrm(60)], HR_KIND, 1)
    wait_for(lambda: bluez.pmd_starts(ADDRESS) == 2, 30, message="the measurement restarted")
    assert counters(config).get("ble_pmd_stalled") == 1

    # the link drops: the next connection starts a new measurement
    assert bluez.drop_connection(ADDRESS)
    wait_for(lambda: bluez.pmd_starts(ADDRESS) == 3, 30, message="a new measurement")
    samples = recorded_mg()[: RATE * 30]
    send(bluez, acc_frames(samples))
    wait_for(lambda: len(rows(config, MOV_KIND)) == 1, 20, message="an epoch after reconnect")

    # on the charger: the start is refused, counted, and tried again
    bluez.refuse_next_pmd_start(ADDRESS, 13)
    assert bluez.drop_connection(ADDRESS)
    wait_for(lambda: counters(config).get("ble_pmd_refused") == 1, 30, message="the refusal")
    push_until_stored(bluez, config, [hrm(61)], HR_KIND, 2)
    wait_for(lambda: bluez.pmd_starts(ADDRESS) == 4, 45, message="the start tried again")
    assert counters(config).get("ble_link_lost") == 2


@pytest.mark.slow
def test_a_strap_without_pmd_gives_heart_rate_and_says_so(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = pmd_config(tmp_path)
    start_strap(bluez, agent_procs, config, pmd=False)
    push_until_stored(bluez, config, [hrm(57), hrm(58)], HR_KIND, 2)
    wait_for(lambda: counters(config).get("ble_pmd_missing") == 1, 10)
    assert rows(config, MOV_KIND) == []


@pytest.mark.slow
def test_pmd_notifications_refused_leave_heart_rate_and_the_link(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = pmd_config(tmp_path)
    bluez.add_heart_rate_sensor(ADDRESS, "Polar H10 C0FFEE01", with_illuminance=False)
    bluez.add_pmd(ADDRESS)
    bluez.break_pmd_notifications(ADDRESS)
    bluez.advertise(ADDRESS)
    agent_procs(config)
    bluez.wait_until_notifying(ADDRESS, HEART_RATE_MEASUREMENT, timeout=20)
    wait_for(lambda: counters(config).get("ble_pmd_refused") == 1, 10)
    push_until_stored(bluez, config, [hrm(57), hrm(58)], HR_KIND, 2)
    assert bluez.connect_count(ADDRESS) == 1 and not bluez.pmd_measuring(ADDRESS)
    assert counters(config).get("ble_link_lost", 0) == 0
