"""Names and numbers of the BlueZ D-Bus API and of the Bluetooth SIG the stand-in serves."""

from __future__ import annotations

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
BATTERY_LEVEL = uuid16(0x2A19)
CCCD = uuid16(0x2902)
CURRENT_TIME_SERVICE = uuid16(0x1805)
CURRENT_TIME = uuid16(0x2A2B)
MOVEMENT_SERVICE = "7e1a0001-5c1e-4f2a-9b9e-5f1eedc0ffee"
MOVEMENT_CHARACTERISTIC = "7e1a0002-5c1e-4f2a-9b9e-5f1eedc0ffee"
# Polar Measurement Data (mock/pmd.py)
PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL_POINT = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"

#: 0xFFFF is the company identifier reserved for tests.
MANUFACTURER_ID = 0xFFFF
MANUFACTURER_PAYLOAD = b"SF\x01"
#: Battery level 90 % as service data of the Battery service.
BATTERY_SERVICE_DATA = bytes([90])
APPEARANCE_HEART_RATE_BELT = 0x0341
ATT_MTU = 247
ILLUMINANCE_UNKNOWN = b"\xff\xff\xff"


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
