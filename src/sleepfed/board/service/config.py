"""The agent's configuration file (TOML). Every error names the field it is about."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sleepfed.board.buffer.store import SYNCHRONOUS_MODES
from sleepfed.board.nights.schedule import ParticipationWindow
from sleepfed.board.sources.ble_source import BleDeviceConfig
from sleepfed.common.config_fields import (
    ConfigError,
    bounded,
    checked_path,
    get_field,
    parse_metrics,
    parse_strictly,
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


def _positive(value: float, name: str) -> float:
    if value <= 0:
        raise ConfigError(f"{name}: must be > 0, got {value}")
    return value


def _serial_source(src: dict[str, Any], where: str, index: int) -> SerialSourceConfig:
    return SerialSourceConfig(
        name=get_field(src, "name", str, where, f"serial{index}"),
        port=get_field(src, "port", str, where),
        baudrate=int(
            bounded(get_field(src, "baudrate", int, where, 115200), f"{where}.baudrate", 1, 1e8)
        ),
        send_acks=get_field(src, "send_acks", bool, where, True),
    )


def _ble_source(src: dict[str, Any], where: str, index: int) -> BleSourceConfig:
    devices = []
    for j, dev in enumerate(get_field(src, "devices", list, where)):
        at = f"{where}.devices[{j}]"
        if not isinstance(dev, dict):
            raise ConfigError(f"{at}: expected a table")
        address = get_field(dev, "address", str, at, "").upper() or None
        service = get_field(dev, "service", str, at, "") or None
        if (address is None) == (service is None):
            raise ConfigError(f"{at}: give exactly one of address or service")
        if address is not None and not _ADDRESS.match(address):
            raise ConfigError(f"{at}.address: expected AA:BB:CC:DD:EE:FF, got {address!r}")
        movement = get_field(dev, "movement_characteristic", str, at, "") or None
        devices.append(
            BleDeviceConfig(
                name=get_field(dev, "name", str, at, address or f"device{j}"),
                address=address,
                service=normalize_uuid(service, f"{at}.service") if service else None,
                movement_characteristic=(
                    normalize_uuid(movement, f"{at}.movement_characteristic") if movement else None
                ),
            )
        )
    if not devices:
        raise ConfigError(f"{where}.devices: at least one device")
    return BleSourceConfig(
        name=get_field(src, "name", str, where, f"ble{index}"),
        adapter=get_field(src, "adapter", str, where, "hci0"),
        scan_timeout_seconds=_positive(
            get_field(src, "scan_timeout_seconds", float, where, 10.0),
            f"{where}.scan_timeout_seconds",
        ),
        devices=devices,
    )


def parse_config(data: dict[str, Any], base_dir: Path) -> AgentConfig:
    def path_of(text: str, name: str) -> Path:
        return checked_path(text, name, base_dir)

    board = get_field(data, "board", dict, "config", {})
    board_id = get_field(board, "id", str, "board", "board")
    tz_name = get_field(board, "timezone", str, "board", "UTC")
    try:
        timezone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, e.g. "Europe"
        raise ConfigError(f"board.timezone: unknown time zone {tz_name!r}") from None

    buffer = get_field(data, "buffer", dict, "config")
    synchronous = get_field(buffer, "synchronous", str, "buffer", "full")
    if synchronous not in SYNCHRONOUS_MODES:
        raise ConfigError(
            f"buffer.synchronous: one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}"
        )
    max_mb = get_field(buffer, "max_mb", (int, float), "buffer", 0)
    if max_mb < 0:
        raise ConfigError(f"buffer.max_mb: must be >= 0, got {max_mb}")
    bounded(max_mb, "buffer.max_mb", 0, 10_000_000)  # 10 TB
    min_free_mb = bounded(
        get_field(buffer, "min_free_mb", float, "buffer", 16.0), "buffer.min_free_mb", 1, 100_000
    )
    unwritable_exit_seconds = bounded(
        get_field(buffer, "unwritable_exit_seconds", float, "buffer", 60.0),
        "buffer.unwritable_exit_seconds",
        1,
        86_400,
    )

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

    federation = None
    if "federation" in data:
        fed = get_field(data, "federation", dict, "config")
        insecure = get_field(fed, "insecure", bool, "federation", False)
        root = get_field(fed, "root_certificates", str, "federation", "")
        if not insecure and not root:
            raise ConfigError(
                "federation.root_certificates: required (the server's CA, PEM) unless "
                "federation.insecure = true"
            )
        window_text = get_field(fed, "window", str, "federation", "always")
        try:
            window = ParticipationWindow.parse(window_text)
        except ValueError as error:
            raise ConfigError(f"federation.window: {error}") from None
        server = get_field(fed, "server", str, "federation")
        if ":" not in server:
            raise ConfigError(f"federation.server: expected HOST:PORT, got {server!r}")
        federation = FederationConfig(
            server=server,
            root_certificates=path_of(root, "federation.root_certificates") if root else None,
            insecure=insecure,
            window=window,
            min_new_labelled_windows=get_field(
                fed, "min_new_labelled_windows", int, "federation", 1
            ),
            retry_initial_seconds=_positive(
                get_field(fed, "retry_initial_seconds", float, "federation", 1.0),
                "federation.retry_initial_seconds",
            ),
            retry_max_seconds=_positive(
                get_field(fed, "retry_max_seconds", float, "federation", 60.0),
                "federation.retry_max_seconds",
            ),
            session_idle_seconds=_positive(
                get_field(fed, "session_idle_seconds", float, "federation", 1800.0),
                "federation.session_idle_seconds",
            ),
            supernode_port=int(
                bounded(
                    get_field(fed, "supernode_port", int, "federation", 9094),
                    "federation.supernode_port",
                    1,
                    65535,
                )
            ),
            activation_patience_seconds=_positive(
                get_field(fed, "activation_patience_seconds", float, "federation", 75.0),
                "federation.activation_patience_seconds",
            ),
            server_check_seconds=_positive(
                get_field(fed, "server_check_seconds", float, "federation", 30.0),
                "federation.server_check_seconds",
            ),
            server_lost_seconds=_positive(
                get_field(fed, "server_lost_seconds", float, "federation", 120.0),
                "federation.server_lost_seconds",
            ),
            refused_retry_seconds=60.0
            * _positive(
                get_field(fed, "refused_retry_minutes", float, "federation", 60.0),
                "federation.refused_retry_minutes",
            ),
            auth_private_key=(
                path_of(key, "federation.auth_private_key")
                if (key := get_field(fed, "auth_private_key", str, "federation", ""))
                else None
            ),
        )

    nights = get_field(data, "nights", dict, "config", {})
    buffer_path = path_of(get_field(buffer, "path", str, "buffer"), "buffer.path")
    metrics_host, metrics_port = parse_metrics(data)
    return AgentConfig(
        board_id=board_id,
        timezone=timezone,
        buffer_path=buffer_path,
        synchronous=synchronous,
        max_bytes=int(max_mb * 1024 * 1024) or None,
        batch_max_readings=int(
            _positive(
                bounded(
                    get_field(buffer, "batch_max_readings", int, "buffer", 2000),
                    "buffer.batch_max_readings",
                    1,
                    1_000_000,
                ),
                "buffer.batch_max_readings",
            )
        ),
        batch_max_seconds=_positive(
            bounded(
                get_field(buffer, "batch_max_seconds", float, "buffer", 0.2),
                "buffer.batch_max_seconds",
                0,
                60,
            ),
            "buffer.batch_max_seconds",
        ),
        night_settle_seconds=bounded(
            get_field(nights, "settle_seconds", float, "nights", 300.0),
            "nights.settle_seconds",
            0,
            7 * 86_400,
        ),
        sources=sources,
        federation=federation,
        state_dir=buffer_path.parent,
        min_free_bytes=int(min_free_mb * 1024 * 1024),
        unwritable_exit_seconds=unwritable_exit_seconds,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    base = path.parent.resolve()
    return parse_strictly(read_toml(path), lambda data: parse_config(data, base))
