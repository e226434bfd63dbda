"""Readings over a serial port (USB CDC, UART) in the SF1 line protocol (sources.protocol)."""

from __future__ import annotations

import contextlib
import logging
import threading

import serial

from sleepfed.board.sources import Emit, Rejection, Source, SourceEvent
from sleepfed.board.sources.protocol import (
    LineRejected,
    Reading,
    RejectReason,
    format_ack,
    parse_line,
)
from sleepfed.common import backoff

log = logging.getLogger("sleepfed.serial")

READ_CHUNK = 4096
RECONNECT_INITIAL_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0
# Reason of the Rejection emitted when the device goes away: the daemon counts it as the
# plain counter ``source_disconnects`` (a lost link, not a rejected line).


class LineSplitter:
    """Cuts a byte stream into lines; keeps the partial tail; bounds an endless line."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.pending = bytearray()
        self.discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        """Complete lines in ``data``; ``None`` stands for a line that was too long."""
        out: list[bytes | None] = []
        self.pending += data
        while True:
            cut = self.pending.find(b"\n")
            if cut < 0:
                break
            line = bytes(self.pending[:cut])
            del self.pending[: cut + 1]
            if self.discarding:
                self.discarding = False
                out.append(None)
            else:
                out.append(line)
        if len(self.pending) > self.max_line:
            self.pending.clear()
            self.discarding = True
        return out

    def reset(self) -> None:
        self.pending.clear()
        self.discarding = False


class SerialSource(Source):
    def __init__(
        self, name: str, port: str, baudrate: int = 115200, send_acks: bool = True
    ) -> None:
        super().__init__(name)
        self.port_name = port
        self.baudrate = baudrate
        self.send_acks = send_acks
        self._port: serial.SerialBase | None = None
        self._write_lock = threading.Lock()
        self.disconnects = 0

    def _open(self) -> serial.SerialBase:
        # A sensor that never reads its ACKs must not block the daemon: bounded writes.
        return serial.serial_for_url(
            self.port_name, baudrate=self.baudrate, timeout=0.2, write_timeout=0.2
        )

    def run(self, emit: Emit, stop: threading.Event) -> None:
        from sleepfed.board.sources.protocol import MAX_LINE_BYTES

        splitter = LineSplitter(MAX_LINE_BYTES)
        failures = 0
        while not stop.is_set():
            try:
                port = self._open()
            except (OSError, ValueError) as error:
                log.debug(
                    "source=%s port=%s open failed: %s",
                    self.name,
                    self.port_name,
                    error,
                    extra=self._fields("open_failed"),
                )
                failures += 1
                stop.wait(backoff.delay(failures, RECONNECT_INITIAL_SECONDS, RECONNECT_MAX_SECONDS))
                continue
            log.info("source=%s port=%s connected", self.name, self.port_name, extra=self._fields())
            failures = 0
            splitter.reset()
            with self._write_lock:
                self._port = port
            self.connected.set()
            try:
                while not stop.is_set():
                    data = port.read(READ_CHUNK)
                    if not data:
                        continue
                    items = [item for line in splitter.feed(data) if (item := self._handle(line))]
                    if items:
                        emit(self.name, items)
            except OSError as error:  # SerialException is an OSError; so is EIO
                self.disconnects += 1
                emit(self.name, [SourceEvent("source_disconnects", str(error))])
                log.warning(
                    "source=%s port=%s lost (%s); reconnecting",
                    self.name,
                    self.port_name,
                    error,
                    extra=self._fields("source_disconnects"),
                )
            finally:
                self.connected.clear()
                with self._write_lock:
                    self._port = None
                with contextlib.suppress(OSError):
                    port.close()

    @staticmethod
    def _handle(line: bytes | None) -> Reading | Rejection | None:
        if line is None:
            return Rejection(RejectReason.TOO_LONG, "line without end")
        try:
            return parse_line(line)
        except LineRejected as rejected:
            return Rejection(rejected.reason, rejected.detail)

    def acknowledge(self, last_timestamp: float, committed: int) -> None:
        if not self.send_acks:
            return
        with self._write_lock:
            if self._port is None:
                return
            try:
                self._port.write(format_ack(last_timestamp, committed))
            except OSError as error:
                log.debug(
                    "source=%s ack not sent: %s", self.name, error, extra=self._fields("ack_failed")
                )

    def _fields(self, error_class: str | None = None) -> dict[str, str]:
        """Structured journal fields (board.service.logging_setup) for this source's lines."""
        fields = {"SOURCE": self.name, "DEVICE": self.port_name}
        if error_class:
            fields["ERROR_CLASS"] = error_class
        return fields
