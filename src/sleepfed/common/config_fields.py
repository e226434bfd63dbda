"""Reading TOML configuration files, shared by the board's and the server's config: strict
parsing (an unknown key is an error), typed fields whose errors name the field, paths kept
inside the config's folder, and the ``[metrics]`` table both sides have."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the field."""


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; anything near this is not one


T = TypeVar("T")


class _Table(dict[str, Any]):
    """A TOML table that remembers which keys the parser asked for (see parse_strictly)."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        super().__init__(data)
        self.where = where
        self.asked: set[str] = set()

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __iter__(self) -> Iterator[str]:  # a parser that walks the table reads every key
        self.asked.update(super().keys())
        return super().__iter__()

    def items(self) -> Any:
        self.asked.update(super().keys())
        return super().items()


def _track(value: Any, where: str, tables: list[_Table]) -> Any:
    if isinstance(value, dict):
        table = _Table(
            {k: _track(v, f"{where}.{k}" if where else k, tables) for k, v in value.items()}, where
        )
        tables.append(table)
        return table
    if isinstance(value, list):
        return [_track(v, f"{where}[{i}]", tables) for i, v in enumerate(value)]
    return value


def parse_strictly(data: dict[str, Any], parse: Callable[[dict[str, Any]], T]) -> T:
    """``parse(data)``, then refuse any key the parser never asked for (a typo, or a key
    from another version): silently ignoring it would run with a setting nobody chose."""
    tables: list[_Table] = []
    try:
        result = parse(_track(data, "", tables))
    except ConfigError as error:  # a misspelt table shows up as a missing one: say both
        unknown = _unknown_keys(tables)
        if unknown:
            raise ConfigError(f"{error} (unknown: {', '.join(unknown)})") from None
        raise
    unknown = _unknown_keys(tables)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key")
    return result


def _unknown_keys(tables: list[_Table]) -> list[str]:
    """Dotted names of the keys nobody asked for, outer tables first."""
    found = []
    for table in sorted(tables, key=lambda t: (t.where.count(".") + t.where.count("["), t.where)):
        for key in sorted(dict.keys(table) - table.asked):
            found.append(f"{table.where}.{key}" if table.where else key)
    return found


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's TOML, or a ConfigError saying why it is not usable."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes, not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None


def checked_path(text: str, name: str, base: Path) -> Path:
    """A path from the config: absolute as given, or relative to the config's folder, which
    it must not leave (``..``); no NUL bytes."""
    if not text or "\0" in text:
        raise ConfigError(f"{name}: not a usable path: {text[:80]!r}")
    path = Path(text)
    if path.is_absolute():
        return path
    if ".." in path.parts:
        raise ConfigError(
            f"{name}: a relative path must stay inside the config's folder, got {text[:80]!r}"
            " (give an absolute path instead)"
        )
    return base / path


def bounded(value: float, name: str, low: float, high: float) -> float:
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be within {low:g}..{high:g}, got {value!r}")
    return value


def get_field(
    table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}.{key}: missing")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}.{key}: must be a finite number, got {value!r}")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass: `max_mb = true` must not pass as an (int, float) field.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}: expected {names}, got {type(value).__name__} {value!r}")
    return value


REQUIRED: Any = ...  # a Field default: the key must be given


@dataclass(frozen=True)
class Field:
    """One key of a config table: its type, default (``REQUIRED``: none), bounds and a line
    of help. The parsers read every key through its Field, and the reference tables of
    docs/configuration.md are made from the same Fields (``reference_table``), so a default
    or a bound is stated once."""

    key: str
    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    help: str = ""
    low: float | None = None  # inclusive bounds ("must be within low..high")
    high: float | None = None
    above: float | None = None  # exclusive lower bound ("must be > above")
    choices: tuple[str, ...] = ()

    def read(self, table: dict[str, Any], section: str) -> Any:
        name = f"{section}.{self.key}"
        value = get_field(table, self.key, self.kind, section, self.default)
        if self.choices and value not in self.choices:
            raise ConfigError(f"{name}: one of {', '.join(self.choices)}, not {value!r}")
        if self.low is not None and self.high is not None:
            bounded(value, name, self.low, self.high)
        elif self.low is not None and not value >= self.low:
            raise ConfigError(f"{name}: must be >= {_number(self.low)}, got {value!r}")
        elif self.high is not None and not value <= self.high:
            raise ConfigError(f"{name}: must be <= {_number(self.high)}, got {value!r}")
        if self.above is not None and not value > self.above:
            raise ConfigError(f"{name}: must be > {self.above:g}, got {value}")
        return value

    def bounds(self) -> str:
        if self.choices:
            return " \\| ".join(self.choices)
        parts = []
        if self.above is not None:
            parts.append(f"> {_number(self.above)}")
        if self.low is not None and self.high is not None:
            parts.append(f"{_number(self.low)}..{_number(self.high)}")
        elif self.low is not None:
            parts.append(f">= {_number(self.low)}")
        elif self.high is not None:
            parts.append(f"<= {_number(self.high)}")
        return ", ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def read_fields(table: dict[str, Any], section: str, fields: Iterable[Field]) -> dict[str, Any]:
    """Every field of ``fields`` read from ``table`` (the ``section`` names it in errors)."""
    return {f.key: f.read(table, section) for f in fields}


def _default_text(field: Field) -> str:
    value = field.default
    if value is REQUIRED:
        return "required"
    if value is None:
        return "(see meaning)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[]`"
    return f"`{_number(value)}`"


def reference_table(label: str, fields: Iterable[Field]) -> str:
    """A Markdown table of ``fields`` (``label``: the table's name): key, type, default,
    bounds, meaning."""
    rows = [f"{label} key | type | default | bounds | meaning", "--- | --- | --- | --- | ---"]
    for f in fields:
        kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
        kind = "/".join(k.__name__ for k in kinds)
        rows.append(f"`{f.key}` | {kind} | {_default_text(f)} | {f.bounds()} | {f.help}")
    return "\n".join(rows) + "\n"


METRICS_FIELDS = (
    Field("host", str, "127.0.0.1", "address of the Prometheus endpoint"),
    Field("port", int, 0, "its port; 0: no endpoint", low=0, high=65535),
)


def parse_metrics(data: dict[str, Any]) -> tuple[str, int]:
    """``[metrics]``: (host, port) of the Prometheus endpoint; port 0 (the default) = off."""
    metrics = get_field(data, "metrics", dict, "config", {})
    values = read_fields(metrics, "metrics", METRICS_FIELDS)
    if not values["host"]:
        raise ConfigError("metrics.host: empty (use 127.0.0.1)")
    return values["host"], values["port"]
