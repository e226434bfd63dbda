"""The example TOML blocks of docs/configuration.md: every key they set is one the parsers
know, in the table they know it in, and none repeats its default: defaults are stated once,
in the generated "Every key" tables (made from the same fields the parsers read)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sleepfed.board.service.config import REFERENCE as AGENT
from sleepfed.common.config_fields import REQUIRED, Field
from sleepfed.server.ops.config import REFERENCE as SERVER

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _fields() -> dict[str, dict[str, Field]]:
    """Table name (``buffer``, ``sources``, ``sources.devices``…) → its fields by key; the
    serial and BLE ``[[sources]]`` tables pool their keys (the example's ``type`` picks)."""
    tables: dict[str, dict[str, Field]] = {}
    for label, fields in (*AGENT, *SERVER):
        name = re.search(r"\[+([a-z_.]+)\]+", label)
        assert name, label
        tables.setdefault(name.group(1), {}).update({f.key: f for f in fields})
    tables["sources"]["type"] = Field("type", str, REQUIRED)
    return tables


def _blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)


def _settings(table: dict[str, Any], where: str) -> Iterator[tuple[str, str, Any]]:
    for key, value in table.items():
        inner = f"{where}.{key}" if where else key
        if isinstance(value, dict):
            yield from _settings(value, inner)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                yield from _settings(item, inner)
        else:
            yield where, key, value


def test_every_example_key_is_known_and_not_a_default() -> None:
    tables = _fields()
    blocks = _blocks()
    assert len(blocks) >= 5
    checked, wrong = 0, []
    for block in blocks:
        for where, key, value in _settings(tomllib.loads(block), ""):
            field = tables.get(where, {}).get(key)
            if field is None:
                wrong.append(f"{where}.{key}: no such key")
            elif field.default is not REQUIRED and value == field.default:
                wrong.append(f"{where}.{key} = {value!r}: the default, stated again")
            checked += 1
    assert not wrong, wrong
    assert checked >= 20, checked


def test_the_example_files_parse() -> None:
    """The agent.toml example (with its BLE source added) and the server.toml example (with
    its strategy, validation, privacy and metrics tables) are accepted by the real parsers."""
    from sleepfed.board.service.config import parse_config as parse_agent
    from sleepfed.server.ops.config import parse_config as parse_server

    agent, ble, server, strategy, privacy, metrics = (tomllib.loads(b) for b in _blocks())
    agent["sources"] += ble["sources"]
    board = parse_agent({**agent, **metrics}, Path("/etc/sleepfed"))
    assert [s.name for s in board.sources] == ["wrist", "wearable"]
    assert board.metrics_port == 9101 and board.max_bytes == 512 << 20
    server["federation"] |= strategy["federation"]
    fleet = parse_server({**server, **privacy, **metrics}, Path("/etc/sleepfed-server"))
    assert fleet.min_nodes == 5 and fleet.strategy.name == "fedtrimmedavg"
    assert fleet.privacy.dp and fleet.privacy.target_epsilon == 8.0
