"""``BlueZStandIn``: a private D-Bus system bus with ``template.py`` (python-dbusmock) serving
``org.bluez``, standing in for bluetoothd on machines with no Bluetooth (tests, the demo).

While it runs, ``DBUS_SYSTEM_BUS_ADDRESS`` in ``os.environ`` names the private bus, so bleak (via
dbus-fast) in this process and in any subprocess started meanwhile talks to the stand-in. The
methods below block (dbus-python); from async code call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import dbus
import dbus.bus
from dbusmock import BusType, PrivateDBus, SpawnedMock

TEMPLATE = Path(__file__).resolve().parent / "template.py"
STANDIN_IFACE = "org.sleepfed.BlueZStandIn"
ENV_VAR = "DBUS_SYSTEM_BUS_ADDRESS"
CALL_TIMEOUT = 10.0


class BlueZStandIn:
    """Start/stop the stand-in; typed wrappers around its ``org.sleepfed.BlueZStandIn`` methods."""

    adapter = "hci0"
    adapter_path = "/org/bluez/hci0"

    def __init__(
        self,
        *,
        resolve_delay_ms: int = 30,
        advertising_interval_ms: int = 100,
        log_dir: Path | None = None,
    ) -> None:
        """``resolve_delay_ms``: from ``Connect`` to services resolved; ``advertising_interval_ms``:
        how often advertisers are reported while discovering. The server's call log goes to
        ``log_dir`` (kept) or to a temporary file deleted by :meth:`stop`.
        """
        self.resolve_delay_ms = resolve_delay_ms
        self.advertising_interval_ms = advertising_interval_ms
        self._log_dir = log_dir
        self._bus: PrivateDBus | None = None
        self._mock: SpawnedMock | None = None
        self._conn: dbus.bus.BusConnection | None = None
        self._iface: dbus.Interface | None = None
        self._log_file: Any = None
        self._saved_env: str | None = None
        self._lock = threading.Lock()
        self.log_path: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> BlueZStandIn:
        if self._bus is not None:
            raise RuntimeError("BlueZStandIn already started")
        self._saved_env = os.environ.get(ENV_VAR)
        try:
            self._bus = PrivateDBus(BusType.SYSTEM)
            self._bus.start()  # exports DBUS_SYSTEM_BUS_ADDRESS
            fd, name = tempfile.mkstemp(prefix="bluez-standin-", suffix=".log", dir=self._log_dir)
            os.close(fd)
            self.log_path = Path(name)
            self._log_file = self.log_path.open("wb")
            self._mock = SpawnedMock.spawn_with_template(
                str(TEMPLATE),
                {
                    "resolve_delay_ms": dbus.UInt32(self.resolve_delay_ms),
                    "advertising_interval_ms": dbus.UInt32(self.advertising_interval_ms),
                },
                BusType.SYSTEM,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
            self._conn = dbus.bus.BusConnection(self._bus.address)
            self._iface = dbus.Interface(
                self._conn.get_object("org.bluez", "/"), dbus_interface=STANDIN_IFACE
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._iface = None
        if self._mock is not None:
            self._mock.terminate()
            self._mock = None
        if self._bus is not None:
            self._bus.stop()
            self._bus = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            if self._log_dir is None and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)
        if self._saved_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = self._saved_env

    def __enter__(self) -> BlueZStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def bus_address(self) -> str:
        """``unix:path=…`` of the private system bus (also in ``DBUS_SYSTEM_BUS_ADDRESS``)."""
        assert self._bus is not None, "not started"
        return self._bus.address

    @property
    def server_pid(self) -> int:
        assert self._mock is not None, "not started"
        return self._mock.process.pid

    def log_text(self) -> str:
        """The mock server's call log so far (every D-Bus call and signal)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    # -- test-only API -----------------------------------------------------------------------

    def _call(self, method: str, *args: Any) -> Any:
        if self._iface is None:
            raise RuntimeError("BlueZStandIn is not running")
        with self._lock:
            return getattr(self._iface, method)(*args, timeout=CALL_TIMEOUT)

    def add_heart_rate_sensor(
        self,
        address: str,
        name: str = "SleepFed HR",
        *,
        with_illuminance: bool = True,
        with_movement: bool = True,
        with_current_time: bool = False,
    ) -> str:
        """A sensor in range that BlueZ already knows (not connected). Returns its object path.
        ``with_current_time`` adds the Current Time Service (0x1805, 0x2A2B notify)."""
        return str(
            self._call(
                "AddHeartRateSensor",
                address,
                name,
                dbus.Boolean(with_illuminance),
                dbus.Boolean(with_movement),
                dbus.Boolean(with_current_time),
            )
        )

    def advertise(self, address: str, rssi: int = -60) -> None:
        """The sensor advertises (now and whenever discovery starts) with this RSSI."""
        self._call("Advertise", address, dbus.Int16(rssi))

    def stop_advertising(self, address: str) -> None:
        self._call("StopAdvertising", address)

    def notify(self, address: str, char_uuid: str, value: bytes) -> bool:
        """Push a notification; False when that characteristic is not notifying (not sent)."""
        return bool(self._call("Notify", address, char_uuid, dbus.ByteArray(bytes(value))))

    def notify_many(self, address: str, char_uuid: str, values: list[bytes]) -> int:
        """Push several notifications in one D-Bus call; returns how many were sent (0 when
        that characteristic is not notifying)."""
        payload = dbus.Array([dbus.ByteArray(bytes(v)) for v in values], signature="ay")
        return int(self._call("NotifyMany", address, char_uuid, payload))

    def is_notifying(self, address: str, char_uuid: str) -> bool:
        return bool(self._call("IsNotifying", address, char_uuid))

    def wait_until_notifying(self, address: str, char_uuid: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_notifying(address, char_uuid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{char_uuid} of {address} not notifying after {timeout} s")
            time.sleep(0.02)

    def drop_connection(self, address: str) -> bool:
        """Link loss; returns whether the sensor was connected."""
        return bool(self._call("DropConnection", address))

    def fail_next_connects(
        self, address: str, count: int, error_name: str = "org.bluez.Error.Failed"
    ) -> None:
        """The next ``count`` ``Connect`` calls fail with the D-Bus error ``error_name``."""
        self._call("FailNextConnects", address, dbus.UInt32(count), error_name)

    def remove_device(self, address: str) -> None:
        """The sensor leaves: link dropped, BlueZ forgets it, advertising stops."""
        self._call("RemoveDevice", address)

    def remove_adapter(self) -> None:
        """``hci0`` disappears: connections dropped, devices and the adapter removed."""
        self._call("RemoveAdapter")

    def add_adapter(self) -> str:
        """``hci0`` (re)appears, knowing no devices until they advertise during discovery."""
        return str(self._call("AddAdapter"))

    def add_battery(self, address: str, value: bytes) -> None:
        """The sensor offers the Battery service from its next connection on, its Battery
        Level (0x2A19) holding ``value`` (``bytes([84])``: 84%)."""
        self._call("AddBattery", address, dbus.ByteArray(bytes(value)))

    def add_pmd(self, address: str) -> None:
        """The sensor offers Polar's PMD service (ACC) from its next connection on."""
        self._call("AddPmd", address)

    def refuse_next_pmd_start(self, address: str, code: int) -> None:
        """The next PMD start is answered with error ``code`` (e.g. 13, device in charger)."""
        self._call("RefuseNextPmdStart", address, dbus.Byte(code))

    def break_pmd_notifications(self, address: str) -> None:
        """From the next connection on, subscribing to PMD data fails (NotSupported)."""
        self._call("BreakPmdNotifications", address)

    def end_pmd_measurement(self, address: str) -> None:
        """The strap ends its ACC measurement by itself; heart rate goes on."""
        self._call("EndPmdMeasurement", address)

    def pmd_measuring(self, address: str) -> bool:
        return bool(self._call("PmdMeasuring", address))

    def pmd_starts(self, address: str) -> int:
        """How many PMD measurements were started so far."""
        return int(self._call("PmdStarts", address))

    def connect_count(self, address: str) -> int:
        """How many ``Connect`` calls the sensor's device object got (failed ones included)."""
        return int(self._call("ConnectCount", address))
