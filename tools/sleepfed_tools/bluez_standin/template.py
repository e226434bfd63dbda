"""BlueZ stand-in: a python-dbusmock template that poses as ``bluetoothd`` with heart-rate sensors.

No Bluetooth hardware is needed: bleak's *real* BlueZ backend talks over a real (private) D-Bus
system bus to this template, which python-dbusmock serves as ``org.bluez``. It builds on the stock
``bluez5`` template (manager objects, ``hci0`` adapter) and adds what bleak needs and the stock
template lacks: well-typed device properties, GATT objects that appear on ``Connect`` followed by
``ServicesResolved``, ``StartNotify``/``StopNotify`` and notifications as ``PropertiesChanged`` of
``Value``.

Run it with ``python -m dbusmock --system --template agent/ble_standin.py`` (or
``dbusmock.SpawnedMock.spawn_with_template``) on a bus named by ``DBUS_SYSTEM_BUS_ADDRESS``; it
adds adapter ``hci0`` by itself (template parameter ``adapter``, default true). Tests and demos
drive the radio world through the interface ``org.sleepfed.BlueZStandIn`` on ``/``:

``AddHeartRateSensor(s address, s name, b with_illuminance, b with_movement) -> o``
    A sensor in range; BlueZ knows it at once (device object, not connected).
``Advertise(s address, n rssi)`` / ``StopAdvertising(s address)``
    While the adapter discovers, an advertising sensor is reported (``RSSI`` change, or
    ``InterfacesAdded`` if BlueZ had forgotten it); ``StartDiscovery`` reports all advertisers.
``Notify(s address, s char_uuid, ay value) -> b``
    A notification, delivered only if that characteristic is notifying; returns whether it was.
``DropConnection(s address) -> b``
    Link loss: ``ServicesResolved`` false, GATT objects removed, ``Connected`` false.
``FailNextConnects(s address, u count, s error_name)``
    The next ``count`` ``Connect`` calls fail with that D-Bus error name.
``RemoveDevice(s address)``
    The sensor leaves: link dropped if needed, device object removed, advertising stops.
``RemoveAdapter()`` / ``AddAdapter()``
    ``hci0`` goes away (connections dropped, devices and adapter removed) and comes back empty.
``ConnectCount(s address) -> u``, ``IsNotifying(s address, s char_uuid) -> b``
    What happened so far (every ``Connect`` call counts, failed ones too).

Characteristic UUIDs may be given short (``"2a37"``, ``"0x2A37"``) or in full.
"""

import ctypes
import logging

import dbus
import dbus.service
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from dbusmock.templates import bluez5

BUS_NAME = "org.bluez"
MAIN_OBJ = "/"
SYSTEM_BUS = True
IS_OBJECT_MANAGER = True

STANDIN_IFACE = "org.sleepfed.BlueZStandIn"
ERROR_PREFIX = STANDIN_IFACE + ".Error."

ADAPTER_NAME = "hci0"
ADAPTER_PATH = "/org/bluez/" + ADAPTER_NAME
ADAPTER_ALIAS = "sleepfed-standin"

ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
GATT_SERVICE_IFACE = "org.bluez.GattService1"
GATT_CHARACTERISTIC_IFACE = "org.bluez.GattCharacteristic1"
GATT_DESCRIPTOR_IFACE = "org.bluez.GattDescriptor1"

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """The full 128-bit UUID of a 16-bit Bluetooth SIG UUID."""
    return f"0000{short:04x}{BASE_UUID_SUFFIX}"


HEART_RATE_SERVICE = uuid16(0x180D)
HEART_RATE_MEASUREMENT = uuid16(0x2A37)
ENVIRONMENTAL_SENSING_SERVICE = uuid16(0x181A)
ILLUMINANCE = uuid16(0x2AFB)
BATTERY_SERVICE = uuid16(0x180F)
CCCD = uuid16(0x2902)
CURRENT_TIME_SERVICE = uuid16(0x1805)
CURRENT_TIME = uuid16(0x2A2B)
MOVEMENT_SERVICE = "7e1a0001-5c1e-4f2a-9b9e-5f1eedc0ffee"
MOVEMENT_CHARACTERISTIC = "7e1a0002-5c1e-4f2a-9b9e-5f1eedc0ffee"

#: 0xFFFF is the company identifier reserved for tests.
MANUFACTURER_ID = 0xFFFF
MANUFACTURER_PAYLOAD = b"SF\x01"
#: Battery level 90 % as service data of the Battery service.
BATTERY_SERVICE_DATA = bytes([90])
APPEARANCE_HEART_RATE_BELT = 0x0341
ATT_MTU = 247
ILLUMINANCE_UNKNOWN = b"\xff\xff\xff"

log = logging.getLogger(__name__)


def normalize_uuid(uuid: str) -> str:
    """``"2a37"``, ``"0x2A37"``, ``"00002a37"`` or a full UUID -> full lower-case UUID."""
    text = str(uuid).strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) <= 4:
        return uuid16(int(text, 16))
    if len(text) == 8:
        return f"{text}{BASE_UUID_SUFFIX}"
    return text


def device_path(address: str) -> str:
    return f"{ADAPTER_PATH}/dev_{address.upper().replace(':', '_')}"


def _byte_array(value: bytes) -> dbus.Array:
    return dbus.Array([dbus.Byte(b) for b in bytes(value)], signature="y")


def _error(name: str, message: str) -> dbus.exceptions.DBusException:
    return dbus.exceptions.DBusException(message, name=name)


# ---------------------------------------------------------------------------------------------
# GLib timers through ctypes: dbusmock's server runs a bare libglib main loop (no PyGObject).


_GSourceFunc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_glib = None
_live_callbacks: dict = {}  # id -> ctypes callback (they are not hashable)
_retired_callbacks: list = []  # finished, but maybe still on the C stack: freed on the next add


def _glib_timeout_add(delay_ms: int, func) -> None:
    """Call ``func()`` from the server's main loop every ``delay_ms`` while it returns True."""
    global _glib
    if _glib is None:
        _glib = ctypes.cdll.LoadLibrary("libglib-2.0.so.0")
        _glib.g_timeout_add.argtypes = [ctypes.c_uint, _GSourceFunc, ctypes.c_void_p]
        _glib.g_timeout_add.restype = ctypes.c_uint
    _retired_callbacks.clear()

    def run(_data) -> int:
        try:
            again = bool(func())
        except Exception:  # a timer must never kill the server
            log.exception("stand-in timer failed")
            again = False
        if not again:
            _retired_callbacks.append(_live_callbacks.pop(id(callback), None))
        return int(again)  # G_SOURCE_CONTINUE / G_SOURCE_REMOVE

    callback = _GSourceFunc(run)
    _live_callbacks[id(callback)] = callback  # keep the C callback alive while GLib may call it
    _glib.g_timeout_add(delay_ms, callback, None)


def _later(delay_ms: int, func) -> None:
    """Run ``func()`` once from the server's main loop after ``delay_ms`` (now if that is 0)."""
    if delay_ms <= 0:
        func()
        return

    def once() -> bool:
        func()
        return False

    _glib_timeout_add(delay_ms, once)


# ---------------------------------------------------------------------------------------------
# The radio world: sensors in range, independent of what BlueZ currently knows about them.


class Sensor:
    def __init__(
        self,
        address: str,
        name: str,
        with_illuminance: bool,
        with_movement: bool,
        with_current_time: bool = False,
    ):
        self.address = address.upper()
        self.name = name
        self.with_illuminance = with_illuminance
        self.with_movement = with_movement
        self.with_current_time = with_current_time
        self.rssi = -60
        self.advertising = False
        self.connected = False
        self.generation = 0  # bumped on every link change; stale timers compare it
        self.connect_count = 0
        self.fail_next = 0
        self.fail_error = ""
        self.gatt_paths: list[str] = []  # creation order: service, chars, descriptors

    @property
    def path(self) -> str:
        return device_path(self.address)

    def layout(self) -> list[tuple[int, str, list[tuple[int, str, list[str], bytes]]]]:
        """(service handle, UUID, [(char handle, UUID, flags, initial value)])."""
        services = [
            (0x0010, HEART_RATE_SERVICE, [(0x0011, HEART_RATE_MEASUREMENT, ["notify"], b"")])
        ]
        if self.with_illuminance:
            services.append(
                (
                    0x0020,
                    ENVIRONMENTAL_SENSING_SERVICE,
                    [(0x0021, ILLUMINANCE, ["read", "notify"], ILLUMINANCE_UNKNOWN)],
                )
            )
        if self.with_movement:
            services.append(
                (0x0030, MOVEMENT_SERVICE, [(0x0031, MOVEMENT_CHARACTERISTIC, ["notify"], b"")])
            )
        if self.with_current_time:
            services.append(
                (0x0040, CURRENT_TIME_SERVICE, [(0x0041, CURRENT_TIME, ["read", "notify"], b"")])
            )
        return services

    def advertised_uuids(self) -> list[str]:
        return [uuid for _, uuid, _ in self.layout()]


class World:
    def __init__(self, resolve_delay_ms: int = 30, advertising_interval_ms: int = 100):
        self.resolve_delay_ms = resolve_delay_ms
        self.advertising_interval_ms = advertising_interval_ms
        self.sensors: dict[str, Sensor] = {}
        self.discovery_sessions = 0
        self.discovery_epoch = 0  # bumped whenever discovery starts or ends

    def sensor(self, address: str) -> Sensor:
        try:
            return self.sensors[str(address).upper()]
        except KeyError:
            raise _error(ERROR_PREFIX + "NoSuchSensor", f"no sensor {address}") from None


_world = World()


def _root():
    return mockobject.objects[MAIN_OBJ]


def _obj(path: str):
    return mockobject.objects.get(path)


def _adapter():
    return mockobject.objects.get(ADAPTER_PATH)


def _set_props(obj, interface: str, changed: dict, invalidated: tuple[str, ...] = ()) -> None:
    """Store property values and emit ``PropertiesChanged`` like bluetoothd does."""
    props = obj.props.setdefault(interface, {})
    props.update(changed)
    for name in invalidated:
        props.pop(name, None)
    obj.EmitSignal(
        dbus.PROPERTIES_IFACE,
        "PropertiesChanged",
        "sa{sv}as",
        [
            interface,
            dbus.Dictionary(changed, signature="sv"),
            dbus.Array(list(invalidated), signature="s"),
        ],
    )


def _add_object(path: str, interface: str, props: dict, methods: list) -> None:
    root = _root()
    root.AddObject(path, interface, props, methods)
    root.EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesAdded",
        "oa{sa{sv}}",
        [dbus.ObjectPath(path), mockobject.objects[path].props],
    )


def _remove_object(path: str) -> None:
    obj = _obj(path)
    if obj is None:
        return
    interfaces = dbus.Array(list(obj.props.keys()), signature="s")
    root = _root()
    root.RemoveObject(path)
    root.EmitSignal(
        OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas", [dbus.ObjectPath(path), interfaces]
    )


# ---------------------------------------------------------------------------------------------
# Device objects


def _device_props(sensor: Sensor) -> dict:
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
            {dbus.UInt16(MANUFACTURER_ID): _byte_array(MANUFACTURER_PAYLOAD)}, signature="qv"
        ),
        "ServiceData": dbus.Dictionary(
            {dbus.String(BATTERY_SERVICE): _byte_array(BATTERY_SERVICE_DATA)}, signature="sv"
        ),
    }
    if _world.discovery_sessions:
        props["RSSI"] = dbus.Int16(sensor.rssi)
        props["TxPower"] = dbus.Int16(0)
    return props


def _create_device(sensor: Sensor) -> None:
    if _adapter() is None or _obj(sensor.path) is not None:
        return
    _add_object(
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


def _sensor_of(device) -> Sensor:
    return _world.sensor(device.props[DEVICE_IFACE]["Address"])


def _report_advertisement(sensor: Sensor) -> None:
    """What bluetoothd does when an advertisement of ``sensor`` arrives while discovering."""
    if not sensor.advertising or not _world.discovery_sessions or _adapter() is None:
        return
    device = _obj(sensor.path)
    if device is None:
        _create_device(sensor)  # InterfacesAdded carries RSSI and the advertising data
        return
    _set_props(device, DEVICE_IFACE, {"RSSI": dbus.Int16(sensor.rssi), "TxPower": dbus.Int16(0)})


def _device_connect(device) -> None:
    sensor = _sensor_of(device)
    sensor.connect_count += 1
    if sensor.fail_next > 0:
        sensor.fail_next -= 1
        raise _error(sensor.fail_error, "Connection attempt failed (sleepfed BlueZ stand-in)")
    if sensor.connected:
        raise _error("org.bluez.Error.AlreadyConnected", "Already Connected")
    sensor.connected = True
    sensor.generation += 1
    generation = sensor.generation
    _set_props(device, DEVICE_IFACE, {"Connected": dbus.Boolean(True)})
    # GATT discovery happens after the link is up: services appear, then ServicesResolved.
    _later(_world.resolve_delay_ms, lambda: _resolve_services(sensor, generation))


def _device_disconnect(device) -> None:
    # bluetoothd answers Disconnect on an unconnected device with success
    _drop_link(_sensor_of(device))


def _device_pair(device) -> None:
    raise _error("org.bluez.Error.AuthenticationFailed", "Pairing is not supported by the stand-in")


def _resolve_services(sensor: Sensor, generation: int) -> None:
    device = _obj(sensor.path)
    if device is None or not sensor.connected or sensor.generation != generation:
        return
    for service_handle, service_uuid, characteristics in sensor.layout():
        service_path = f"{sensor.path}/service{service_handle:04x}"
        _add_object(
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
        for char_handle, char_uuid, flags, value in characteristics:
            char_path = f"{service_path}/char{char_handle:04x}"
            _add_object(
                char_path,
                GATT_CHARACTERISTIC_IFACE,
                {
                    "UUID": dbus.String(char_uuid),
                    "Service": dbus.ObjectPath(service_path),
                    "Value": _byte_array(value),
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
                desc_handle = char_handle + 2  # declaration, value, then the CCCD
                desc_path = f"{char_path}/desc{desc_handle:04x}"
                _add_object(
                    desc_path,
                    GATT_DESCRIPTOR_IFACE,
                    {
                        "UUID": dbus.String(CCCD),
                        "Characteristic": dbus.ObjectPath(char_path),
                        "Value": _byte_array(b"\x00\x00"),
                        "Flags": dbus.Array(["read", "write"], signature="s"),
                        "Handle": dbus.UInt16(desc_handle),
                    },
                    [
                        ("ReadValue", "a{sv}", "ay", _desc_read),
                        ("WriteValue", "aya{sv}", "", _desc_write),
                    ],
                )
                sensor.gatt_paths.append(desc_path)
    _set_props(
        device,
        DEVICE_IFACE,
        {
            "UUIDs": dbus.Array(sensor.advertised_uuids(), signature="s"),
            "ServicesResolved": dbus.Boolean(True),
        },
    )


def _drop_link(sensor: Sensor) -> bool:
    """Link loss or disconnect: ServicesResolved false, GATT objects gone, Connected false."""
    if not sensor.connected:
        return False
    sensor.connected = False
    sensor.generation += 1
    device = _obj(sensor.path)
    if device is not None and device.props[DEVICE_IFACE].get("ServicesResolved"):
        _set_props(device, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(False)})
    for path in reversed(sensor.gatt_paths):
        _remove_object(path)
    sensor.gatt_paths.clear()
    if device is not None:
        _set_props(device, DEVICE_IFACE, {"Connected": dbus.Boolean(False)})
    return True


def _remove_device(sensor: Sensor) -> None:
    _drop_link(sensor)
    _remove_object(sensor.path)


# ---------------------------------------------------------------------------------------------
# GATT methods


def _char_path_of(sensor: Sensor, char_uuid: str) -> str | None:
    wanted = normalize_uuid(char_uuid)
    for path in sensor.gatt_paths:
        obj = _obj(path)
        props = obj.props.get(GATT_CHARACTERISTIC_IFACE) if obj is not None else None
        if props is not None and str(props["UUID"]) == wanted:
            return path
    return None


def _char_read(char, _options) -> dbus.Array:
    props = char.props[GATT_CHARACTERISTIC_IFACE]
    if "read" not in props["Flags"]:
        raise _error("org.bluez.Error.NotPermitted", "Read not permitted")
    return props["Value"]


def _char_write(char, value, _options) -> None:
    props = char.props[GATT_CHARACTERISTIC_IFACE]
    if "write" not in props["Flags"] and "write-without-response" not in props["Flags"]:
        raise _error("org.bluez.Error.NotPermitted", "Write not permitted")
    _set_props(char, GATT_CHARACTERISTIC_IFACE, {"Value": _byte_array(bytes(value))})


def _set_notifying(char, notifying: bool) -> None:
    props = char.props[GATT_CHARACTERISTIC_IFACE]
    if "notify" not in props["Flags"] and "indicate" not in props["Flags"]:
        raise _error("org.bluez.Error.NotSupported", "Operation is not supported")
    if bool(props["Notifying"]) != notifying:
        _set_props(char, GATT_CHARACTERISTIC_IFACE, {"Notifying": dbus.Boolean(notifying)})
    for path, obj in list(mockobject.objects.items()):
        if path.startswith(char.path + "/desc"):
            desc_props = obj.props[GATT_DESCRIPTOR_IFACE]
            if str(desc_props["UUID"]) == CCCD:
                desc_props["Value"] = _byte_array(b"\x01\x00" if notifying else b"\x00\x00")


def _char_start_notify(char) -> None:
    _set_notifying(char, True)


def _char_stop_notify(char) -> None:
    _set_notifying(char, False)


def _desc_read(desc, _options) -> dbus.Array:
    return desc.props[GATT_DESCRIPTOR_IFACE]["Value"]


def _desc_write(desc, value, _options) -> None:
    # bluetoothd refuses direct CCCD writes; StartNotify/StopNotify are the way
    raise _error("org.bluez.Error.NotPermitted", "Write not permitted")


# ---------------------------------------------------------------------------------------------
# Adapter methods (replacing the stock template's, which know nothing of advertisers)


def _adapter_set_discovery_filter(adapter, discovery_filter) -> None:
    adapter.discovery_filter = discovery_filter


def _adapter_start_discovery(adapter) -> None:
    _world.discovery_sessions += 1
    if _world.discovery_sessions > 1:
        return
    _world.discovery_epoch += 1
    epoch = _world.discovery_epoch
    _set_props(adapter, ADAPTER_IFACE, {"Discovering": dbus.Boolean(True)})

    def advertising_tick() -> bool:
        # advertisers keep advertising: report them every interval while discovery runs
        if _world.discovery_epoch != epoch or not _world.discovery_sessions:
            return False
        for sensor in list(_world.sensors.values()):
            _report_advertisement(sensor)
        return True

    advertising_tick()
    _glib_timeout_add(_world.advertising_interval_ms, advertising_tick)


def _adapter_stop_discovery(adapter) -> None:
    if not _world.discovery_sessions:
        raise _error("org.bluez.Error.Failed", "No discovery started")
    _world.discovery_sessions -= 1
    if _world.discovery_sessions:
        return
    _world.discovery_epoch += 1
    _set_props(adapter, ADAPTER_IFACE, {"Discovering": dbus.Boolean(False)})
    # like bluetoothd: RSSI and TxPower of the devices found are invalidated
    for sensor in _world.sensors.values():
        device = _obj(sensor.path)
        if device is not None and "RSSI" in device.props[DEVICE_IFACE]:
            _set_props(device, DEVICE_IFACE, {}, ("RSSI", "TxPower"))


def _adapter_remove_device(_adapter_obj, path) -> None:
    for sensor in _world.sensors.values():
        if sensor.path == str(path) and _obj(sensor.path) is not None:
            _remove_device(sensor)
            return
    raise _error("org.bluez.Error.DoesNotExist", "Does Not Exist")


def _add_adapter(root) -> str:
    if _adapter() is not None:
        raise _error(ERROR_PREFIX + "AdapterExists", f"{ADAPTER_NAME} already exists")
    _world.discovery_sessions = 0
    _world.discovery_epoch += 1
    path = bluez5.AddAdapter(root, ADAPTER_NAME, ADAPTER_ALIAS)
    adapter = _adapter()
    adapter.discovery_filter = {}
    adapter.AddMethods(
        ADAPTER_IFACE,
        [
            ("RemoveDevice", "o", "", _adapter_remove_device),
            ("StartDiscovery", "", "", _adapter_start_discovery),
            ("StopDiscovery", "", "", _adapter_stop_discovery),
            ("SetDiscoveryFilter", "a{sv}", "", _adapter_set_discovery_filter),
            ("GetDiscoveryFilters", "", "as", 'ret = ["UUIDs", "RSSI", "Transport"]'),
        ],
    )
    return path


# ---------------------------------------------------------------------------------------------
# Test-only interface on "/"


@dbus.service.method(STANDIN_IFACE, in_signature="ssbbb", out_signature="o")
def AddHeartRateSensor(self, address, name, with_illuminance, with_movement, with_current_time):
    key = str(address).upper()
    if key in _world.sensors:
        raise _error(ERROR_PREFIX + "SensorExists", f"sensor {address} already exists")
    sensor = Sensor(
        key, str(name), bool(with_illuminance), bool(with_movement), bool(with_current_time)
    )
    _world.sensors[key] = sensor
    _create_device(sensor)
    return dbus.ObjectPath(sensor.path)


@dbus.service.method(STANDIN_IFACE, in_signature="sn", out_signature="")
def Advertise(self, address, rssi):
    sensor = _world.sensor(address)
    sensor.rssi = int(rssi)
    sensor.advertising = True
    _report_advertisement(sensor)


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="")
def StopAdvertising(self, address):
    _world.sensor(address).advertising = False


def _notifying_char(address: str, char_uuid: str):
    sensor = _world.sensor(address)
    if not sensor.connected:
        return None
    path = _char_path_of(sensor, char_uuid)
    if path is None:
        return None
    char = _obj(path)
    return char if char.props[GATT_CHARACTERISTIC_IFACE]["Notifying"] else None


@dbus.service.method(STANDIN_IFACE, in_signature="ssay", out_signature="b")
def Notify(self, address, char_uuid, value):
    char = _notifying_char(address, char_uuid)
    if char is None:
        return False
    _set_props(char, GATT_CHARACTERISTIC_IFACE, {"Value": _byte_array(bytes(value))})
    return True


@dbus.service.method(STANDIN_IFACE, in_signature="ssaay", out_signature="u")
def NotifyMany(self, address, char_uuid, values):
    """Several notifications of one characteristic in one call (one signal each)."""
    char = _notifying_char(address, char_uuid)
    if char is None:
        return dbus.UInt32(0)
    for value in values:
        _set_props(char, GATT_CHARACTERISTIC_IFACE, {"Value": _byte_array(bytes(value))})
    return dbus.UInt32(len(values))


@dbus.service.method(STANDIN_IFACE, in_signature="ss", out_signature="b")
def IsNotifying(self, address, char_uuid):
    sensor = _world.sensor(address)
    path = _char_path_of(sensor, char_uuid) if sensor.connected else None
    return bool(path and _obj(path).props[GATT_CHARACTERISTIC_IFACE]["Notifying"])


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="b")
def DropConnection(self, address):
    return _drop_link(_world.sensor(address))


@dbus.service.method(STANDIN_IFACE, in_signature="sus", out_signature="")
def FailNextConnects(self, address, count, error_name):
    sensor = _world.sensor(address)
    sensor.fail_next = int(count)
    sensor.fail_error = str(error_name)


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="")
def RemoveDevice(self, address):
    sensor = _world.sensor(address)
    sensor.advertising = False
    _remove_device(sensor)


@dbus.service.method(STANDIN_IFACE, in_signature="", out_signature="")
def RemoveAdapter(self):
    adapter = _adapter()
    if adapter is None:
        raise _error(ERROR_PREFIX + "NoAdapter", f"{ADAPTER_NAME} does not exist")
    for sensor in _world.sensors.values():
        _remove_device(sensor)
    _world.discovery_sessions = 0
    _world.discovery_epoch += 1
    _remove_object(ADAPTER_PATH)


@dbus.service.method(STANDIN_IFACE, in_signature="", out_signature="o")
def AddAdapter(self):
    return dbus.ObjectPath(_add_adapter(self))


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="u")
def ConnectCount(self, address):
    return dbus.UInt32(_world.sensor(address).connect_count)


def load(mock, parameters):
    """dbusmock entry point: BlueZ manager objects, then (by default) adapter ``hci0``."""
    global _world
    parameters = parameters or {}
    _world = World(
        resolve_delay_ms=int(parameters.get("resolve_delay_ms", 30)),
        advertising_interval_ms=int(parameters.get("advertising_interval_ms", 100)),
    )
    # with ``python -m dbusmock --template`` the main object is registered only after load()
    mockobject.objects.setdefault(MAIN_OBJ, mock)
    bluez5.load(mock, parameters)
    if parameters.get("adapter", True):
        _add_adapter(mock)
