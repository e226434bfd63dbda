"""Wearables over Bluetooth LE (bleak; BlueZ over D-Bus on Linux).

One source owns one adapter and every device configured on it: a single asyncio task
scans and connects one device at a time (never a scan and a connect at once; BlueZ answers
``org.bluez.Error.InProgress`` otherwise), with bleak-retry-connector's
``establish_connection`` doing the connect itself (it knows BlueZ's transient failures).
Notifications become readings in sleepfed.board.sources.ble_notifications (parsed, stamped
with the device's clock when it offers one, checked like serial readings). Failures are
classified, counted (``ble_<class>``) and each class backs off on its own schedule
(sleepfed.board.sources.ble_link).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, tzinfo
from typing import Any

from sleepfed.board.sources import Emit, Source, SourceEvent, ble_pmd
from sleepfed.board.sources.ble_link import BleDeviceConfig, DeviceLink, DeviceNotFound, classify
from sleepfed.board.sources.ble_notifications import BleNotifications
from sleepfed.board.sources.ble_parsing import HEART_RATE_MEASUREMENT

log = logging.getLogger("sleepfed.ble")

POLL_SECONDS = 0.2


class BleSource(BleNotifications, Source):
    def __init__(
        self,
        name: str,
        devices: list[BleDeviceConfig],
        adapter: str = "hci0",
        scan_timeout: float = 10.0,
        timezone: tzinfo = UTC,
        *,
        client_backend: type | None = None,
        scanner_backend: type | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name)
        self.devices = devices
        self.adapter = adapter
        self.scan_timeout = scan_timeout
        self.client_backend = client_backend
        self.scanner_backend = scanner_backend
        self.clock = clock
        self.timezone = timezone
        self.links = {d.name: DeviceLink(d) for d in devices}

    def run(self, emit: Emit, stop: threading.Event) -> None:
        asyncio.run(self._main(emit, stop))

    async def _main(self, emit: Emit, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                for link in self.links.values():
                    if stop.is_set():
                        break
                    connected = link.client is not None and link.client.is_connected
                    if not connected and time.monotonic() >= link.next_attempt:
                        await self._connect(link, emit)
                    elif connected:
                        await self._watch_pmd(link, emit)
                self._update_connected()
                await asyncio.sleep(POLL_SECONDS)
        finally:
            self.connected.clear()
            for link in self.links.values():
                # Out of the link first: bleak calls the disconnect callback for our own
                # disconnects too, and that is no link loss.
                client, link.client = link.client, None
                if client is not None:
                    try:
                        await asyncio.wait_for(client.disconnect(), 5)
                    except Exception as error:
                        log.debug(
                            "device=%s disconnect at shutdown: %s",
                            link.config.name,
                            error,
                            extra=self._fields(link),
                        )

    def _fields(self, link: DeviceLink, error_class: str | None = None) -> dict[str, str]:
        """Structured journal fields (board.service.logging_setup) for a device's log lines."""
        fields = {"SOURCE": self.name, "DEVICE": link.config.name}
        if error_class:
            fields["ERROR_CLASS"] = error_class
        return fields

    def _update_connected(self) -> None:
        if all(lk.client is not None and lk.client.is_connected for lk in self.links.values()):
            self.connected.set()
        else:
            self.connected.clear()

    # -- connecting -------------------------------------------------------------------------
    def _bleak_kwargs(self, backend: type | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"bluez": {"adapter": self.adapter}}
        if backend is not None:
            kwargs["backend"] = backend
        return kwargs

    async def _find(self, config: BleDeviceConfig) -> Any:
        from bleak import BleakScanner

        kwargs = self._bleak_kwargs(self.scanner_backend)
        if config.address:
            device = await BleakScanner.find_device_by_address(
                config.address, timeout=self.scan_timeout, **kwargs
            )
        else:
            wanted = (config.service or "").lower()
            device = await BleakScanner.find_device_by_filter(
                lambda _dev, adv: wanted in [u.lower() for u in adv.service_uuids],
                timeout=self.scan_timeout,
                **kwargs,
            )
        if device is None:
            raise DeviceNotFound(
                f"{config.address or config.service} not seen in {self.scan_timeout:.0f}s"
            )
        return device

    async def _connect(self, link: DeviceLink, emit: Emit) -> None:
        from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

        config = link.config
        loop = asyncio.get_running_loop()
        stage = "scan"
        try:
            device = await self._find(config)
            stage = "connect"

            def on_disconnect(client: Any) -> None:
                loop.call_soon_threadsafe(self._link_lost, link, client, emit)

            client = await establish_connection(
                BleakClientWithServiceCache,
                device,
                config.name,
                disconnected_callback=on_disconnect,
                max_attempts=2,
                **self._bleak_kwargs(self.client_backend),
            )
            stage = "subscribe"
            link.client = client
            await self._subscribe(link, client, emit)
        except Exception as error:
            failure = "notify_failed" if stage == "subscribe" else classify(error)
            delay = link.back_off(failure, time.monotonic())
            emit(
                self.name, [SourceEvent(f"ble_{failure}", f"device={config.name} {stage}: {error}")]
            )
            log.warning(
                "device=%s %s failed (%s: %s); next attempt in %.1fs",
                config.name,
                stage,
                failure,
                error,
                delay,
                extra=self._fields(link, failure),
            )
            client, link.client = link.client, None  # our own disconnect is no link loss
            if stage == "subscribe" and client is not None:
                with contextlib.suppress(Exception):
                    await client.disconnect()
            return
        link.failures.clear()
        self._update_connected()
        log.info("device=%s connected (%s)", config.name, device.address, extra=self._fields(link))
        emit(self.name, [SourceEvent("ble_connects", f"device={config.name} {device.address}")])

    def _link_lost(self, link: DeviceLink, client: Any, emit: Emit) -> None:
        if link.client is not client:
            return
        link.client, link.pmd = None, None  # the strap ends its measurement with the link
        delay = link.back_off("link_lost", time.monotonic())
        emit(self.name, [SourceEvent("ble_link_lost", f"device={link.config.name}")])
        log.warning(
            "device=%s link lost; reconnecting in %.1fs",
            link.config.name,
            delay,
            extra=self._fields(link, "link_lost"),
        )

    async def _subscribe(self, link: DeviceLink, client: Any, emit: Emit) -> None:
        services = client.services
        link.device_time = None
        subscribed = 0
        for uuid, handler in self._handlers(link).items():
            characteristic = services.get_characteristic(uuid)
            if characteristic is None or "notify" not in characteristic.properties:
                if uuid == HEART_RATE_MEASUREMENT:
                    raise RuntimeError("device has no Heart Rate Measurement (0x2A37) to notify")
                continue

            def callback(_char: Any, data: bytearray, handler: Any = handler) -> None:
                items = handler(link, bytes(data))
                if items:
                    emit(self.name, items)

            await client.start_notify(characteristic, callback)
            subscribed += 1
        if battery := await self._read_battery(link, client):
            emit(self.name, battery)
        log.info(
            "device=%s subscribed to %d characteristics",
            link.config.name,
            subscribed,
            extra=self._fields(link),
        )
        if link.config.pmd_acc_hz:
            await self._subscribe_pmd(link, client, emit)

    # -- the accelerometer of a Polar strap (sleepfed.board.sources.ble_pmd) ------------------
    async def _subscribe_pmd(self, link: DeviceLink, client: Any, emit: Emit) -> None:
        config = link.config
        if not ble_pmd.offers_pmd(client):
            emit(self.name, [SourceEvent("ble_pmd_missing", f"device={config.name}")])
            log.warning(
                "device=%s has no PMD service: heart rate only, no movement",
                config.name,
                extra=self._fields(link, "pmd_missing"),
            )
            return
        link.pmd = ble_pmd.PmdStream.new(config.pmd_acc_hz, config.pmd_acc_range_g)

        def on_frame(data: bytes) -> None:
            items = self._on_pmd_frame(link, data)
            if items:
                emit(self.name, items)

        try:
            await ble_pmd.subscribe(client, link.pmd, on_frame)
        except Exception as error:  # heart rate goes on without the accelerometer
            link.pmd = None
            emit(self.name, [SourceEvent("ble_pmd_refused", f"device={config.name} {error}")])
            log.warning(
                "device=%s PMD notifications refused (%s): heart rate only",
                config.name,
                error,
                extra=self._fields(link, "pmd_refused"),
            )
            return
        await self._start_pmd(link, client, emit)

    async def _start_pmd(self, link: DeviceLink, client: Any, emit: Emit) -> None:
        stream = link.pmd
        assert stream is not None
        try:
            await ble_pmd.start(client, stream)
        except Exception as error:  # refused, unanswered, or the write failed
            stream.retry_at = time.monotonic() + ble_pmd.PMD_RETRY_SECONDS
            emit(self.name, [SourceEvent("ble_pmd_refused", f"device={link.config.name} {error}")])
            log.warning(
                "device=%s PMD accelerometer not started (%s); next try in %.0fs",
                link.config.name,
                error,
                ble_pmd.PMD_RETRY_SECONDS,
                extra=self._fields(link, "pmd_refused"),
            )
            return
        log.info(
            "device=%s PMD accelerometer at %d Hz, %d G",
            link.config.name,
            stream.sample_rate_hz,
            stream.range_g,
            extra=self._fields(link),
        )

    async def _watch_pmd(self, link: DeviceLink, emit: Emit) -> None:
        """A stalled measurement is started again; a refused one after its wait."""
        stream, client = link.pmd, link.client
        if stream is None or client is None or not client.is_connected:
            return
        now = time.monotonic()
        if stream.stalled(now):
            emit(self.name, [SourceEvent("ble_pmd_stalled", f"device={link.config.name}")])
            log.warning(
                "device=%s no PMD frame for %.0fs on a live link; starting it again",
                link.config.name,
                now - stream.last_frame_at,
                extra=self._fields(link, "pmd_stalled"),
            )
            await self._start_pmd(link, client, emit)
        elif not stream.running and 0 < stream.retry_at <= now:
            await self._start_pmd(link, client, emit)
