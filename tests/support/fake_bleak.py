"""In-process fakes of bleak's backend seam (``BleakScanner(..., backend=Cls)``,
``BleakClient(..., backend=Cls)``) for the fast BLE unit tests.

A :class:`FakeRadio` holds the scripted peripherals; ``radio.scanner_backend`` and
``radio.client_backend`` are :class:`~bleak.backends.scanner.BaseBleakScanner` /
:class:`~bleak.backends.client.BaseBleakClient` subclasses bound to it. The radio records
every scan and connect as an interval so a test can check they never overlap.

The devices carry no BlueZ D-Bus path in ``BLEDevice.details``; bleak-retry-connector's
``establish_connection`` then skips all of its BlueZ-manager look-ups (connected devices,
services cache, waiting for the disconnect) and only sleeps its back-off.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bleak.uuids import normalize_uuid_str

ADVERTISING_INTERVAL = 0.002


@dataclass
class FakePeripheral:
    """A device the radio can see and connect to.

    ``gatt`` maps service UUIDs to characteristic UUIDs (16-bit short forms allowed).
    ``connect_errors`` is consumed one per connect attempt (``None``: that attempt succeeds);
    once it is empty, every attempt raises ``always_fail`` (or succeeds when that is None).
    """

    address: str
    name: str = "strap"
    advertised: list[str] = field(default_factory=list)
    gatt: dict[str, list[str]] = field(default_factory=dict)
    # characteristics that also offer reads (every read fails: reads are not faked)
    readable: list[str] = field(default_factory=list)
    advertising: bool = True
    connect_errors: collections.deque[BaseException | None] = field(
        default_factory=collections.deque
    )
    always_fail: BaseException | None = None

    def script_connect(self, *errors: BaseException | None) -> None:
        self.connect_errors.extend(errors)


@dataclass
class Interval:
    what: str  # "scan" or "connect"
    start: float
    end: float | None = None

    def overlaps(self, other: Interval) -> bool:
        end, other_end = self.end or float("inf"), other.end or float("inf")
        return self.start < other_end and other.start < end


class FakeRadio:
    def __init__(
        self,
        peripherals: Iterable[FakePeripheral],
        *,
        connect_seconds: float = 0.0,
        callback_on_disconnect: bool = True,
    ) -> None:
        self.peripherals = {p.address.upper(): p for p in peripherals}
        self.connect_seconds = connect_seconds
        # bleak's BlueZ backend calls the disconnected callback on disconnect() too.
        self.callback_on_disconnect = callback_on_disconnect
        # consumed one per scan start; then every start raises scan_always_fails (if set)
        self.scan_errors: collections.deque[BaseException] = collections.deque()
        self.scan_always_fails: BaseException | None = None
        self.intervals: list[Interval] = []
        self.active: set[str] = set()
        self.clashes: list[str] = []
        self.scanners: list[FakeScanner] = []
        self.clients: list[FakeClient] = []
        radio = self
        self.scanner_backend: type[FakeScanner] = type(
            "BoundFakeScanner", (FakeScanner,), {"radio": radio, "__module__": __name__}
        )
        self.client_backend: type[FakeClient] = type(
            "BoundFakeClient", (FakeClient,), {"radio": radio, "__module__": __name__}
        )

    # -- bookkeeping --------------------------------------------------------------------------
    def begin(self, what: str) -> Interval:
        if self.active:
            self.clashes.append(f"{what} began while {sorted(self.active)} active")
        self.active.add(what)
        interval = Interval(what, time.monotonic())
        self.intervals.append(interval)
        return interval

    def end(self, interval: Interval) -> None:
        interval.end = time.monotonic()
        self.active.discard(interval.what)

    def overlapping(self) -> list[tuple[Interval, Interval]]:
        scans = [i for i in self.intervals if i.what == "scan"]
        connects = [i for i in self.intervals if i.what == "connect"]
        return [(s, c) for s in scans for c in connects if s.overlaps(c)]

    # -- what a test looks at -----------------------------------------------------------------
    def clients_of(self, address: str) -> list[FakeClient]:
        return [c for c in self.clients if c.address.upper() == address.upper()]

    def connected_client(self, address: str) -> FakeClient | None:
        connected = [c for c in self.clients_of(address) if c.is_connected]
        return connected[-1] if connected else None


def build_services(
    gatt: dict[str, list[str]], readable: Iterable[str] = ()
) -> BleakGATTServiceCollection:
    reads = {normalize_uuid_str(uuid) for uuid in readable}
    services = BleakGATTServiceCollection()
    handle = 1
    for service_uuid, characteristics in gatt.items():
        service = BleakGATTService(None, handle, normalize_uuid_str(service_uuid))
        services.add_service(service)
        handle += 1
        for char_uuid in characteristics:
            uuid = normalize_uuid_str(char_uuid)
            properties = ["read", "notify"] if uuid in reads else ["notify"]
            services.add_characteristic(
                BleakGATTCharacteristic(None, handle, uuid, properties, lambda: 20, service)
            )
            handle += 2
    return services


class FakeScanner(BaseBleakScanner):
    radio: FakeRadio

    def __init__(
        self,
        detection_callback: Any,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        bluez: dict[str, Any] | None = None,
        cb: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.bluez = dict(bluez or {})
        self.radio.scanners.append(self)
        self._task: asyncio.Task[None] | None = None
        self._interval: Interval | None = None

    async def start(self) -> None:
        if self.radio.scan_errors:
            raise self.radio.scan_errors.popleft()
        if self.radio.scan_always_fails is not None:
            raise self.radio.scan_always_fails
        self.seen_devices = {}
        self._interval = self.radio.begin("scan")
        self._task = asyncio.create_task(self._advertise())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._interval is not None:
            self.radio.end(self._interval)
            self._interval = None

    async def _advertise(self) -> None:
        while True:
            await asyncio.sleep(ADVERTISING_INTERVAL)
            for peripheral in list(self.radio.peripherals.values()):
                if not peripheral.advertising:
                    continue
                uuids = [normalize_uuid_str(u) for u in peripheral.advertised]
                adv = AdvertisementData(
                    local_name=peripheral.name,
                    manufacturer_data={},
                    service_data={},
                    service_uuids=uuids,
                    tx_power=None,
                    rssi=-60,
                    platform_data=(),
                )
                # details without a BlueZ "path": bleak-retry-connector stays off D-Bus
                device = self.create_or_update_device(
                    peripheral.address, peripheral.address, peripheral.name, {"fake": True}, adv
                )
                if self.is_allowed_uuid(uuids):
                    self.call_detection_callbacks(device, adv)


class FakeClient(BaseBleakClient):
    radio: FakeRadio

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 30.0,
        services: set[str] | None = None,
        bluez: dict[str, Any] | None = None,
        winrt: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self.bluez = dict(bluez or {})
        self.extra_kwargs = kwargs
        self.peripheral = self.radio.peripherals[self.address.upper()]
        self.connect_attempts = 0
        self.disconnects = 0
        self.notifying: dict[str, NotifyCallback] = {}
        self.subscription_order: list[str] = []
        self._connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.radio.clients.append(self)

    @property
    def name(self) -> str:
        return self.peripheral.name

    @property
    def mtu_size(self) -> int:
        return 23

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        self.connect_attempts += 1
        self._loop = asyncio.get_running_loop()
        interval = self.radio.begin("connect")
        try:
            await asyncio.sleep(self.radio.connect_seconds)
            errors = self.peripheral.connect_errors
            error = errors.popleft() if errors else self.peripheral.always_fail
            if error is not None:
                raise error
            self.services = build_services(self.peripheral.gatt, self.peripheral.readable)
            self._connected = True
        finally:
            self.radio.end(interval)

    async def disconnect(self) -> None:
        self.disconnects += 1
        if not self._connected:
            return
        await asyncio.sleep(0)  # the Disconnect call's round trip
        self._drop(notify=self.radio.callback_on_disconnect)
        await asyncio.sleep(0)  # BlueZ's disconnect() resumes after the Connected=False signal

    def _drop(self, notify: bool) -> None:
        self._connected = False
        self.services = None
        self.notifying.clear()
        if notify and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise BleakError("pairing is not faked")

    async def unpair(self) -> None:
        raise BleakError("pairing is not faked")

    async def read_gatt_char(self, characteristic: Any, **kwargs: Any) -> bytearray:
        raise BleakError("reads are not faked")

    async def read_gatt_descriptor(self, descriptor: Any, **kwargs: Any) -> bytearray:
        raise BleakError("reads are not faked")

    async def write_gatt_char(self, characteristic: Any, data: Any, response: bool) -> None:
        raise BleakError("writes are not faked")

    async def write_gatt_descriptor(self, descriptor: Any, data: Any) -> None:
        raise BleakError("writes are not faked")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        self.notifying[characteristic.uuid] = callback
        self.subscription_order.append(characteristic.uuid)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self.notifying.pop(characteristic.uuid, None)

    # -- driven by the test (from any thread) ---------------------------------------------------
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None, "never connected"
        self._loop.call_soon_threadsafe(fn, *args)

    def push(self, uuid: str, data: bytes) -> None:
        """A notification of ``data`` on ``uuid``, delivered on the client's event loop."""
        callback = self.notifying[normalize_uuid_str(uuid)]
        self._on_loop(callback, bytearray(data))

    def lose_link(self) -> None:
        """The peripheral goes away: unsolicited disconnect, callback on the event loop."""
        self._on_loop(self._drop, True)
