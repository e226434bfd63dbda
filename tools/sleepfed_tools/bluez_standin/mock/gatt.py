"""GATT objects of a connected sensor: services, characteristics and their CCCDs appear once
the link is up (then ``ServicesResolved``), and the methods bleak calls on them."""

from __future__ import annotations

import dbus
from dbusmock import mockobject

from sleepfed_tools.bluez_standin.mock import pmd
from sleepfed_tools.bluez_standin.mock.bus_objects import (
    MockObject,
    add_object,
    byte_array,
    error,
    obj,
    set_props,
)
from sleepfed_tools.bluez_standin.mock.ids import (
    ATT_MTU,
    CCCD,
    DEVICE_IFACE,
    GATT_CHARACTERISTIC_IFACE,
    GATT_DESCRIPTOR_IFACE,
    GATT_SERVICE_IFACE,
    PMD_CONTROL_POINT,
    normalize_uuid,
)
from sleepfed_tools.bluez_standin.mock.world import Characteristic, Sensor, world


def resolve_services(sensor: Sensor, generation: int) -> None:
    """GATT discovery after ``Connect``: every service of the sensor's layout, then
    ``ServicesResolved``. Nothing if the link changed meanwhile (``generation``)."""
    device = obj(sensor.path)
    if device is None or not sensor.connected or sensor.generation != generation:
        return
    for service_handle, service_uuid, characteristics in sensor.layout():
        service_path = f"{sensor.path}/service{service_handle:04x}"
        add_object(
            service_path,
            GATT_SERVICE_IFACE,
            {
                "UUID": dbus.String(service_uuid),
                "Device": dbus.ObjectPath(sensor.path),
                "Primary": dbus.Boolean(True),
                "Includes": dbus.Array([], signature="o"),
                "Handle": dbus.UInt16(service_handle),
            },
            [],
        )
        sensor.gatt_paths.append(service_path)
        for characteristic in characteristics:
            _add_characteristic(sensor, service_path, characteristic)
    set_props(
        device,
        DEVICE_IFACE,
        {
            "UUIDs": dbus.Array(sensor.advertised_uuids(), signature="s"),
            "ServicesResolved": dbus.Boolean(True),
        },
    )


def _add_characteristic(sensor: Sensor, service_path: str, characteristic: Characteristic) -> None:
    """A characteristic object, and its CCCD if it notifies or indicates."""
    char_handle, char_uuid, flags, value = characteristic
    char_path = f"{service_path}/char{char_handle:04x}"
    add_object(
        char_path,
        GATT_CHARACTERISTIC_IFACE,
        {
            "UUID": dbus.String(char_uuid),
            "Service": dbus.ObjectPath(service_path),
            "Value": byte_array(value),
            "Notifying": dbus.Boolean(False),
            "Flags": dbus.Array(flags, signature="s"),
            "MTU": dbus.UInt16(ATT_MTU),
            "Handle": dbus.UInt16(char_handle),
        },
        [
            ("ReadValue", "a{sv}", "ay", _char_read),
            ("WriteValue", "aya{sv}", "", _char_write),
            ("StartNotify", "", "", _char_start_notify),
            ("StopNotify", "", "", _char_stop_notify),
        ],
    )
    sensor.gatt_paths.append(char_path)
    if "notify" in flags or "indicate" in flags:
        _add_cccd(sensor, char_path, char_handle + 2)  # declaration, value, then the CCCD


def _add_cccd(sensor: Sensor, char_path: str, desc_handle: int) -> None:
    desc_path = f"{char_path}/desc{desc_handle:04x}"
    add_object(
        desc_path,
        GATT_DESCRIPTOR_IFACE,
        {
            "UUID": dbus.String(CCCD),
            "Characteristic": dbus.ObjectPath(char_path),
            "Value": byte_array(b"\x00\x00"),
            "Flags": dbus.Array(["read", "write"], signature="s"),
            "Handle": dbus.UInt16(desc_handle),
        },
        [
            ("ReadValue", "a{sv}", "ay", _desc_read),
            ("WriteValue", "aya{sv}", "", _desc_write),
        ],
    )
    sensor.gatt_paths.append(desc_path)


def char_path_of(sensor: Sensor, char_uuid: str) -> str | None:
    wanted = normalize_uuid(char_uuid)
    for path in sensor.gatt_paths:
        target = obj(path)
        props = target.props.get(GATT_CHARACTERISTIC_IFACE) if target is not None else None
        if props is not None and str(props["UUID"]) == wanted:
            return path
    return None


def notifying_char(address: str, char_uuid: str) -> MockObject | None:
    """The characteristic object if the sensor is connected and it is notifying."""
    sensor = world().sensor(address)
    if not sensor.connected:
        return None
    path = char_path_of(sensor, char_uuid)
    if path is None:
        return None
    char = obj(path)
    return char if char.props[GATT_CHARACTERISTIC_IFACE]["Notifying"] else None


def _char_read(char: MockObject, _options: object) -> dbus.Array:
    props = char.props[GATT_CHARACTERISTIC_IFACE]
    if "read" not in props["Flags"]:
        raise error("org.bluez.Error.NotPermitted", "Read not permitted")
    return props["Value"]


def _char_write(char: MockObject, value: bytes, _options: object) -> None:
    props = char.props[GATT_CHARACTERISTIC_IFACE]
    if "write" not in props["Flags"] and "write-without-response" not in props["Flags"]:
        raise error("org.bluez.Error.NotPermitted", "Write not permitted")
    if str(props["UUID"]) == PMD_CONTROL_POINT:
        # the answer is an indication, sent only if the client enabled them (as BlueZ does)
        answer = pmd.control_point(_sensor_of(char), bytes(value))
        if props["Notifying"]:
            set_props(char, GATT_CHARACTERISTIC_IFACE, {"Value": byte_array(answer)})
        return
    set_props(char, GATT_CHARACTERISTIC_IFACE, {"Value": byte_array(bytes(value))})


def _sensor_of(char: MockObject) -> Sensor:
    return next(s for s in world().sensors.values() if char.path.startswith(s.path + "/"))


def _set_notifying(char: MockObject, notifying: bool) -> None:
    props = char.props[GATT_CHARACTERISTIC_IFACE]
    if "notify" not in props["Flags"] and "indicate" not in props["Flags"]:
        raise error("org.bluez.Error.NotSupported", "Operation is not supported")
    if bool(props["Notifying"]) != notifying:
        set_props(char, GATT_CHARACTERISTIC_IFACE, {"Notifying": dbus.Boolean(notifying)})
    for path, desc in list(mockobject.objects.items()):
        if path.startswith(char.path + "/desc"):
            desc_props = desc.props[GATT_DESCRIPTOR_IFACE]
            if str(desc_props["UUID"]) == CCCD:
                desc_props["Value"] = byte_array(b"\x01\x00" if notifying else b"\x00\x00")


def _char_start_notify(char: MockObject) -> None:
    _set_notifying(char, True)


def _char_stop_notify(char: MockObject) -> None:
    _set_notifying(char, False)


def _desc_read(desc: MockObject, _options: object) -> dbus.Array:
    return desc.props[GATT_DESCRIPTOR_IFACE]["Value"]


def _desc_write(desc: MockObject, value: bytes, _options: object) -> None:
    # bluetoothd refuses direct CCCD writes; StartNotify/StopNotify are the way
    raise error("org.bluez.Error.NotPermitted", "Write not permitted")
