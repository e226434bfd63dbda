"""Device objects of the sensors BlueZ knows: created when a sensor is added or advertises
during discovery, connected and disconnected by bleak, dropped on link loss."""

from __future__ import annotations

from typing import Any

import dbus

from sleepfed_tools.bluez_standin.mock import glib_timers
from sleepfed_tools.bluez_standin.mock.bus_objects import (
    MockObject,
    adapter,
    add_object,
    byte_array,
    error,
    obj,
    remove_object,
    set_props,
)
from sleepfed_tools.bluez_standin.mock.gatt import resolve_services
from sleepfed_tools.bluez_standin.mock.ids import (
    ADAPTER_PATH,
    APPEARANCE_HEART_RATE_BELT,
    BATTERY_SERVICE,
    BATTERY_SERVICE_DATA,
    DEVICE_IFACE,
    MANUFACTURER_ID,
    MANUFACTURER_PAYLOAD,
)
from sleepfed_tools.bluez_standin.mock.world import Sensor, world


def _device_props(sensor: Sensor) -> dict[str, Any]:
    props = {
        "Address": dbus.String(sensor.address),
        "AddressType": dbus.String("random"),
        "Name": dbus.String(sensor.name),
        "Alias": dbus.String(sensor.name),
        "Appearance": dbus.UInt16(APPEARANCE_HEART_RATE_BELT),
        "Icon": dbus.String("unknown"),
        "Paired": dbus.Boolean(False),
        "Bonded": dbus.Boolean(False),
        "Trusted": dbus.Boolean(False),
        "Blocked": dbus.Boolean(False),
        "LegacyPairing": dbus.Boolean(False),
        "Connected": dbus.Boolean(False),
        "ServicesResolved": dbus.Boolean(False),
        "WakeAllowed": dbus.Boolean(False),
        "Adapter": dbus.ObjectPath(ADAPTER_PATH),
        "UUIDs": dbus.Array(sensor.advertised_uuids(), signature="s"),
        "ManufacturerData": dbus.Dictionary(
            {dbus.UInt16(MANUFACTURER_ID): byte_array(MANUFACTURER_PAYLOAD)}, signature="qv"
        ),
        "ServiceData": dbus.Dictionary(
            {dbus.String(BATTERY_SERVICE): byte_array(BATTERY_SERVICE_DATA)}, signature="sv"
        ),
    }
    if world().discovery_sessions:
        props["RSSI"] = dbus.Int16(sensor.rssi)
        props["TxPower"] = dbus.Int16(0)
    return props


def create_device(sensor: Sensor) -> None:
    if adapter() is None or obj(sensor.path) is not None:
        return
    add_object(
        sensor.path,
        DEVICE_IFACE,
        _device_props(sensor),
        [
            ("Connect", "", "", _device_connect),
            ("Disconnect", "", "", _device_disconnect),
            ("ConnectProfile", "s", "", ""),
            ("DisconnectProfile", "s", "", ""),
            ("Pair", "", "", _device_pair),
            ("CancelPairing", "", "", ""),
        ],
    )


def _sensor_of(device: MockObject) -> Sensor:
    return world().sensor(device.props[DEVICE_IFACE]["Address"])


def report_advertisement(sensor: Sensor) -> None:
    """What bluetoothd does when an advertisement of ``sensor`` arrives while discovering."""
    if not sensor.advertising or not world().discovery_sessions or adapter() is None:
        return
    device = obj(sensor.path)
    if device is None:
        create_device(sensor)  # InterfacesAdded carries RSSI and the advertising data
        return
    set_props(device, DEVICE_IFACE, {"RSSI": dbus.Int16(sensor.rssi), "TxPower": dbus.Int16(0)})


def _device_connect(device: MockObject) -> None:
    sensor = _sensor_of(device)
    sensor.connect_count += 1
    if sensor.fail_next > 0:
        sensor.fail_next -= 1
        raise error(sensor.fail_error, "Connection attempt failed (sleepfed BlueZ stand-in)")
    if sensor.connected:
        raise error("org.bluez.Error.AlreadyConnected", "Already Connected")
    sensor.connected = True
    sensor.generation += 1
    generation = sensor.generation
    set_props(device, DEVICE_IFACE, {"Connected": dbus.Boolean(True)})
    # GATT discovery happens after the link is up: services appear, then ServicesResolved.
    glib_timers.later(world().resolve_delay_ms, lambda: resolve_services(sensor, generation))


def _device_disconnect(device: MockObject) -> None:
    # bluetoothd answers Disconnect on an unconnected device with success
    drop_link(_sensor_of(device))


def _device_pair(device: MockObject) -> None:
    raise error("org.bluez.Error.AuthenticationFailed", "Pairing is not supported by the stand-in")


def drop_link(sensor: Sensor) -> bool:
    """Link loss or disconnect: ServicesResolved false, GATT objects gone, Connected false."""
    if not sensor.connected:
        return False
    sensor.connected = False
    sensor.pmd_streaming = False  # the strap ends a measurement with the link
    sensor.generation += 1
    device = obj(sensor.path)
    if device is not None and device.props[DEVICE_IFACE].get("ServicesResolved"):
        set_props(device, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(False)})
    for path in reversed(sensor.gatt_paths):
        remove_object(path)
    sensor.gatt_paths.clear()
    if device is not None:
        set_props(device, DEVICE_IFACE, {"Connected": dbus.Boolean(False)})
    return True


def remove_device(sensor: Sensor) -> None:
    drop_link(sensor)
    remove_object(sensor.path)
