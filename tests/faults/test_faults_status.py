"""``sleepfed-agent status`` never shows a traceback: whatever its config or buffer is, it
prints what is wrong in one sentence and exits with its documented code (0 healthy, 1 not
running, 2 configuration error, 3 degraded, 4 buffer unreadable).

Each case runs the real command. The permission cases run it as ``nobody`` (setpriv):
root reads every file whatever its mode."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sleepfed.board.buffer.schema import SCHEMA_VERSION
from sleepfed.board.buffer.store import Buffer
from tests.support.helpers import REPO, write_agent_config


def _ours(buffer: Path) -> None:
    Buffer(buffer).close()


def _garbage(buffer: Path) -> None:
    _ours(buffer)
    with buffer.open("r+b") as file:  # page 1 too: the schema itself is unreadable
        file.write(b"\x5a" * 8192)


def _not_sqlite(buffer: Path) -> None:
    buffer.write_bytes(os.urandom(5000))


def _another_programs(buffer: Path) -> None:
    with sqlite3.connect(buffer) as conn:
        conn.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    conn.close()


def _newer(buffer: Path) -> None:
    _ours(buffer)
    with sqlite3.connect(buffer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


def _no_folder(buffer: Path) -> None:
    shutil.rmtree(buffer.parent)


def _private(buffer: Path) -> None:
    _ours(buffer)
    buffer.chmod(0o600)
    buffer.parent.chmod(0o755)


CASES: list[tuple[str, Callable[[Path], None], int, str]] = [
    ("never run", lambda buffer: None, 1, "the agent has not run on this board"),
    ("folder gone", _no_folder, 4, "does not exist (card unmounted?)"),
    ("corrupt", _garbage, 4, "is not a SQLite database"),
    ("not sqlite", _not_sqlite, 4, "is not a SQLite database"),
    ("another program's", _another_programs, 4, "is not a sleepfed buffer"),
    ("newer schema", _newer, 4, f"written by a newer agent (schema version {SCHEMA_VERSION + 1}"),
]


def _status(config: Path, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "sleepfed.board.service.cli",
        "status",
        "--config",
        str(config),
    ]
    if as_nobody:
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)


def _one_sentence(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


@pytest.mark.parametrize(("name", "make", "code", "needle"), CASES, ids=[c[0] for c in CASES])
def test_status_says_what_is_wrong_with_the_buffer(
    tmp_path: Path, name: str, make: Callable[[Path], None], code: int, needle: str
) -> None:
    buffer = tmp_path / "state" / "buffer.db"
    buffer.parent.mkdir()
    config = write_agent_config(tmp_path / "agent.toml", buffer=buffer)
    make(buffer)
    _one_sentence(_status(config), code, needle)


CONFIG_CASES = [
    ("missing", None, "cannot read (No such file or directory)"),
    ("not TOML", b"[board\nid = \n", "not valid TOML"),
    ("binary", os.urandom(300) + b"\xff", "not UTF-8 text"),
    ("no buffer section", b'[board]\nid = "b"\n', "config.buffer: missing"),
]


@pytest.mark.parametrize(("name", "text", "needle"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_status_says_what_is_wrong_with_the_config(
    tmp_path: Path, name: str, text: bytes | None, needle: str
) -> None:
    config = tmp_path / "agent.toml"
    if text is not None:
        config.write_bytes(text)
    _one_sentence(_status(config), 2, needle)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_status_as_a_user_who_may_not_read_the_buffer_or_config() -> None:
    # a folder `nobody` may enter (pytest's own are private to root)
    tmp_path = Path(tempfile.mkdtemp(prefix="sleepfed-status-"))
    tmp_path.chmod(0o755)
    try:
        _as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _as_nobody(tmp_path: Path) -> None:
    buffer = tmp_path / "state" / "buffer.db"
    buffer.parent.mkdir()
    config = write_agent_config(tmp_path / "agent.toml", buffer=buffer)
    config.chmod(0o644)
    _private(buffer)
    _one_sentence(_status(config, as_nobody=True), 4, "cannot be read by this user")
    config.chmod(0o600)
    _one_sentence(_status(config, as_nobody=True), 2, "cannot read (Permission denied)")
