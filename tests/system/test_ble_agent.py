"""The agent daemon reading a BLE wearable: bleak's real BlueZ backend over a private D-Bus
system bus, against the BlueZ stand-in (sleepfed_tools.bluez_standin). Rows are read back from the
real SQLite buffer."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sleepfed_tools.bluez_standin import BlueZStandIn

from sleepfed.board.sources.ble_parsing import (
    BATTERY_LEVEL,
    CURRENT_TIME,
    HEART_RATE_MEASUREMENT,
    ILLUMINANCE,
    MOVEMENT,
    format_current_time,
)
from tests.support.helpers import agent_status, run_agent, wait_for, write_agent_config

ADDRESS = "C0:FF:EE:00:00:01"
HR_KIND, RR_KIND, MOV_KIND, LUX_KIND, BAT_KIND = 1, 2, 3, 4, 6


def ble_config(tmp_path: Path, *, by: str = "address", extra_device: str = "") -> Path:
    target = f'address = "{ADDRESS}"' if by == "address" else 'service = "180d"'
    source = f"""
[[sources]]
type = "ble"
name = "ble"
scan_timeout_seconds = 2

[[sources.devices]]
name = "strap"
{target}
movement_characteristic = "{MOVEMENT}"
{extra_device}
"""
    return write_agent_config(tmp_path / "agent.toml", buffer=tmp_path / "buffer.db", extra=source)


def rows(config: Path, kind: int) -> list[tuple[float, float]]:
    conn = sqlite3.connect(f"file:{config.parent / 'buffer.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(
            "SELECT ts, value FROM readings WHERE kind = ? ORDER BY id", (kind,)
        ).fetchall()
    finally:
        conn.close()


def counters(config: Path) -> dict[str, Any]:
    status = agent_status(config)
    assert status is not None
    return {**status["counters"], **{f"rejected_{k}": v for k, v in status["rejected"].items()}}


def hrm(bpm: int, *rr_units: int, contact: int = 3) -> bytes:
    flags = contact << 1 | (0x10 if rr_units else 0)
    return bytes([flags, bpm]) + b"".join(struct.pack("<H", v) for v in rr_units)


def started(bluez: BlueZStandIn, agent_procs: Any, config: Path, **sensor: bool) -> Any:
    bluez.add_heart_rate_sensor(ADDRESS, **sensor)
    bluez.advertise(ADDRESS)
    proc = agent_procs(config)
    bluez.wait_until_notifying(ADDRESS, HEART_RATE_MEASUREMENT, timeout=20)
    return proc


def push_until_stored(
    bluez: BlueZStandIn, config: Path, payloads: list[bytes], kind: int, n: int
) -> None:
    for payload in payloads:
        assert bluez.notify(ADDRESS, HEART_RATE_MEASUREMENT, payload)
    wait_for(lambda: len(rows(config, kind)) >= n, 15, message=f"{n} rows of kind {kind}")


def test_discovery_connect_and_notifications_become_rows(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path)
    proc = started(bluez, agent_procs, config)
    bluez.wait_until_notifying(ADDRESS, MOVEMENT)
    bluez.wait_until_notifying(ADDRESS, ILLUMINANCE)
    payloads = [hrm(60 + i, 1024, 512) for i in range(20)]
    push_until_stored(bluez, config, payloads, HR_KIND, 20)
    assert bluez.notify(ADDRESS, MOVEMENT, struct.pack("<f", 12.5))
    assert bluez.notify(ADDRESS, ILLUMINANCE, (4321).to_bytes(3, "little"))
    assert bluez.notify(ADDRESS, ILLUMINANCE, b"\xff\xff\xff")  # unknown: counted, not stored
    wait_for(lambda: rows(config, MOV_KIND) and rows(config, LUX_KIND), 10, message="MOV, LUX")
    assert [v for _, v in rows(config, HR_KIND)] == [float(60 + i) for i in range(20)]
    rr = rows(config, RR_KIND)
    assert [v for _, v in rr] == [1000.0, 500.0] * 20
    # RR intervals end at the notification: the second of a pair is 0.5 s after the first.
    assert all(abs((b[0] - a[0]) - 0.5) < 1e-6 for a, b in zip(rr[::2], rr[1::2], strict=True))
    assert [v for _, v in rows(config, MOV_KIND)] == [12.5]
    assert [v for _, v in rows(config, LUX_KIND)] == [43.21]
    wait_for(lambda: counters(config).get("ble_illuminance_unknown") == 1, 5)
    # The daemon writes its sources' state once a second.
    status = wait_for(
        lambda: (s := agent_status(config)) and s["daemon"]["sources_connected"] == "1/1" and s,
        5,
        message="the source reported connected",
    )
    assert status["accepted"] == {"hr": 20, "rr": 40, "mov": 1, "lux": 1}
    assert counters(config)["ble_connects"] == 1
    assert proc.poll() is None


def test_device_found_by_advertised_service(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path, by="service")
    started(bluez, agent_procs, config)
    push_until_stored(bluez, config, [hrm(55)], HR_KIND, 1)
    assert [v for _, v in rows(config, HR_KIND)] == [55.0]


def test_link_loss_reconnects_and_data_continues(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path)
    proc = started(bluez, agent_procs, config)
    push_until_stored(bluez, config, [hrm(70)] * 5, HR_KIND, 5)
    assert bluez.drop_connection(ADDRESS)
    wait_for(lambda: counters(config).get("ble_link_lost") == 1, 10, message="link lost counted")
    bluez.wait_until_notifying(ADDRESS, HEART_RATE_MEASUREMENT, timeout=20)
    push_until_stored(bluez, config, [hrm(71)] * 5, HR_KIND, 10)
    assert [v for _, v in rows(config, HR_KIND)] == [70.0] * 5 + [71.0] * 5
    assert bluez.connect_count(ADDRESS) == 2
    assert counters(config)["ble_connects"] == 2
    assert proc.poll() is None


def test_failed_connects_are_counted_by_class_and_retried(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path)
    bluez.add_heart_rate_sensor(ADDRESS)
    bluez.fail_next_connects(ADDRESS, 2, "org.bluez.Error.InProgress")
    bluez.advertise(ADDRESS)
    agent_procs(config)
    bluez.wait_until_notifying(ADDRESS, HEART_RATE_MEASUREMENT, timeout=30)
    push_until_stored(bluez, config, [hrm(64)], HR_KIND, 1)
    seen = counters(config)
    # bleak-retry-connector retries inside one attempt (max 2): one attempt failed, one worked.
    assert seen.get("ble_in_progress", 0) == 1, seen
    assert seen["ble_connects"] == 1
    assert bluez.connect_count(ADDRESS) == 3


def test_malformed_notifications_are_counted_and_the_daemon_lives(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path)
    proc = started(bluez, agent_procs, config)
    bad = (
        [b""] * 10  # empty
        + [bytes([0x20, 60])] * 20  # reserved flag
        + [bytes([0x00, 60, 0x00])] * 30  # extra byte without the RR flag
        + [bytes([0x10, 60, 0x00, 0x04, 0x00])] * 40  # truncated RR list
        + [hrm(255)] * 5  # valid frame, heart rate out of range
        + [hrm(60, contact=2)] * 7  # sensor not in contact
    )
    for payload in bad:
        assert bluez.notify(ADDRESS, HEART_RATE_MEASUREMENT, payload)
    assert bluez.notify(ADDRESS, MOVEMENT, b"\x01\x02")  # wrong length
    push_until_stored(bluez, config, [hrm(62)], HR_KIND, 1)
    wait_for(lambda: counters(config).get("ble_no_contact") == 7, 10, message="no-contact count")
    seen = counters(config)
    assert seen["rejected_ble_empty"] == 10
    assert seen["rejected_ble_reserved_flags"] == 20
    assert seen["rejected_ble_wrong_length"] == 31
    assert seen["rejected_ble_truncated_rr"] == 40
    assert seen["rejected_value_out_of_range"] == 5
    assert [v for _, v in rows(config, HR_KIND)] == [62.0]
    assert proc.poll() is None


def test_readings_carry_the_device_clock_when_it_offers_current_time(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path)
    started(bluez, agent_procs, config, with_current_time=True)
    bluez.wait_until_notifying(ADDRESS, CURRENT_TIME)
    device_time = 1_795_557_602.0  # 2026-11-24 22:00:02 UTC, the device's clock
    assert bluez.notify(ADDRESS, CURRENT_TIME, format_current_time(device_time, ZoneInfo("UTC")))
    push_until_stored(bluez, config, [hrm(58)], HR_KIND, 1)
    [(stamp, value)] = rows(config, HR_KIND)
    assert value == 58.0
    assert device_time <= stamp < device_time + 2.0


def test_the_adapter_going_away_and_coming_back(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path)
    proc = started(bluez, agent_procs, config)
    push_until_stored(bluez, config, [hrm(66)], HR_KIND, 1)
    bluez.remove_adapter()
    wait_for(
        lambda: counters(config).get("ble_adapter_missing", 0) >= 1,
        20,
        message="the missing adapter to be counted",
    )
    bluez.add_adapter()  # the sensor is still in range (and advertising)
    bluez.wait_until_notifying(ADDRESS, HEART_RATE_MEASUREMENT, timeout=40)
    push_until_stored(bluez, config, [hrm(67)], HR_KIND, 2)
    assert [v for _, v in rows(config, HR_KIND)] == [66.0, 67.0]
    assert counters(config)["ble_link_lost"] == 1
    assert proc.poll() is None


@pytest.fixture(autouse=True)
def _no_real_bluetoothd_needed(bluez: BlueZStandIn) -> None:
    """Every test here runs against the stand-in (the fixture sets DBUS_SYSTEM_BUS_ADDRESS)."""


def test_a_device_that_disappears_is_searched_for_until_it_is_back(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path)
    proc = started(bluez, agent_procs, config)
    push_until_stored(bluez, config, [hrm(61)], HR_KIND, 1)
    bluez.remove_device(ADDRESS)  # out of range: the link drops, it stops advertising
    wait_for(
        lambda: counters(config).get("ble_not_found", 0) >= 1,
        20,
        message="the missing device to be counted",
    )
    wait_for(
        lambda: agent_status(config)["daemon"]["sources_connected"] == "0/1",  # type: ignore[index]
        5,
        message="the source reported disconnected",
    )
    bluez.advertise(ADDRESS)  # back in range
    bluez.wait_until_notifying(ADDRESS, HEART_RATE_MEASUREMENT, timeout=60)
    push_until_stored(bluez, config, [hrm(62)], HR_KIND, 2)
    seen = counters(config)
    assert seen["ble_link_lost"] == 1 and seen["ble_connects"] == 2
    assert proc.poll() is None


def test_the_battery_level_is_read_at_connect_its_changes_followed_and_a_low_one_flagged(
    tmp_path: Path, bluez: BlueZStandIn, agent_procs: Any
) -> None:
    config = ble_config(tmp_path)
    bluez.add_heart_rate_sensor(ADDRESS, with_illuminance=False)
    bluez.add_battery(ADDRESS, bytes([84]))
    bluez.advertise(ADDRESS)
    agent_procs(config)

    def battery() -> float | None:
        status = agent_status(config, check=False)  # None until the buffer exists
        level = status["battery"].get("ble") if status else None
        return level["percent"] if level else None

    wait_for(lambda: battery() == 84.0, 20, message="the level read at connect")
    status = agent_status(config)
    assert status is not None and status["health"] == "ok", status
    # the strap notifies changes; a malformed or impossible level is rejected and counted
    bluez.wait_until_notifying(ADDRESS, BATTERY_LEVEL, timeout=10)
    assert bluez.notify(ADDRESS, BATTERY_LEVEL, b"\x07\x00")
    assert bluez.notify(ADDRESS, BATTERY_LEVEL, bytes([101]))
    assert bluez.notify(ADDRESS, BATTERY_LEVEL, bytes([7]))
    wait_for(lambda: battery() == 7.0, 20, message="the notified level")
    status = agent_status(config)
    assert status is not None
    assert status["rejected"] == {"ble_wrong_length": 1, "value_out_of_range": 1}, status
    assert status["health"] == "degraded"
    assert "battery of ble at 7%: charge it or change its cell" in status["problems"]
    assert [v for _, v in rows(config, BAT_KIND)] == [84.0, 7.0]
    shown = run_agent("status", "--config", str(config))
    assert shown.returncode == 3  # degraded
    assert "battery         ble 7% at " in shown.stdout
