"""The agent's configuration file (TOML). Every error names the field it is about."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sleepfed.board.buffer.connection import SYNCHRONOUS_MODES
from sleepfed.board.nights.schedule import ParticipationWindow
from sleepfed.board.sources.ble_source import BleDeviceConfig
from sleepfed.board.sources.polar_pmd import start_acc_command
from sleepfed.common.config_fields import (
    METRICS_FIELDS,
    ConfigError,
    Field,
    checked_path,
    get_field,
    parse_metrics,
    parse_strictly,
    read_fields,
    read_toml,
)


@dataclass(frozen=True)
class SerialSourceConfig:
    name: str
    port: str
    baudrate: int = 115200
    send_acks: bool = True


@dataclass(frozen=True)
class BleSourceConfig:
    name: str
    adapter: str
    scan_timeout_seconds: float
    devices: list[BleDeviceConfig]


SourceConfig = SerialSourceConfig | BleSourceConfig
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ADDRESS = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")


def normalize_uuid(text: str, where: str) -> str:
    """A full 128-bit UUID; 16-bit ones (``180d``, ``0x2a37``) get the Bluetooth base."""
    value = text.lower().removeprefix("0x")
    if re.fullmatch(r"[0-9a-f]{4}", value):
        value = f"0000{value}-0000-1000-8000-00805f9b34fb"
    if not _UUID.match(value):
        raise ConfigError(f"{where}: not a Bluetooth UUID: {text!r}")
    return value


BOARD_FIELDS = (
    Field("id", str, "board", "the board's name in logs, status and the registry"),
    Field("timezone", str, "UTC", "IANA zone: nights and participation windows are local"),
)
BUFFER_FIELDS = (
    Field("path", str, help="the SQLite buffer (relative: to this file's folder)"),
    Field("synchronous", str, "full", "SQLite durability", choices=SYNCHRONOUS_MODES),
    Field("max_mb", (int, float), 0, "size cap; 0: none", low=0, high=10_000_000),
    Field("min_free_mb", float, 16.0, "evict oldest raw readings to keep this free", 1, 100_000),
    Field("unwritable_exit_seconds", float, 60.0, "exit 3 after a full disk this long", 1, 86_400),
    Field("batch_max_readings", int, 2000, "commit after this many readings", 1, 1_000_000),
    Field("batch_max_seconds", float, 0.2, "or after this long", low=0, high=60, above=0),
)
NIGHTS_FIELDS = (
    Field("settle_seconds", float, 300.0, "a night ends this long after its last reading", 0,
          7 * 86_400),
)  # fmt: skip
SOURCE_FIELDS = (
    Field("type", str, help='"serial" or "ble"', choices=("serial", "ble")),
    Field("name", str, "", "the source's name in logs and status; empty: serial<N> or ble<N>"),
)
SERIAL_FIELDS = (
    Field("port", str, help="device path or pyserial URL"),
    Field("baudrate", int, 115200, low=1, high=1e8),
    Field("send_acks", bool, True, "acknowledge committed readings (SF1 ACK lines)"),
)
BLE_FIELDS = (
    Field("adapter", str, "hci0", "the BlueZ adapter"),
    Field("scan_timeout_seconds", float, 10.0, "how long one scan looks", above=0),
)
BLE_DEVICE_FIELDS = (
    Field("name", str, "", "the device's name in logs; empty: its address or device<N>"),
    Field("address", str, "", "AA:BB:CC:DD:EE:FF; or give service"),
    Field("service", str, "", "a service UUID: the first device advertising it"),
    Field("movement_characteristic", str, "", "UUID of a movement characteristic (optional)"),
    Field("pmd_acc_hz", int, 0, "Polar PMD accelerometer: 25, 50, 100 or 200 Hz; 0: none"),
    Field("pmd_acc_range_g", int, 8, "its range: 2, 4 or 8 G"),
)
FEDERATION_FIELDS = (
    Field("server", str, help="HOST:PORT of the server's fleet proxy"),
    Field("root_certificates", str, "", "the server's CA (PEM); required unless insecure"),
    Field("insecure", bool, False, "no TLS (tests only)"),
    Field("auth_private_key", str, "", "the board's node key (sleepfed-enroll makes it)"),
    Field("window", str, "always", '"HH:MM-HH:MM" daily, local time, or "always"'),
    Field("min_new_labelled_windows", int, 1, "join only with this many new labelled windows"),
    Field("retry_initial_seconds", float, 1.0, "first retry delay", above=0),
    Field("retry_max_seconds", float, 60.0, "longest retry delay", above=0),
    Field("session_idle_seconds", float, 1800.0, "end a session idle this long", above=0),
    Field("supernode_port", int, 9094, "the node's local runtime API port", 1, 65535),
    Field("activation_patience_seconds", float, 75.0, "wait this long for activation", above=0),
    Field("refused_retry_minutes", float, 60.0, "after a refusal, ask again later", above=0),
    Field("server_check_seconds", float, 30.0, "probe the server this often", above=0),
    Field("server_lost_seconds", float, 120.0, "stop the node after this long", above=0),
)
# (section, fields) in the order docs/configuration.md lists them
REFERENCE = (
    ("`[board]`", BOARD_FIELDS),
    ("`[buffer]`", BUFFER_FIELDS),
    ("`[[sources]]`", SOURCE_FIELDS),
    ('`[[sources]]` `type = "serial"`', SERIAL_FIELDS),
    ('`[[sources]]` `type = "ble"`', BLE_FIELDS),
    ("`[[sources.devices]]`", BLE_DEVICE_FIELDS),
    ("`[nights]`", NIGHTS_FIELDS),
    ("`[federation]`", FEDERATION_FIELDS),
    ("`[metrics]`", METRICS_FIELDS),
)


@dataclass(frozen=True)
class FederationConfig:
    server: str
    root_certificates: Path | None
    insecure: bool
    window: ParticipationWindow
    min_new_labelled_windows: int
    retry_initial_seconds: float
    retry_max_seconds: float
    session_idle_seconds: float
    supernode_port: int
    auth_private_key: Path | None = None
    refused_retry_seconds: float = 3600.0
    activation_patience_seconds: float = 75.0
    server_check_seconds: float = 30.0
    server_lost_seconds: float = 120.0


@dataclass(frozen=True)
class AgentConfig:
    board_id: str
    timezone: ZoneInfo
    buffer_path: Path
    synchronous: str
    max_bytes: int | None
    batch_max_readings: int
    batch_max_seconds: float
    night_settle_seconds: float
    sources: list[SourceConfig] = field(default_factory=list)
    federation: FederationConfig | None = None
    state_dir: Path = Path(".")
    min_free_bytes: int = 16 << 20
    unwritable_exit_seconds: float = 60.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # Prometheus endpoint; 0 = off


def _serial_source(src: dict[str, Any], where: str, index: int) -> SerialSourceConfig:
    values = read_fields(src, where, SERIAL_FIELDS)
    name = read_fields(src, where, SOURCE_FIELDS[1:])["name"] or f"serial{index}"
    return SerialSourceConfig(name=name, **values)


def _ble_source(src: dict[str, Any], where: str, index: int) -> BleSourceConfig:
    devices = []
    for j, dev in enumerate(get_field(src, "devices", list, where)):
        at = f"{where}.devices[{j}]"
        if not isinstance(dev, dict):
            raise ConfigError(f"{at}: expected a table")
        values = read_fields(dev, at, BLE_DEVICE_FIELDS)
        address = values["address"].upper() or None
        name = values["name"] or address or f"device{j}"
        service = values["service"] or None
        if (address is None) == (service is None):
            raise ConfigError(f"{at}: give exactly one of address or service")
        if address is not None and not _ADDRESS.match(address):
            raise ConfigError(f"{at}.address: expected AA:BB:CC:DD:EE:FF, got {address!r}")
        movement = values["movement_characteristic"] or None
        if values["pmd_acc_hz"]:
            try:  # the strap's own limits (sleepfed.board.sources.polar_pmd)
                start_acc_command(values["pmd_acc_hz"], values["pmd_acc_range_g"])
            except ValueError as bad:
                raise ConfigError(f"{at}: {bad}") from None
        devices.append(
            BleDeviceConfig(
                name=name,
                address=address,
                service=normalize_uuid(service, f"{at}.service") if service else None,
                movement_characteristic=(
                    normalize_uuid(movement, f"{at}.movement_characteristic") if movement else None
                ),
                pmd_acc_hz=values["pmd_acc_hz"],
                pmd_acc_range_g=values["pmd_acc_range_g"],
            )
        )
    if not devices:
        raise ConfigError(f"{where}.devices: at least one device")
    return BleSourceConfig(
        name=read_fields(src, where, SOURCE_FIELDS[1:])["name"] or f"ble{index}",
        devices=devices,
        **read_fields(src, where, BLE_FIELDS),
    )


def _board(data: dict[str, Any]) -> tuple[str, ZoneInfo]:
    board = read_fields(get_field(data, "board", dict, "config", {}), "board", BOARD_FIELDS)
    try:
        timezone = ZoneInfo(board["timezone"])
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, e.g. "Europe"
        raise ConfigError(f"board.timezone: unknown time zone {board['timezone']!r}") from None
    return board["id"], timezone


def _sources(data: dict[str, Any]) -> list[SourceConfig]:
    sources: list[SourceConfig] = []
    for i, src in enumerate(get_field(data, "sources", list, "config", [])):
        where = f"sources[{i}]"
        if not isinstance(src, dict):
            raise ConfigError(f"{where}: expected a table")
        kind = get_field(src, "type", str, where)
        if kind == "serial":
            sources.append(_serial_source(src, where, i))
        elif kind == "ble":
            sources.append(_ble_source(src, where, i))
        else:
            raise ConfigError(f"{where}.type: unknown source type {kind!r} (known: serial, ble)")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"sources: names must be unique, got {names}")
    return sources


def _federation(fed: dict[str, Any], path_of: Callable[[str, str], Path]) -> FederationConfig:
    values = read_fields(fed, "federation", FEDERATION_FIELDS)
    if not values["insecure"] and not values["root_certificates"]:
        raise ConfigError(
            "federation.root_certificates: required (the server's CA, PEM) unless "
            "federation.insecure = true"
        )
    try:
        values["window"] = ParticipationWindow.parse(values["window"])
    except ValueError as error:
        raise ConfigError(f"federation.window: {error}") from None
    if ":" not in values["server"]:
        raise ConfigError(f"federation.server: expected HOST:PORT, got {values['server']!r}")
    for key in ("root_certificates", "auth_private_key"):
        values[key] = path_of(values[key], f"federation.{key}") if values[key] else None
    values["refused_retry_seconds"] = 60.0 * values.pop("refused_retry_minutes")
    return FederationConfig(**values)


def parse_config(data: dict[str, Any], base_dir: Path) -> AgentConfig:
    def path_of(text: str, name: str) -> Path:
        return checked_path(text, name, base_dir)

    board_id, timezone = _board(data)
    buffer = read_fields(get_field(data, "buffer", dict, "config"), "buffer", BUFFER_FIELDS)
    sources = _sources(data)
    federation = None
    if "federation" in data:
        federation = _federation(get_field(data, "federation", dict, "config"), path_of)
    nights = read_fields(get_field(data, "nights", dict, "config", {}), "nights", NIGHTS_FIELDS)
    buffer_path = path_of(buffer["path"], "buffer.path")
    metrics_host, metrics_port = parse_metrics(data)
    return AgentConfig(
        board_id=board_id,
        timezone=timezone,
        buffer_path=buffer_path,
        synchronous=buffer["synchronous"],
        max_bytes=int(buffer["max_mb"] * 1024 * 1024) or None,
        batch_max_readings=buffer["batch_max_readings"],
        batch_max_seconds=buffer["batch_max_seconds"],
        night_settle_seconds=nights["settle_seconds"],
        sources=sources,
        federation=federation,
        state_dir=buffer_path.parent,
        min_free_bytes=int(buffer["min_free_mb"] * 1024 * 1024),
        unwritable_exit_seconds=buffer["unwritable_exit_seconds"],
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    base = path.parent.resolve()
    return parse_strictly(read_toml(path), lambda data: parse_config(data, base))
