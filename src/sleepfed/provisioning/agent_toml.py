"""The board's ``agent.toml``, serialised from a document (nested dicts and lists) by
tomli_w: the one writer sleepfed-enroll, the demo, the compose fleet and the tests use, so
a value (a board id, a path, a window) can never turn into a key or a table of its own."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

Document = dict[str, Any]


def render(document: Mapping[str, Any], header: str = "") -> str:
    """``header`` (comment lines) followed by the TOML of ``document``."""
    return header + tomli_w.dumps(dict(document))


def merged(document: Document, extra_toml: str) -> Document:
    """``document`` with the tables of ``extra_toml`` (TOML text) added: a table it already
    has is updated key by key, ``[[sources]]`` entries are appended."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in document.items()}
    for key, value in tomllib.loads(extra_toml).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *value]
        else:
            out[key] = value
    return out


def write(path: Path, document: Mapping[str, Any], header: str = "") -> Path:
    """Write ``document`` to ``path`` (its folder made if missing); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(document, header))
    return path
