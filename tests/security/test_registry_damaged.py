"""A damaged board registry fails closed: a revoked board, whose registry is then damaged on
the card, or regressed to a copy from before its revocation, never gets back in. Real SQLite
files, damaged as a card damages them; the real ``sleepfed-server`` commands; the SuperLink's
Control API replaced by a recorder (the seam where the registry decides who is registered).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sleepfed.common.sqlite_checks import StateFileError
from sleepfed.provisioning.request import EnrollmentRequest
from sleepfed.server.fleet import boards
from sleepfed.server.fleet.boards import Registry, RegistryError
from sleepfed.server.fleet.supervision import ServerProcesses
from sleepfed.server.ops.config import ServerConfig, load_config
from sleepfed.server.ops.exit_codes import EXIT_STATE
from tests.support.federation_helpers import free_port, pki, start, stop, wait_for
from tests.support.helpers import run_server

Attack = Callable[[str, str, str, bool], None]
FLEET = 40  # boards: their rows fill several of the registry's pages
REVOKED = "board-17"
PAGE = 4096


class RecordingControl:
    """The SuperLink's Control API as the registry sees it: who was registered."""

    registered: ClassVar[list[str]] = []  # board ids, in order, across every Registry
    unregistered: ClassVar[list[int]] = []

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    def register(self, public_key: str, board_id: str) -> int:
        RecordingControl.registered.append(board_id)
        return 1000 + len(RecordingControl.registered)

    def unregister(self, node_id: int) -> None:
        RecordingControl.unregistered.append(node_id)

    def close(self) -> None:
        pass


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[RecordingControl]]:
    RecordingControl.registered, RecordingControl.unregistered = [], []
    monkeypatch.setattr(boards, "ControlApi", RecordingControl)
    yield RecordingControl


def _public_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _server(tmp_path: Path) -> Path:
    certs = pki(tmp_path)
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = {free_port()}\n'
        f"superlink_port = {free_port()}\n"
        f'certfile = "{certs["cert"]}"\nkeyfile = "{certs["key"]}"\n'
        f'ca_certfile = "{certs["ca"]}"\n'
    )
    return config


def _fleet_with_a_revoked_board(config: ServerConfig, tmp_path: Path) -> dict[str, str]:
    """FLEET boards registered with the SuperLink, then REVOKED revoked and the revocation
    applied; a copy of the registry from before the revocation is left in tmp_path/stale."""
    keys = {f"board-{i:02d}": _public_key() for i in range(FLEET)}
    registry = Registry(config)
    try:
        for board_id, key in keys.items():
            registry.add(EnrollmentRequest(board_id, key))
        registry.sync()
        registry.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (tmp_path / "stale").mkdir()
        shutil.copyfile(config.state_dir / "boards.db", tmp_path / "stale" / "boards.db")
        registry.revoke(REVOKED)
        assert registry.sync() == [f"revoked {REVOKED} (node {1000 + 1 + 17})"]
    finally:
        registry.close()
    return keys


def _damage(path: Path, seed: int = 5) -> None:
    """Garbage over the second half of the file's pages but its last: the table's rows."""
    pages = path.stat().st_size // PAGE
    with path.open("r+b") as file:
        file.seek(pages // 2 * PAGE)
        file.write(random.Random(seed).randbytes(PAGE * 2))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_damaged_registry_lets_no_board_in_and_is_never_written(
    tmp_path: Path, control: type[RecordingControl], attack: Attack
) -> None:
    path = _server(tmp_path)
    config = load_config(path)
    keys = _fleet_with_a_revoked_board(config, tmp_path)
    registry_file = config.state_dir / "boards.db"
    _damage(registry_file)
    before = _digest(registry_file)
    control.registered.clear()
    # the registry does not open; a new SuperLink (state in memory) gets no board at all
    with pytest.raises(StateFileError, match=r"damaged.*no board may join until") as raised:
        Registry(config)
    assert raised.value.kind == "damaged" and str(registry_file) in str(raised.value)
    processes = ServerProcesses(config)
    stopped: list[bool] = []
    processes.proxy.stop = lambda: stopped.append(True)  # type: ignore[method-assign]
    assert processes._reconcile_or_stop(new_superlink=True) is False
    assert stopped and processes.stopping.is_set() and "boards.db" in str(processes.fatal)
    # the revoked board's operator-side ways back are closed too
    request = tmp_path / "request.txt"
    request.write_text(EnrollmentRequest(REVOKED, keys[REVOKED]).line() + "\n")
    register = run_server("boards", "register", "--config", str(path), str(request))
    assert register.returncode == EXIT_STATE and "Traceback" not in register.stderr
    assert register.stderr.count("\n") == 1 and str(registry_file) in register.stderr
    held = control.registered == [] and _digest(registry_file) == before
    attack("registry damaged after a revocation", "no board registered; file untouched",
           f"{len(control.registered)} registered", held)  # fmt: skip
    assert held


def test_run_does_not_start_on_a_damaged_registry(tmp_path: Path) -> None:
    """``sleepfed-server run`` checks the registry before it starts anything: it exits
    EXIT_STATE in one sentence naming the file, and neither port ever listens."""
    path = _server(tmp_path)
    config = load_config(path)
    registry = Registry(config)
    registry.add(EnrollmentRequest("board-00", _public_key()))
    registry.close()
    _damage(config.state_dir / "boards.db")
    started = time.monotonic()
    result = run_server("run", "--once", "--config", str(path), timeout=60)
    seconds = time.monotonic() - started
    assert result.returncode == EXIT_STATE, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "boards.db: damaged" in result.stderr and "boards recover" in result.stderr
    assert not _accepts(config.port) and not _accepts(config.superlink_port)
    assert not (config.state_dir / "superlink.log").exists()
    assert seconds < 30, seconds


def test_a_recovery_the_operator_confirms_keeps_the_revoked_board_out(
    tmp_path: Path, control: type[RecordingControl], attack: Attack
) -> None:
    path = _server(tmp_path)
    config = load_config(path)
    keys = _fleet_with_a_revoked_board(config, tmp_path)
    registry_file = config.state_dir / "boards.db"
    _damage(registry_file)
    before = _digest(registry_file)
    shown = run_server("boards", "recover", "--config", str(path))
    assert shown.returncode == 0 and "Nothing was changed" in shown.stdout, shown.stderr
    assert _digest(registry_file) == before and not list(config.state_dir.glob("*.corrupt-*"))
    done = run_server("boards", "recover", "--yes", "--config", str(path))
    assert done.returncode == 0 and "Moved aside as boards.db.corrupt-" in done.stdout
    kept = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  board-")]
    assert kept == [line.split()[0] for line in shown.stdout.splitlines() if "  board-" in line]
    assert 0 < len(kept) < FLEET  # some rows were on the damaged pages
    control.registered.clear()
    registry = Registry(config)
    try:
        registry.forget_superlink()  # a new SuperLink, its state in memory
        registry.sync()
        again = None
        try:
            registry.add(EnrollmentRequest(REVOKED, keys[REVOKED]))  # its row may be gone
        except RegistryError as error:
            again = str(error)
    finally:
        registry.close()
    held = REVOKED not in control.registered and again is not None
    attack("revoked board after a confirmed recovery of its damaged registry",
           "not registered; its old request refused",
           f"registered {REVOKED in control.registered}; request {again or 'accepted'}",
           held)  # fmt: skip
    assert held and "this key was revoked" in str(again)
    assert set(control.registered) == set(kept) - {REVOKED}


def test_a_registry_regressed_to_before_the_revocation_keeps_the_board_out(
    tmp_path: Path, control: type[RecordingControl], attack: Attack
) -> None:
    """A card that serves an old copy of the file: sound, so no check sees it, and its row
    lists the revoked board as registered. revoked-keys, written before the revocation was,
    keeps it out."""
    path = _server(tmp_path)
    config = load_config(path)
    _fleet_with_a_revoked_board(config, tmp_path)
    for suffix in ("-wal", "-shm"):
        (config.state_dir / f"boards.db{suffix}").unlink(missing_ok=True)
    shutil.copyfile(tmp_path / "stale" / "boards.db", config.state_dir / "boards.db")
    with sqlite3.connect(config.state_dir / "boards.db") as conn:
        stale = conn.execute("SELECT status FROM boards WHERE board_id = ?", (REVOKED,))
        assert stale.fetchone() == ("registered",)
    control.registered.clear()
    registry = Registry(config)
    try:
        lines = registry.forget_superlink() + registry.sync()
        status = {b["board_id"]: b["status"] for b in registry.boards()}
    finally:
        registry.close()
    held = REVOKED not in control.registered and status[REVOKED] == "revoked"
    attack("registry regressed to a copy from before a revocation",
           "the revoked board not registered", f"{REVOKED} {status[REVOKED]}", held)  # fmt: skip
    assert held, lines
    assert len(control.registered) == FLEET - 1


def test_a_running_server_whose_registry_is_damaged_closes_and_stops(
    tmp_path: Path, attack: Attack
) -> None:
    """A real ``sleepfed-server run`` (SuperLink, fleet proxy): the registry damaged under it
    is found at the next sync (``reconcile_seconds`` = 1): the boards' address closes and the
    server exits EXIT_STATE, its SuperLink (and every node it knew) gone with it."""
    path = _server(tmp_path)
    path.write_text(path.read_text().replace("[server]\n", "[server]\nreconcile_seconds = 1\n"))
    config = load_config(path)
    registry = Registry(config)
    registry.add(EnrollmentRequest("board-00", _public_key()))
    registry.close()
    server = start(
        [sys.executable, "-m", "sleepfed.server.ops.cli", "run", "--once", "--config", str(path)],
        tmp_path / "server.log",
    )
    try:
        wait_for(lambda: _accepts(config.port), 120, "the boards' address to open")
        _damage(config.state_dir / "boards.db")
        damaged_at = time.monotonic()
        code = server.wait(60)
        seconds = time.monotonic() - damaged_at
    finally:
        stop([server])
    log = (tmp_path / "server.log").read_text()
    closed = not _accepts(config.port) and not _accepts(config.superlink_port)
    attack("registry damaged under a running server", "address closed, server stopped (4)",
           f"exit {code} after {seconds:.1f} s; ports closed {closed}",
           code == EXIT_STATE and closed)  # fmt: skip
    assert code == EXIT_STATE, log[-3000:]
    assert closed and "Traceback" not in log, log[-3000:]
    # found by the sync, or (damaged within the first second) by `run` counting the boards
    last = log.strip().splitlines()[-1]
    assert last.startswith("sleepfed-server run: ") and "boards.db: damaged" in last, last
    assert seconds < 30, seconds
