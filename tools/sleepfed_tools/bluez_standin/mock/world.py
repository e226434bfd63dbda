"""The radio world: sensors in range, independent of what BlueZ currently knows about them."""

from __future__ import annotations

from sleepfed_tools.bluez_standin.mock.bus_objects import error
from sleepfed_tools.bluez_standin.mock.ids import (
    BATTERY_LEVEL,
    BATTERY_SERVICE,
    CURRENT_TIME,
    CURRENT_TIME_SERVICE,
    ENVIRONMENTAL_SENSING_SERVICE,
    ERROR_PREFIX,
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    ILLUMINANCE,
    ILLUMINANCE_UNKNOWN,
    MOVEMENT_CHARACTERISTIC,
    MOVEMENT_SERVICE,
    PMD_CONTROL_POINT,
    PMD_DATA,
    PMD_SERVICE,
    device_path,
)

#: (char handle, UUID, flags, initial value) of a characteristic
Characteristic = tuple[int, str, list[str], bytes]
#: (service handle, UUID, its characteristics)
Service = tuple[int, str, list[Characteristic]]


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
        # Polar PMD (mock/pmd.py): offered, a measurement running, start refusals queued
        self.with_pmd = False
        self.pmd_streaming = False
        self.pmd_refusals: list[int] = []
        self.pmd_starts = 0
        self.pmd_data_flags = ["notify"]  # BreakPmdNotifications: ["read"]
        self.battery: bytes | None = None  # AddBattery: the Battery Level's value

    @property
    def path(self) -> str:
        return device_path(self.address)

    def layout(self) -> list[Service]:
        """(service handle, UUID, [(char handle, UUID, flags, initial value)])."""
        services: list[Service] = [
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
        if self.with_pmd:
            services.append(
                (
                    0x0050,
                    PMD_SERVICE,
                    [
                        (0x0051, PMD_CONTROL_POINT, ["read", "write", "indicate"], b""),
                        (0x0054, PMD_DATA, list(self.pmd_data_flags), b""),
                    ],
                )
            )
        if self.battery is not None:
            services.append(
                (
                    0x0060,
                    BATTERY_SERVICE,
                    [(0x0061, BATTERY_LEVEL, ["read", "notify"], self.battery)],
                )
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
            raise error(ERROR_PREFIX + "NoSuchSensor", f"no sensor {address}") from None


# The template's load() starts a new world; everything else reads it through world().
_current = World()


def world() -> World:
    return _current


def new_world(resolve_delay_ms: int, advertising_interval_ms: int) -> World:
    global _current
    _current = World(resolve_delay_ms, advertising_interval_ms)
    return _current
