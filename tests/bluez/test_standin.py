"""bleak's real BlueZ backend against the BlueZ stand-in on a private D-Bus system bus."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any

import pytest

pytest.importorskip("dbusmock", reason="python-dbusmock is not installed")
pytest.importorskip("bleak", reason="bleak is not installed")

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
)
from sleepfed_tools.bluez_standin import BlueZStandIn

from sleepfed.board.sources.ble_parsing import (
    ENVIRONMENTAL_SENSING_SERVICE,
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    ILLUMINANCE,
    MOVEMENT,
    MOVEMENT_SERVICE,
)
from tests.bluez.fixtures import bluez_fixture  # noqa: F401 - provides the fixture `bluez`

CCCD = "00002902-0000-1000-8000-00805f9b34fb"

ADDRESS = "C0:FF:EE:00:00:01"
NAME = "SleepFed HR"
#: flags 0x10 (uint8 HR, RR intervals present), HR 72 bpm, one RR interval of 1024/1024 s
HR_72_RR_1S = bytes([0x10, 72, 0x00, 0x04])
#: 123.45 lux as uint24 in 0.01 lux
ILLUMINANCE_123_45 = (12345).to_bytes(3, "little")
MOVEMENT_12_5 = struct.pack("<f", 12.5)
TEST_TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Each scenario gets a fresh event loop (and so a fresh bleak BlueZ manager)."""
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT))


async def call(func: Any, *args: Any) -> Any:
    """Stand-in calls block (dbus-python): keep them off the event loop."""
    return await asyncio.to_thread(func, *args)


async def find(address: str = ADDRESS) -> BLEDevice:
    device = await BleakScanner.find_device_by_address(address, timeout=5)
    assert device is not None, f"{address} not found"
    return device


class Notifications:
    """Collects notifications per characteristic UUID."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[bytes]] = {}

    def callback(self, uuid: str) -> Any:
        queue = self.queues.setdefault(uuid, asyncio.Queue())

        def on_notify(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            queue.put_nowait(bytes(data))

        return on_notify

    async def next(self, uuid: str, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.queues[uuid].get(), timeout)


async def push(standin: BlueZStandIn, uuid: str, value: bytes) -> None:
    delivered = await call(standin.notify, ADDRESS, uuid, value)
    assert delivered, f"{uuid} was not notifying"


def test_scanner_finds_advertising_sensor(bluez: BlueZStandIn) -> None:
    path = bluez.add_heart_rate_sensor(ADDRESS, NAME)
    assert path == "/org/bluez/hci0/dev_C0_FF_EE_00_00_01"
    bluez.advertise(ADDRESS, rssi=-55)

    async def scenario() -> None:
        device = await find()
        assert device.address == ADDRESS
        assert device.name == NAME
        assert device.details["path"] == path

        found: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_advert(dev: BLEDevice, adv: Any) -> None:
            if dev.address == ADDRESS and not found.done():
                found.set_result(adv)

        async with BleakScanner(on_advert):
            adv = await asyncio.wait_for(found, 5)
        assert adv.rssi == -55
        assert adv.local_name == NAME
        assert HEART_RATE_SERVICE in adv.service_uuids
        assert adv.manufacturer_data == {0xFFFF: b"SF\x01"}
        assert adv.service_data == {"0000180f-0000-1000-8000-00805f9b34fb": bytes([90])}

    run(scenario())


def test_silent_sensor_is_not_found(bluez: BlueZStandIn) -> None:
    bluez.add_heart_rate_sensor(ADDRESS, NAME)

    async def scenario() -> None:
        assert await BleakScanner.find_device_by_address(ADDRESS, timeout=0.5) is None

    run(scenario())


def test_connect_services_and_notifications(bluez: BlueZStandIn) -> None:
    bluez.add_heart_rate_sensor(ADDRESS, NAME)
    bluez.advertise(ADDRESS)

    async def scenario() -> None:
        notes = Notifications()
        async with BleakClient(await find()) as client:
            assert client.is_connected
            hr_service = client.services.get_service(HEART_RATE_SERVICE)
            assert hr_service is not None
            hr = hr_service.get_characteristic(HEART_RATE_MEASUREMENT)
            assert hr is not None
            assert "notify" in hr.properties
            assert [d.uuid for d in hr.descriptors] == [CCCD]
            assert client.services.get_service(ENVIRONMENTAL_SENSING_SERVICE) is not None
            assert client.services.get_service(MOVEMENT_SERVICE) is not None

            # not subscribed yet: the stand-in refuses to deliver
            assert not await call(bluez.notify, ADDRESS, "2a37", HR_72_RR_1S)

            for uuid in (HEART_RATE_MEASUREMENT, ILLUMINANCE, MOVEMENT):
                await client.start_notify(uuid, notes.callback(uuid))
            assert await call(bluez.is_notifying, ADDRESS, "0x2A37")

            await push(bluez, "2a37", HR_72_RR_1S)
            assert await notes.next(HEART_RATE_MEASUREMENT) == HR_72_RR_1S
            await push(bluez, ILLUMINANCE, ILLUMINANCE_123_45)
            assert await notes.next(ILLUMINANCE) == ILLUMINANCE_123_45
            await push(bluez, MOVEMENT, MOVEMENT_12_5)
            assert await notes.next(MOVEMENT) == MOVEMENT_12_5

            # illuminance is readable and keeps its last value
            assert bytes(await client.read_gatt_char(ILLUMINANCE)) == ILLUMINANCE_123_45
            with pytest.raises(BleakError):
                await client.read_gatt_char(HEART_RATE_MEASUREMENT)  # notify only

            await client.stop_notify(HEART_RATE_MEASUREMENT)
            assert not await call(bluez.notify, ADDRESS, "2a37", HR_72_RR_1S)
        assert not client.is_connected
        assert bluez.connect_count(ADDRESS) == 1

    run(scenario())


def test_sensor_without_optional_services(bluez: BlueZStandIn) -> None:
    bluez.add_heart_rate_sensor(ADDRESS, NAME, with_illuminance=False, with_movement=False)
    bluez.advertise(ADDRESS)

    async def scenario() -> None:
        async with BleakClient(await find()) as client:
            assert [s.uuid for s in client.services] == [HEART_RATE_SERVICE]

    run(scenario())


def test_link_loss_then_reconnect(bluez: BlueZStandIn) -> None:
    bluez.add_heart_rate_sensor(ADDRESS, NAME)
    bluez.advertise(ADDRESS)

    async def scenario() -> None:
        lost = asyncio.Event()
        notes = Notifications()
        client = BleakClient(await find(), disconnected_callback=lambda _c: lost.set())
        await client.connect()
        try:
            await client.start_notify(
                HEART_RATE_MEASUREMENT, notes.callback(HEART_RATE_MEASUREMENT)
            )
            assert await call(bluez.drop_connection, ADDRESS)
            await asyncio.wait_for(lost.wait(), 2)
            assert not client.is_connected
            assert not await call(bluez.notify, ADDRESS, "2a37", HR_72_RR_1S)

            # the same client object reconnects; notifications must be re-enabled
            lost.clear()
            await client.connect()
            assert client.is_connected
            assert client.services.get_characteristic(HEART_RATE_MEASUREMENT) is not None
            await client.start_notify(
                HEART_RATE_MEASUREMENT, notes.callback(HEART_RATE_MEASUREMENT)
            )
            await push(bluez, "2a37", HR_72_RR_1S)
            assert await notes.next(HEART_RATE_MEASUREMENT) == HR_72_RR_1S
        finally:
            await client.disconnect()
        assert lost.is_set()  # our own disconnect fires the callback too
        assert await call(bluez.connect_count, ADDRESS) == 2

    run(scenario())


@pytest.mark.parametrize("error_name", ["org.bluez.Error.InProgress", "org.bluez.Error.Failed"])
def test_failed_connects_raise_then_succeed(bluez: BlueZStandIn, error_name: str) -> None:
    bluez.add_heart_rate_sensor(ADDRESS, NAME)
    bluez.advertise(ADDRESS)
    bluez.fail_next_connects(ADDRESS, 2, error_name)

    async def scenario() -> None:
        client = BleakClient(await find())
        for _ in range(2):
            with pytest.raises(BleakDBusError) as raised:
                await client.connect()
            assert raised.value.dbus_error == error_name
            assert not client.is_connected
        await client.connect()
        try:
            assert client.is_connected
        finally:
            await client.disconnect()
        assert await call(bluez.connect_count, ADDRESS) == 3

    run(scenario())


def test_retry_connector_survives_two_failures(bluez: BlueZStandIn) -> None:
    bleak_retry_connector = pytest.importorskip("bleak_retry_connector")
    bluez.add_heart_rate_sensor(ADDRESS, NAME)
    bluez.advertise(ADDRESS)
    bluez.fail_next_connects(ADDRESS, 2, "org.bluez.Error.InProgress")

    async def scenario() -> None:
        notes = Notifications()
        client = await bleak_retry_connector.establish_connection(
            bleak_retry_connector.BleakClientWithServiceCache,
            await find(),
            NAME,
            max_attempts=4,
        )
        try:
            assert client.is_connected
            await client.start_notify(
                HEART_RATE_MEASUREMENT, notes.callback(HEART_RATE_MEASUREMENT)
            )
            await push(bluez, "2a37", HR_72_RR_1S)
            assert await notes.next(HEART_RATE_MEASUREMENT) == HR_72_RR_1S
        finally:
            await client.disconnect()
        assert await call(bluez.connect_count, ADDRESS) == 3

    run(scenario())


def test_retry_connector_gives_up(bluez: BlueZStandIn) -> None:
    bleak_retry_connector = pytest.importorskip("bleak_retry_connector")
    bluez.add_heart_rate_sensor(ADDRESS, NAME)
    bluez.advertise(ADDRESS)
    bluez.fail_next_connects(ADDRESS, 5, "org.bluez.Error.Failed")

    async def scenario() -> None:
        with pytest.raises(bleak_retry_connector.BleakConnectionError):
            await bleak_retry_connector.establish_connection(
                bleak_retry_connector.BleakClientWithServiceCache,
                await find(),
                NAME,
                max_attempts=3,
            )
        assert await call(bluez.connect_count, ADDRESS) == 3

    run(scenario())


def test_adapter_removed_and_back(bluez: BlueZStandIn) -> None:
    bluez.add_heart_rate_sensor(ADDRESS, NAME)
    bluez.advertise(ADDRESS)

    async def scenario() -> None:
        lost = asyncio.Event()
        notes = Notifications()
        device = await find()
        client = BleakClient(device, disconnected_callback=lambda _c: lost.set())
        await client.connect()
        await client.start_notify(HEART_RATE_MEASUREMENT, notes.callback(HEART_RATE_MEASUREMENT))

        await call(bluez.remove_adapter)
        # the connection drops like a link loss ...
        await asyncio.wait_for(lost.wait(), 2)
        assert not client.is_connected
        # ... scanning has no adapter ...
        with pytest.raises(BleakBluetoothNotAvailableError):
            await BleakScanner.find_device_by_address(ADDRESS, timeout=1)
        # ... and the device object is gone: bleak's manager no longer knows the path, so this
        # is a plain BleakError from bleak itself (BleakDeviceNotFoundError would need BlueZ
        # to answer Connect with UnknownObject while bleak still had the device cached)
        with pytest.raises(BleakError, match="not found") as raised:
            await client.connect()
        assert not isinstance(raised.value, BleakDeviceNotFoundError)
        assert not client.is_connected

        await call(bluez.add_adapter)
        # the adapter comes back empty: the sensor must be found by scanning again
        device = await find()
        client = BleakClient(device)
        async with client:
            await client.start_notify(
                HEART_RATE_MEASUREMENT, notes.callback(HEART_RATE_MEASUREMENT)
            )
            await push(bluez, "2a37", HR_72_RR_1S)
            assert await notes.next(HEART_RATE_MEASUREMENT) == HR_72_RR_1S

    run(scenario())


def test_removed_device_reappears_when_advertising(bluez: BlueZStandIn) -> None:
    bluez.add_heart_rate_sensor(ADDRESS, NAME)

    async def scenario() -> None:
        await call(bluez.remove_device, ADDRESS)
        assert await BleakScanner.find_device_by_address(ADDRESS, timeout=0.5) is None
        await call(bluez.advertise, ADDRESS, -70)
        device = await find()
        assert device.details["props"]["RSSI"] == -70

    run(scenario())


SUBPROCESS_SCAN = """
import asyncio, sys
from bleak import BleakScanner
device = asyncio.run(BleakScanner.find_device_by_address(sys.argv[1], timeout=5))
print(device.name if device else "NOT FOUND")
"""


def test_subprocess_talks_to_the_standin(bluez: BlueZStandIn) -> None:
    assert os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == bluez.bus_address
    bluez.add_heart_rate_sensor(ADDRESS, NAME)
    bluez.advertise(ADDRESS)
    out = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCAN, ADDRESS],
        capture_output=True,
        text=True,
        timeout=TEST_TIMEOUT,
        check=True,
    )
    assert out.stdout.strip() == NAME
    assert "StartDiscovery" in bluez.log_text()


def test_environment_restored_after_stop() -> None:
    import dbus

    before = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    with BlueZStandIn() as standin:
        assert os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == standin.bus_address != before
        log_path = standin.log_path
        assert log_path is not None and log_path.exists()
        with pytest.raises(dbus.exceptions.DBusException, match="SensorExists"):
            standin.add_heart_rate_sensor(ADDRESS)
            standin.add_heart_rate_sensor(ADDRESS)
    assert os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") == before
    assert not log_path.exists()
