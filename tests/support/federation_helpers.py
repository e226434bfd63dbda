"""Real federations for tests: a TLS SuperLink (``sleepfed-server run``) and real agent
daemons whose SuperNodes connect to it on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sleepfed.board.buffer.store import Buffer
from sleepfed.model.features import night_windows
from sleepfed.model.walch import load_walch_subject
from sleepfed.provisioning import agent_toml
from sleepfed.provisioning.enroll_steps import KEY_CURVES
from sleepfed.provisioning.pki import ensure_demo_pki
from tests.support import helpers

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """helpers.wait_for at the pace of a federation (a poll every 0.5 s)."""
    helpers.wait_for(predicate, timeout, 0.5, what)


def pki(root: Path) -> dict[str, Path]:
    return ensure_demo_pki(root / "pki", ["127.0.0.1", "localhost"])


def write_server_config(
    root: Path,
    port: int,
    certs: dict[str, Path],
    *,
    rounds: int,
    min_nodes: int,
    walch_dir: Path,
    held_out: list[str],
    round_timeout: float = 120.0,
    host: str = "127.0.0.1",
) -> Path:
    path = root / "server" / "server.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""[server]
state_dir = "{root / "server" / "state"}"
host = "{host}"
port = {port}
superlink_port = {free_port()}
certfile = "{certs["cert"]}"
keyfile = "{certs["key"]}"
ca_certfile = "{certs["ca"]}"

[federation]
rounds = {rounds}
min_nodes = {min_nodes}
local_iterations = 5
round_timeout_seconds = {round_timeout}

[evaluation]
data = "{walch_dir}"
subjects = {json.dumps(held_out)}
"""
    )
    return path


def write_board(
    root: Path,
    name: str,
    server_port: int,
    ca: Path,
    *,
    walch_dir: Path | None,
    subject: str | None,
    window: str = "always",
    retry_max: float = 4.0,
    server_host: str = "127.0.0.1",
    federation_extra: str = "",
    enrol: bool = True,
    curve: str = "p256",
    timezone: str = "UTC",
) -> Path:
    """A board whose buffer already holds one extracted Walch night (no sensor source);
    ``federation_extra``: more [federation] lines. With ``enrol`` the board has its own key
    (``node.key``, as ``sleepfed-enroll`` makes it) and is registered in the registry of the
    server configured at ``root/server/server.toml`` if that exists (``write_server_config``),
    as the runbook's ``sleepfed-server boards register`` does; ``curve``: that key's."""
    board = root / name
    board.mkdir(parents=True, exist_ok=True)
    if enrol:
        public_key = node_key(board / "node.key", curve)
        server_config = root / "server" / "server.toml"
        if server_config.exists():
            register(server_config, name, public_key)
    buffer_path = board / "buffer.db"
    if walch_dir is not None and subject is not None:
        windows = night_windows(load_walch_subject(walch_dir, subject))
        buffer = Buffer(buffer_path)
        buffer.save_night(
            "2026-11-24",
            0.0,
            1.0,
            len(windows.labels) * 20,
            [
                (float(start) * 30.0, [float(v) for v in feats], int(lab) if lab >= 0 else None)
                for start, feats, lab in zip(
                    windows.start_epochs, windows.features, windows.labels, strict=True
                )
            ],
            None,
        )
        buffer.close()
    federation: dict[str, object] = {
        "server": f"{server_host}:{server_port}",
        "root_certificates": str(ca),
        "window": window,
        "min_new_labelled_windows": 1,
        "retry_initial_seconds": 0.5,
        "retry_max_seconds": float(retry_max),
        "session_idle_seconds": 300,
        "refused_retry_minutes": 0.1,
        "activation_patience_seconds": 8,
        "supernode_port": free_port(),
    }
    if enrol:
        federation["auth_private_key"] = str(board / "node.key")
    document = {"board": {"id": name, "timezone": timezone}, "buffer": {"path": str(buffer_path)}}
    document["federation"] = federation
    config = agent_toml.write(
        board / "agent.toml", agent_toml.merged(document, f"[federation]\n{federation_extra}")
    )
    return config


def node_key(path: Path, curve: str = "p256") -> str:
    """An EC key in OpenSSH format, mode 0600 (sleepfed-enroll makes P-256 keys; boards
    enrolled earlier have P-384 ones); returns the public line."""
    key = ec.generate_private_key(KEY_CURVES[curve])
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


def register(server_config: Path, board_id: str, public_key: str) -> None:
    """The board's key in the server's registry (applied to the SuperLink when it runs)."""
    from sleepfed.provisioning.request import EnrollmentRequest
    from sleepfed.server.fleet.boards import Registry
    from sleepfed.server.ops.config import load_config

    registry = Registry(load_config(server_config))
    try:
        registry.add(EnrollmentRequest(board_id, public_key))
    finally:
        registry.close()


def start(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        command,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def start_agent(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """helpers.start_agent in a process group of its own (``stop`` ends the whole tree)."""
    return helpers.start_agent(config, env=env, own_session=True)


def start_server(config: Path) -> subprocess.Popen[bytes]:
    return start(
        [PYTHON, "-m", "sleepfed.server.ops.cli", "run", "--once", "--config", str(config)],
        config.parent / "server.log",
    )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def agent_status(config: Path) -> dict[str, object]:
    status = helpers.agent_status(config)
    assert status is not None
    return status


def board_state(config: Path) -> dict[str, object]:
    buffer = Buffer(config.parent / "buffer.db", readonly=True)
    try:
        return {**buffer.state(), "counters": buffer.counters()}
    finally:
        buffer.close()
