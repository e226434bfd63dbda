"""BlueZ stand-in: a python-dbusmock template that poses as ``bluetoothd`` with heart-rate sensors.

No Bluetooth hardware is needed: bleak's *real* BlueZ backend talks over a real (private) D-Bus
system bus to this template, which python-dbusmock serves as ``org.bluez``. It builds on the stock
``bluez5`` template (manager objects, ``hci0`` adapter) and adds what bleak needs and the stock
template lacks: well-typed device properties, GATT objects that appear on ``Connect`` followed by
``ServicesResolved``, ``StartNotify``/``StopNotify`` and notifications as ``PropertiesChanged`` of
``Value``. The parts live in ``mock/`` (so ``sleepfed_tools`` must be importable by the server).

Run it with ``python -m dbusmock --system --template <this file>`` (or
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
``AddPmd(s address)``
    The sensor offers Polar's PMD service from its next connection on (``mock/pmd.py``: a
    control point that starts and stops an ACC measurement, a data characteristic whose
    notifications ``Notify`` delivers only while one runs).
``RefuseNextPmdStart(s address, y code)`` / ``EndPmdMeasurement(s address)``
    The next start is answered with that error code / the strap ends its measurement by
    itself (heart rate goes on).
``AddBattery(s address, ay value)``
    The sensor offers the Battery service (0x180F) from its next connection on: Battery
    Level (0x2A19, read and notify) holding ``value`` (one byte, percent, for a real one);
    ``Notify`` changes it.
``BreakPmdNotifications(s address)``
    From the next connection on, the PMD data characteristic cannot notify (``StartNotify``
    fails with ``org.bluez.Error.NotSupported``).
``PmdMeasuring(s address) -> b``, ``PmdStarts(s address) -> u``
    Whether a measurement runs, and how many started so far.

A notification longer than the ATT MTU allows (``ATT_MTU`` - 3 bytes) is refused
(``org.bluez.Error.InvalidValueLength``), as the link would refuse it.

Characteristic UUIDs may be given short (``"2a37"``, ``"0x2A37"``) or in full.
"""

# python-dbusmock executes this file as a module of its own and looks here for the D-Bus methods
# below and for BUS_NAME, MAIN_OBJ, SYSTEM_BUS and IS_OBJECT_MANAGER; what the methods use is
# imported from mock/.
import dbus
import dbus.service
from dbusmock import mockobject
from dbusmock.templates import bluez5

from sleepfed_tools.bluez_standin.mock.adapter import add_adapter
from sleepfed_tools.bluez_standin.mock.bus_objects import (
    MAIN_OBJ,
    adapter,
    byte_array,
    error,
    obj,
    remove_object,
    set_props,
)
from sleepfed_tools.bluez_standin.mock.devices import (
    create_device,
    drop_link,
    remove_device,
    report_advertisement,
)
from sleepfed_tools.bluez_standin.mock.gatt import char_path_of, notifying_char
from sleepfed_tools.bluez_standin.mock.ids import (
    ADAPTER_NAME,
    ADAPTER_PATH,
    ATT_MTU,
    ERROR_PREFIX,
    GATT_CHARACTERISTIC_IFACE,
    PMD_DATA,
    STANDIN_IFACE,
    normalize_uuid,
)
from sleepfed_tools.bluez_standin.mock.world import Sensor, new_world, world

BUS_NAME = "org.bluez"
SYSTEM_BUS = True
IS_OBJECT_MANAGER = True


@dbus.service.method(STANDIN_IFACE, in_signature="ssbbb", out_signature="o")
def AddHeartRateSensor(self, address, name, with_illuminance, with_movement, with_current_time):
    key = str(address).upper()
    if key in world().sensors:
        raise error(ERROR_PREFIX + "SensorExists", f"sensor {address} already exists")
    sensor = Sensor(
        key, str(name), bool(with_illuminance), bool(with_movement), bool(with_current_time)
    )
    world().sensors[key] = sensor
    create_device(sensor)
    return dbus.ObjectPath(sensor.path)


@dbus.service.method(STANDIN_IFACE, in_signature="sn", out_signature="")
def Advertise(self, address, rssi):
    sensor = world().sensor(address)
    sensor.rssi = int(rssi)
    sensor.advertising = True
    report_advertisement(sensor)


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="")
def StopAdvertising(self, address):
    world().sensor(address).advertising = False


def _deliverable(address, char_uuid, values):
    """The notifying characteristic, or None (not notifying; PMD data with no measurement);
    a value over the MTU is an error."""
    if any(len(bytes(v)) > ATT_MTU - 3 for v in values):
        raise error("org.bluez.Error.InvalidValueLength", f"over the ATT MTU {ATT_MTU} - 3")
    if normalize_uuid(char_uuid) == PMD_DATA and not world().sensor(address).pmd_streaming:
        return None
    return notifying_char(address, char_uuid)


@dbus.service.method(STANDIN_IFACE, in_signature="ssay", out_signature="b")
def Notify(self, address, char_uuid, value):
    char = _deliverable(address, char_uuid, [value])
    if char is None:
        return False
    set_props(char, GATT_CHARACTERISTIC_IFACE, {"Value": byte_array(bytes(value))})
    return True


@dbus.service.method(STANDIN_IFACE, in_signature="ssaay", out_signature="u")
def NotifyMany(self, address, char_uuid, values):
    """Several notifications of one characteristic in one call (one signal each)."""
    char = _deliverable(address, char_uuid, values)
    if char is None:
        return dbus.UInt32(0)
    for value in values:
        set_props(char, GATT_CHARACTERISTIC_IFACE, {"Value": byte_array(bytes(value))})
    return dbus.UInt32(len(values))


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="")
def AddPmd(self, address):
    world().sensor(address).with_pmd = True


@dbus.service.method(STANDIN_IFACE, in_signature="say", out_signature="")
def AddBattery(self, address, value):
    world().sensor(address).battery = bytes(value)


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="")
def BreakPmdNotifications(self, address):
    world().sensor(address).pmd_data_flags = ["read"]


@dbus.service.method(STANDIN_IFACE, in_signature="sy", out_signature="")
def RefuseNextPmdStart(self, address, code):
    world().sensor(address).pmd_refusals.append(int(code))


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="")
def EndPmdMeasurement(self, address):
    world().sensor(address).pmd_streaming = False


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="b")
def PmdMeasuring(self, address):
    return dbus.Boolean(world().sensor(address).pmd_streaming)


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="u")
def PmdStarts(self, address):
    return dbus.UInt32(world().sensor(address).pmd_starts)


@dbus.service.method(STANDIN_IFACE, in_signature="ss", out_signature="b")
def IsNotifying(self, address, char_uuid):
    sensor = world().sensor(address)
    path = char_path_of(sensor, char_uuid) if sensor.connected else None
    return bool(path and obj(path).props[GATT_CHARACTERISTIC_IFACE]["Notifying"])


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="b")
def DropConnection(self, address):
    return drop_link(world().sensor(address))


@dbus.service.method(STANDIN_IFACE, in_signature="sus", out_signature="")
def FailNextConnects(self, address, count, error_name):
    sensor = world().sensor(address)
    sensor.fail_next = int(count)
    sensor.fail_error = str(error_name)


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="")
def RemoveDevice(self, address):
    sensor = world().sensor(address)
    sensor.advertising = False
    remove_device(sensor)


@dbus.service.method(STANDIN_IFACE, in_signature="", out_signature="")
def RemoveAdapter(self):
    if adapter() is None:
        raise error(ERROR_PREFIX + "NoAdapter", f"{ADAPTER_NAME} does not exist")
    for sensor in world().sensors.values():
        remove_device(sensor)
    world().discovery_sessions = 0
    world().discovery_epoch += 1
    remove_object(ADAPTER_PATH)


@dbus.service.method(STANDIN_IFACE, in_signature="", out_signature="o")
def AddAdapter(self):
    return dbus.ObjectPath(add_adapter(self))


@dbus.service.method(STANDIN_IFACE, in_signature="s", out_signature="u")
def ConnectCount(self, address):
    return dbus.UInt32(world().sensor(address).connect_count)


def load(mock, parameters):
    """dbusmock entry point: BlueZ manager objects, then (by default) adapter ``hci0``."""
    parameters = parameters or {}
    new_world(
        resolve_delay_ms=int(parameters.get("resolve_delay_ms", 30)),
        advertising_interval_ms=int(parameters.get("advertising_interval_ms", 100)),
    )
    # with ``python -m dbusmock --template`` the main object is registered only after load()
    mockobject.objects.setdefault(MAIN_OBJ, mock)
    bluez5.load(mock, parameters)
    if parameters.get("adapter", True):
        add_adapter(mock)
