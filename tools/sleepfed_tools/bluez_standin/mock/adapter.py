"""Adapter ``hci0`` and its methods, replacing the stock bluez5 template's, which know nothing
of advertisers: discovery reports the advertising sensors every interval while it runs."""

from __future__ import annotations

from typing import Any

import dbus
from dbusmock.templates import bluez5

from sleepfed_tools.bluez_standin.mock import glib_timers
from sleepfed_tools.bluez_standin.mock.bus_objects import MockObject, adapter, error, obj, set_props
from sleepfed_tools.bluez_standin.mock.devices import remove_device, report_advertisement
from sleepfed_tools.bluez_standin.mock.ids import (
    ADAPTER_ALIAS,
    ADAPTER_IFACE,
    ADAPTER_NAME,
    DEVICE_IFACE,
    ERROR_PREFIX,
)
from sleepfed_tools.bluez_standin.mock.world import world


def _set_discovery_filter(adapter_obj: MockObject, discovery_filter: dict[str, Any]) -> None:
    adapter_obj.discovery_filter = discovery_filter


def _start_discovery(adapter_obj: MockObject) -> None:
    radio = world()
    radio.discovery_sessions += 1
    if radio.discovery_sessions > 1:
        return
    radio.discovery_epoch += 1
    epoch = radio.discovery_epoch
    set_props(adapter_obj, ADAPTER_IFACE, {"Discovering": dbus.Boolean(True)})

    def advertising_tick() -> bool:
        # advertisers keep advertising: report them every interval while discovery runs
        if world().discovery_epoch != epoch or not world().discovery_sessions:
            return False
        for sensor in list(world().sensors.values()):
            report_advertisement(sensor)
        return True

    advertising_tick()
    glib_timers.timeout_add(radio.advertising_interval_ms, advertising_tick)


def _stop_discovery(adapter_obj: MockObject) -> None:
    radio = world()
    if not radio.discovery_sessions:
        raise error("org.bluez.Error.Failed", "No discovery started")
    radio.discovery_sessions -= 1
    if radio.discovery_sessions:
        return
    radio.discovery_epoch += 1
    set_props(adapter_obj, ADAPTER_IFACE, {"Discovering": dbus.Boolean(False)})
    # like bluetoothd: RSSI and TxPower of the devices found are invalidated
    for sensor in radio.sensors.values():
        device = obj(sensor.path)
        if device is not None and "RSSI" in device.props[DEVICE_IFACE]:
            set_props(device, DEVICE_IFACE, {}, ("RSSI", "TxPower"))


def _remove_device(_adapter_obj: MockObject, path: str) -> None:
    for sensor in world().sensors.values():
        if sensor.path == str(path) and obj(sensor.path) is not None:
            remove_device(sensor)
            return
    raise error("org.bluez.Error.DoesNotExist", "Does Not Exist")


def add_adapter(root: MockObject) -> str:
    """``hci0`` through the stock template, with the methods above in place of its own."""
    if adapter() is not None:
        raise error(ERROR_PREFIX + "AdapterExists", f"{ADAPTER_NAME} already exists")
    world().discovery_sessions = 0
    world().discovery_epoch += 1
    path: str = bluez5.AddAdapter(root, ADAPTER_NAME, ADAPTER_ALIAS)
    adapter_obj = adapter()
    adapter_obj.discovery_filter = {}
    adapter_obj.AddMethods(
        ADAPTER_IFACE,
        [
            ("RemoveDevice", "o", "", _remove_device),
            ("StartDiscovery", "", "", _start_discovery),
            ("StopDiscovery", "", "", _stop_discovery),
            ("SetDiscoveryFilter", "a{sv}", "", _set_discovery_filter),
            ("GetDiscoveryFilters", "", "as", 'ret = ["UUIDs", "RSSI", "Transport"]'),
        ],
    )
    return path
