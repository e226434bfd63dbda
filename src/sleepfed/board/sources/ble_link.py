"""One configured Bluetooth LE device and the state of its link: how a failed scan or
connect is classified (``ble_<class>`` counters) and how each class backs off on its own
schedule (sleepfed.common.backoff: exponential, full jitter, capped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sleepfed.board.sources.ble_pmd import PmdStream
from sleepfed.common import backoff

# Per failure class: (first delay, cap) in seconds of the board's one backoff policy
# (sleepfed.common.backoff: full jitter).
BACKOFF: dict[str, tuple[float, float]] = {
    "not_found": (2.0, 60.0),
    "in_progress": (0.5, 5.0),
    "aborted": (1.0, 30.0),
    "connect_failed": (2.0, 60.0),
    "adapter_missing": (2.0, 30.0),
    "notify_failed": (2.0, 30.0),
    "link_lost": (0.5, 10.0),
}


@dataclass(frozen=True)
class BleDeviceConfig:
    """A device to read: by address, or the first one advertising ``service``."""

    name: str
    address: str | None = None
    service: str | None = None
    movement_characteristic: str | None = None
    pmd_acc_hz: int = 0  # Polar PMD accelerometer (sleepfed.board.sources.ble_pmd); 0: none
    pmd_acc_range_g: int = 8


def classify(error: BaseException) -> str:
    """The failure class of a scan or connect error (bleak gives few typed exceptions)."""
    from bleak.exc import BleakBluetoothNotAvailableError, BleakDeviceNotFoundError
    from bleak_retry_connector import BleakAbortedError, BleakNotFoundError

    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if "InProgress" in text:
        return "in_progress"
    if isinstance(error, BleakBluetoothNotAvailableError) or "NotReady" in text:
        return "adapter_missing"
    if "no bluetooth adapters" in lowered or ("adapter" in lowered and "not found" in lowered):
        return "adapter_missing"
    if isinstance(error, BleakDeviceNotFoundError | BleakNotFoundError | DeviceNotFound):
        return "not_found"
    if isinstance(error, BleakAbortedError):
        return "aborted"
    return "connect_failed"


class DeviceNotFound(Exception):
    pass


@dataclass
class DeviceLink:
    config: BleDeviceConfig
    client: Any = None
    next_attempt: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    device_time: float | None = None  # the device's clock at device_time_at (monotonic)
    device_time_at: float = 0.0
    pmd: PmdStream | None = None  # the accelerometer measurement of this connection

    def back_off(self, failure: str, now: float) -> float:
        count = self.failures.get(failure, 0)
        self.failures[failure] = count + 1
        first, cap = BACKOFF[failure]
        delay = backoff.delay(count + 1, first, cap)
        self.next_attempt = now + delay
        return delay
