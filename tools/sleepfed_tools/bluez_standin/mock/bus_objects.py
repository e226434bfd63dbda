"""The mock's D-Bus objects as bluetoothd shows them: added and removed with the
ObjectManager signals, properties changed with ``PropertiesChanged``."""

from __future__ import annotations

from typing import Any

import dbus
from dbusmock import OBJECT_MANAGER_IFACE, mockobject

from sleepfed_tools.bluez_standin.mock.ids import ADAPTER_PATH

MAIN_OBJ = "/"

#: A python-dbusmock object (``dbusmock.mockobject.DBusMockObject``).
MockObject = Any


def byte_array(value: bytes) -> dbus.Array:
    return dbus.Array([dbus.Byte(b) for b in bytes(value)], signature="y")


def error(name: str, message: str) -> dbus.exceptions.DBusException:
    return dbus.exceptions.DBusException(message, name=name)


def root() -> MockObject:
    return mockobject.objects[MAIN_OBJ]


def obj(path: str) -> MockObject | None:
    return mockobject.objects.get(path)


def adapter() -> MockObject | None:
    return mockobject.objects.get(ADAPTER_PATH)


def set_props(
    target: MockObject, interface: str, changed: dict[str, Any], invalidated: tuple[str, ...] = ()
) -> None:
    """Store property values and emit ``PropertiesChanged`` like bluetoothd does."""
    props = target.props.setdefault(interface, {})
    props.update(changed)
    for name in invalidated:
        props.pop(name, None)
    target.EmitSignal(
        dbus.PROPERTIES_IFACE,
        "PropertiesChanged",
        "sa{sv}as",
        [
            interface,
            dbus.Dictionary(changed, signature="sv"),
            dbus.Array(list(invalidated), signature="s"),
        ],
    )


def add_object(path: str, interface: str, props: dict[str, Any], methods: list[Any]) -> None:
    manager = root()
    manager.AddObject(path, interface, props, methods)
    manager.EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesAdded",
        "oa{sa{sv}}",
        [dbus.ObjectPath(path), mockobject.objects[path].props],
    )


def remove_object(path: str) -> None:
    target = obj(path)
    if target is None:
        return
    interfaces = dbus.Array(list(target.props.keys()), signature="s")
    manager = root()
    manager.RemoveObject(path)
    manager.EmitSignal(
        OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas", [dbus.ObjectPath(path), interfaces]
    )
