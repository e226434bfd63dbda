"""The stand-in's Polar PMD service (sleepfed_tools.bluez_standin.mock.pmd) through bleak's
real BlueZ backend: the control point's answers, byte for byte as Polar's SDK documents
them, and ACC frames that flow only while a measurement runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("dbusmock", reason="python-dbusmock is not installed")

from bleak import BleakClient
from sleepfed_tools.bluez_standin import BlueZStandIn

from sleepfed.board.sources.polar_pmd import (
    PMD_CONTROL_POINT,
    PMD_DATA,
    ErrorCode,
    SettingType,
    build_acc_frame,
    get_settings_command,
    parse_acc_frame,
    parse_control_point_response,
    parse_settings,
    start_acc_command,
    stop_command,
)
from tests.bluez.fixtures import bluez_fixture  # noqa: F401 - provides the fixture `bluez`
from tests.bluez.test_standin import ADDRESS, Notifications, call, find, run

# start ACC at 13 Hz, 16 bits, 8 G: [op, type, (setting, count, uint16)...]
BAD_RATE = bytes([2, 2, 0, 1, 13, 0, 1, 1, 16, 0, 2, 1, 8, 0])


async def _answer(client: BleakClient, queue: asyncio.Queue[bytes], command: bytes) -> bytes:
    await client.write_gatt_char(PMD_CONTROL_POINT, command, response=True)
    return await asyncio.wait_for(queue.get(), 2)


def test_the_control_point_answers_as_the_sdk_documents(bluez: BlueZStandIn) -> None:
    bluez.add_heart_rate_sensor(ADDRESS)
    bluez.add_pmd(ADDRESS)
    bluez.advertise(ADDRESS)
    frame = build_acc_frame(5_000_000_000, [[10, -20, 1000]] * 36)

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        notes = Notifications()
        async with BleakClient(await find()) as client:
            await client.start_notify(PMD_CONTROL_POINT, notes.callback(PMD_CONTROL_POINT))
            await client.start_notify(PMD_DATA, notes.callback(PMD_DATA))
            cp, data = notes.queues[PMD_CONTROL_POINT], notes.queues[PMD_DATA]
            seen["settings"] = await _answer(client, cp, get_settings_command())
            seen["no measurement"] = await call(bluez.notify, ADDRESS, PMD_DATA, frame)
            seen["bad rate"] = await _answer(client, cp, BAD_RATE)
            seen["start"] = await _answer(client, cp, start_acc_command(50, 8))
            seen["measuring"] = await call(bluez.pmd_measuring, ADDRESS)
            seen["again"] = await _answer(client, cp, start_acc_command(50, 8))
            seen["delivered"] = await call(bluez.notify, ADDRESS, PMD_DATA, frame)
            seen["frame"] = await asyncio.wait_for(data.get(), 2)
            seen["stop"] = await _answer(client, cp, stop_command())
            seen["stop again"] = await _answer(client, cp, stop_command())
            seen["ecg"] = await _answer(client, cp, bytes([2, 0]))
            seen["op 9"] = await _answer(client, cp, bytes([9, 2]))
            await call(bluez.refuse_next_pmd_start, ADDRESS, 13)
            seen["in charger"] = await _answer(client, cp, start_acc_command(50, 8))
            try:
                await call(bluez.notify, ADDRESS, PMD_DATA, bytes(245))
            except Exception as error:
                seen["over the MTU"] = str(error)
        return seen

    seen = run(scenario())
    settings = parse_control_point_response(seen["settings"])
    assert seen["settings"][:5] == bytes([0xF0, 1, 2, 0, 0])
    assert parse_settings(settings.parameters) == {
        SettingType.SAMPLE_RATE: (25, 50, 100, 200),
        SettingType.RESOLUTION: (16,),
        SettingType.RANGE: (2, 4, 8),
    }
    assert seen["no measurement"] is False  # no frame before a start
    assert seen["bad rate"] == bytes([0xF0, 2, 2, ErrorCode.INVALID_SAMPLE_RATE])
    assert seen["start"] == bytes([0xF0, 2, 2, 0, 0]) and seen["measuring"] is True
    assert seen["again"] == bytes([0xF0, 2, 2, ErrorCode.ALREADY_IN_STATE])
    assert seen["delivered"] is True and seen["frame"] == frame
    assert parse_acc_frame(seen["frame"]).samples.tolist()[0] == [10, -20, 1000]
    assert seen["stop"] == bytes([0xF0, 3, 2, 0, 0])
    assert seen["stop again"] == bytes([0xF0, 3, 2, ErrorCode.INVALID_STATE])
    assert seen["ecg"] == bytes([0xF0, 2, 0, ErrorCode.NOT_SUPPORTED])
    assert seen["op 9"] == bytes([0xF0, 9, 2, ErrorCode.INVALID_OP_CODE])
    assert seen["in charger"] == bytes([0xF0, 2, 2, ErrorCode.DEVICE_IN_CHARGER])
    assert "InvalidValueLength" in seen["over the MTU"]
    assert bluez.pmd_starts(ADDRESS) == 1


def test_a_link_loss_ends_the_measurement(bluez: BlueZStandIn) -> None:
    bluez.add_heart_rate_sensor(ADDRESS)
    bluez.add_pmd(ADDRESS)
    bluez.advertise(ADDRESS)

    async def scenario() -> bool:
        notes = Notifications()
        client = BleakClient(await find())
        await client.connect()
        await client.start_notify(PMD_CONTROL_POINT, notes.callback(PMD_CONTROL_POINT))
        await _answer(client, notes.queues[PMD_CONTROL_POINT], start_acc_command(25, 2))
        measuring = await call(bluez.pmd_measuring, ADDRESS)
        await call(bluez.drop_connection, ADDRESS)
        return measuring

    assert run(scenario()) is True
    assert bluez.pmd_measuring(ADDRESS) is False
