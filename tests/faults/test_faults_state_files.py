"""``sleepfed-server status`` over whatever its config and state files have become: each case
runs the real command and gets one sentence naming the file that is wrong, a documented exit
status, and never a traceback. Nothing it reads is changed.

Permission cases run the command as ``nobody`` (``setpriv``) when the tests run as root:
root reads a file of mode 0600 or 0000 anyway, so a chmod alone would test nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sleepfed.model import logistic as model
from sleepfed.server.app.history import History
from sleepfed.server.ops.config import load_config
from sleepfed.server.ops.exit_codes import EXIT_CONFIG, EXIT_STATE
from sleepfed.server.ops.metrics import ServerCollector
from sleepfed.server.ops.status import EXIT_DOWN
from tests.support.federation_helpers import free_port


@dataclass(frozen=True)
class Layout:
    config: Path
    state: Path

    @property
    def history(self) -> Path:
        return self.state / "history.db"

    @property
    def registry(self) -> Path:
        return self.state / "boards.db"


def _write_config(layout: Layout) -> None:
    layout.config.write_text(
        f'[server]\nstate_dir = "{layout.state}"\ninsecure = true\n'
        f"port = {free_port()}\nsuperlink_port = {free_port()}\n"
    )


def _history(path: Path, rounds: int = 60) -> None:
    history = History(path)
    history.start_run("r1", 0, rounds)
    for r in range(1, rounds + 1):
        history.add_round(
            global_round=r, run_id="r1", server_round=r,
            arrays=model.arrays_to_bytes([np.full(model.SHAPE, float(r))]),
            train_metrics={}, eval_metrics={}, server_metrics={}, train_nodes=2, eval_nodes=2,
        )  # fmt: skip
    history.close()


def _garbage_in_the_middle(path: Path) -> None:
    middle = path.stat().st_size // 2 // 4096 * 4096
    with path.open("r+b") as file:
        file.seek(middle)
        file.write(random.Random(3).randbytes(8192))


def _sqlite(path: Path, schema: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(schema)


def _registry(path: Path) -> None:
    _sqlite(
        path,
        "CREATE TABLE boards (board_id TEXT PRIMARY KEY, public_key TEXT, status TEXT, "
        "node_id TEXT, enrolled_at REAL, changed_at REAL)",
    )
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO boards VALUES (?, ?, 'registered', '1', 0, 0)",
            [(f"board-{i}", f"ecdsa-sha2-nistp256 {'A' * 200}{i}") for i in range(60)],
        )


def _private(path: Path) -> None:
    """Not readable by whoever runs ``status`` (root: the command runs as nobody)."""
    if os.geteuid() == 0:
        path.chmod(0o700 if path.is_dir() else 0o600)
    else:
        path.chmod(0o000)


def _damaged_history(layout: Layout) -> None:
    _history(layout.history)
    _garbage_in_the_middle(layout.history)


def _truncated_history(layout: Layout) -> None:
    _history(layout.history)
    with layout.history.open("r+b") as file:
        file.truncate(layout.history.stat().st_size // 3)


def _unreadable_history(layout: Layout) -> None:
    _history(layout.history)  # made the state folder 0700, as the server keeps it
    layout.state.chmod(0o755)
    _private(layout.history)


def _unreadable_state(layout: Layout) -> None:
    _history(layout.history)
    _private(layout.state)


def _damaged_registry(layout: Layout) -> None:
    _registry(layout.registry)
    _garbage_in_the_middle(layout.registry)


def _unreadable_registry(layout: Layout) -> None:
    _registry(layout.registry)
    _private(layout.registry)


def _unreadable_config(layout: Layout) -> None:
    _private(layout.config)


def _state_is_a_file(layout: Layout) -> None:
    layout.state.rmdir()
    layout.state.write_text("not a folder\n")


# (case, how the files are made, exit status, the file the message names, as nobody)
Case = tuple[str, Callable[[Layout], None], int, Callable[[Layout], Path], bool]
CASES: list[Case] = [
    ("config missing", lambda lay: lay.config.unlink(), EXIT_CONFIG, lambda lay: lay.config, False),
    ("config not TOML", lambda lay: lay.config.write_text("[server\nstate_dir =\n"), EXIT_CONFIG,
     lambda lay: lay.config, False),
    ("config binary", lambda lay: lay.config.write_bytes(random.Random(1).randbytes(4096)),
     EXIT_CONFIG, lambda lay: lay.config, False),
    ("config a folder", lambda lay: (lay.config.unlink(), lay.config.mkdir()), EXIT_CONFIG,
     lambda lay: lay.config, False),
    ("config unreadable", _unreadable_config, EXIT_CONFIG, lambda lay: lay.config, True),
    ("history missing", lambda lay: None, EXIT_DOWN, lambda lay: lay.history, False),
    ("history damaged", _damaged_history, EXIT_STATE, lambda lay: lay.history, False),
    ("history truncated", _truncated_history, EXIT_STATE, lambda lay: lay.history, False),
    ("history not SQLite", lambda lay: lay.history.write_text("round,auc\n1,0.8\n"),
     EXIT_STATE, lambda lay: lay.history, False),
    ("history another program's", lambda lay: _sqlite(lay.history, "CREATE TABLE photos (x)"),
     EXIT_STATE, lambda lay: lay.history, False),
    ("history another schema", lambda lay: _sqlite(lay.history, "CREATE TABLE rounds (id)"),
     EXIT_STATE, lambda lay: lay.history, False),
    ("history a folder", lambda lay: lay.history.mkdir(), EXIT_STATE, lambda lay: lay.history,
     False),
    ("history unreadable", _unreadable_history, EXIT_STATE, lambda lay: lay.history, True),
    ("state folder unreadable", _unreadable_state, EXIT_STATE, lambda lay: lay.history, True),
    ("registry damaged", _damaged_registry, EXIT_STATE, lambda lay: lay.registry, False),
    ("registry not SQLite", lambda lay: lay.registry.write_bytes(b"\x7fELF" + bytes(9000)),
     EXIT_STATE, lambda lay: lay.registry, False),
    ("registry another program's", lambda lay: _sqlite(lay.registry, "CREATE TABLE keys (k)"),
     EXIT_STATE, lambda lay: lay.registry, False),
    ("registry unreadable", _unreadable_registry, EXIT_STATE, lambda lay: lay.registry, True),
    ("state folder a file", _state_is_a_file, EXIT_STATE, lambda lay: lay.history, False),
]  # fmt: skip


@pytest.fixture
def layout() -> Iterator[Layout]:
    """A config and state folder that ``nobody`` may reach: pytest's tmp_path is 0700."""
    root = Path(tempfile.mkdtemp(prefix="sleepfed-status-"))
    try:
        root.chmod(0o755)
        found = Layout(root / "server.toml", root / "state")
        found.state.mkdir(mode=0o755)
        found.state.chmod(0o755)
        _write_config(found)
        found.config.chmod(0o644)
        yield found
    finally:
        for path in (found.state, found.config):  # what a case made unreadable
            if path.exists():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def _status(layout: Layout, unprivileged: bool) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sleepfed.server.ops.cli", "status", "--config"]
    prefix = []
    if unprivileged and os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    return subprocess.run(
        [*prefix, *command, str(layout.config)],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm")) and os.access(p, os.R_OK)
    }


@pytest.mark.parametrize(
    ("make", "code", "named", "unprivileged"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_status_says_what_is_wrong_in_one_sentence(
    layout: Layout,
    make: Callable[[Layout], None],
    code: int,
    named: Callable[[Layout], Path],
    unprivileged: bool,
) -> None:
    make(layout)
    before = _digests(layout.config.parent)
    result = _status(layout, unprivileged)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.stdout, result.stderr)
    if code == EXIT_DOWN:  # the status itself, with the missing file's line
        assert result.stderr == ""
        (line,) = [x for x in result.stdout.splitlines() if str(named(layout)) in x]
        assert line.startswith("history         none yet")
    else:
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        assert str(named(layout)) in result.stderr, result.stderr
    assert _digests(layout.config.parent) == before
    assert not list(layout.config.parent.rglob("*.corrupt-*"))


def test_status_shows_a_recovery_and_when(layout: Layout) -> None:
    """After the server salvaged a damaged history, ``status`` (table and JSON) says so:
    when, what was wrong, the quarantined file, the rows kept per table; for a day it is a
    problem of the status (degraded, or down as here without a SuperLink)."""
    _damaged_history(layout)
    History(layout.history).close()  # what `sleepfed-server run` does first
    (quarantined,) = [p for p in layout.state.glob("history.db.corrupt-*") if p.name.endswith("Z")]
    table = _status(layout, unprivileged=False)
    assert table.returncode == EXIT_DOWN and "Traceback" not in table.stderr, table.stderr
    assert "  problem       the history was found damaged and salvaged at 20" in table.stdout
    (line,) = [x for x in table.stdout.splitlines() if x.startswith("history ")]
    assert line.startswith("history         RECOVERED 20"), line
    assert f"moved aside as {quarantined.name}" in line and "salvaged rounds " in line, line
    as_json = subprocess.run(
        [sys.executable, "-m", "sleepfed.server.ops.cli", "status", "--json", "--config",
         str(layout.config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    (recovery,) = json.loads(as_json.stdout)["history"]["recoveries"]
    assert recovery["quarantined"] == quarantined.name
    assert abs(recovery["at"] - quarantined.stat().st_mtime) < 120
    assert recovery["salvaged"]["runs"] == 1 and 0 < recovery["salvaged"]["rounds"] < 60
    scrape = ServerCollector(load_config(layout.config), lambda: False).collect()
    families = {family.name: family for family in scrape}
    assert families["sleepfed_server_history_recoveries"].samples[0].value == 1
