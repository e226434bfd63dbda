"""Bluetooth LE notifications to readings: each characteristic's payload is parsed
(sleepfed.board.sources.ble_parsing), stamped and checked like a serial reading.

A reading is stamped with the device's clock when the device offers Current Time (0x2A2B:
the last device time received plus the board's monotonic time since), else with the board's
clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from sleepfed.board.sources import Item, Rejection, SourceEvent
from sleepfed.board.sources.ble_link import DeviceLink
from sleepfed.board.sources.ble_parsing import (
    BATTERY_LEVEL,
    CURRENT_TIME,
    HEART_RATE_MEASUREMENT,
    ILLUMINANCE,
    parse_battery_level,
    parse_current_time,
    parse_heart_rate_measurement,
    parse_illuminance,
    parse_movement,
)
from sleepfed.board.sources.ble_pmd import frame_readings
from sleepfed.board.sources.protocol import Kind, LineRejected, checked_reading


def _rejection(link: DeviceLink, rejected: LineRejected) -> Rejection:
    return Rejection(rejected.reason, f"device={link.config.name} {rejected.detail}")


class BleNotifications:
    """The notification handlers of ``BleSource``: ``handler(link, payload)`` returns the
    readings, rejections and events of one notification."""

    clock: Callable[[], float]
    timezone: tzinfo

    def _handlers(self, link: DeviceLink) -> dict[str, Callable[[DeviceLink, bytes], list[Item]]]:
        """The characteristics to subscribe to, by UUID, and their handlers (those a device
        does not have, or cannot notify, are left out when subscribing)."""
        handlers = {
            CURRENT_TIME: self._on_current_time,  # first, so the clock is set before data
            HEART_RATE_MEASUREMENT: self._on_heart_rate,
            ILLUMINANCE: self._on_illuminance,
            BATTERY_LEVEL: self._on_battery,
        }
        if link.config.movement_characteristic:
            handlers[link.config.movement_characteristic.lower()] = self._on_movement
        return handlers

    def _stamp(self, link: DeviceLink) -> float:
        if link.device_time is None:
            return self.clock()
        return link.device_time + (time.monotonic() - link.device_time_at)

    def _on_current_time(self, link: DeviceLink, data: bytes) -> list[Item]:
        try:
            device_time = parse_current_time(data, self.timezone)
        except LineRejected as rejected:
            return [_rejection(link, rejected)]
        link.device_time, link.device_time_at = device_time, time.monotonic()
        return []

    def _on_heart_rate(self, link: DeviceLink, data: bytes) -> list[Item]:
        now = self._stamp(link)
        try:
            measurement = parse_heart_rate_measurement(data)
        except LineRejected as rejected:
            return [_rejection(link, rejected)]
        if measurement.contact is False:
            return [
                SourceEvent("ble_no_contact", f"device={link.config.name} HR {measurement.bpm}")
            ]
        items: list[Item] = []
        try:
            items.append(checked_reading(now, Kind.HR, float(measurement.bpm)))
        except LineRejected as rejected:
            items.append(_rejection(link, rejected))
        # The RR intervals end at the notification, the last one last.
        end = now
        stamps = []
        for rr in reversed(measurement.rr_ms):
            stamps.append(end)
            end -= rr / 1000.0
        for rr, stamp in zip(measurement.rr_ms, reversed(stamps), strict=True):
            try:
                items.append(checked_reading(stamp, Kind.RR, rr))
            except LineRejected as rejected:
                items.append(_rejection(link, rejected))
        return items

    def _on_illuminance(self, link: DeviceLink, data: bytes) -> list[Item]:
        try:
            lux = parse_illuminance(data)
        except LineRejected as rejected:
            return [_rejection(link, rejected)]
        if lux is None:
            return [SourceEvent("ble_illuminance_unknown", f"device={link.config.name}")]
        return [checked_reading(self._stamp(link), Kind.LUX, lux)]

    def _on_battery(self, link: DeviceLink, data: bytes) -> list[Item]:
        try:
            return [checked_reading(self._stamp(link), Kind.BAT, parse_battery_level(data))]
        except LineRejected as rejected:
            return [_rejection(link, rejected)]

    async def _read_battery(self, link: DeviceLink, client: Any) -> list[Item]:
        """The Battery Level (0x2A19) once a link is up: a device notifies only when it
        changes. A failed read is counted; the link stays."""
        characteristic = client.services.get_characteristic(BATTERY_LEVEL)
        if characteristic is None or "read" not in characteristic.properties:
            return []
        try:
            data = bytes(await client.read_gatt_char(characteristic))
        except Exception as error:
            return [SourceEvent("ble_battery_unread", f"device={link.config.name} {error}")]
        return self._on_battery(link, data)

    def _on_pmd_frame(self, link: DeviceLink, data: bytes) -> list[Item]:
        if link.pmd is None:
            return []
        return frame_readings(link.pmd, data, self._stamp(link), link.config.name)

    def _on_movement(self, link: DeviceLink, data: bytes) -> list[Item]:
        try:
            return [checked_reading(self._stamp(link), Kind.MOV, parse_movement(data))]
        except LineRejected as rejected:
            return [_rejection(link, rejected)]
