"""Shared helpers for tests that drive the real agent: config files, processes, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sleepfed.provisioning import agent_toml

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def data_root() -> Path:
    """The shared data folder (env SLEEPFED_DATA, default ``<repo>/../shared/data``)."""
    return Path(os.environ.get("SLEEPFED_DATA", REPO.parent / "shared" / "data"))


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sleepfed.board.service.cli", *args]


def run_agent(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one ``sleepfed-agent`` command to completion (text output captured)."""
    return subprocess.run(
        agent_command(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def run_server(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run one ``sleepfed-server`` command to completion (text output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "sleepfed.server.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_agent_config(
    path: Path,
    *,
    buffer: Path,
    ports: dict[str, str] | None = None,
    settle_seconds: float = 1.0,
    extra: str = "",
) -> Path:
    """An agent.toml with one serial source per ``name -> port`` and no [federation]."""
    document: agent_toml.Document = {
        "board": {"id": "test-board", "timezone": "UTC"},
        "buffer": {"path": str(buffer)},
        "nights": {"settle_seconds": float(settle_seconds)},
    }
    if ports:
        document["sources"] = [
            {"type": "serial", "name": name, "port": port} for name, port in ports.items()
        ]
    agent_toml.write(path, agent_toml.merged(document, extra))
    return path


def start_agent(
    config_path: Path,
    log_path: Path | None = None,
    *,
    env: dict[str, str] | None = None,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``sleepfed-agent run`` as a real process; its log goes to ``log_path``
    (default: ``agent.log`` beside the config; appended, so restarts keep one log). ``env``:
    more environment for the daemon (and so its SuperNode and ClientApps); ``own_session``:
    a process group of its own, which ``federation_helpers.stop`` ends as a whole."""
    log_path = log_path or Path(config_path).with_name("agent.log")
    with log_path.open("ab") as log:
        return subprocess.Popen(
            agent_command("--log-level", "INFO", "run", "--config", str(config_path)),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=own_session,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


def stop_agent(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def agent_status(config_path: Path, *, check: bool = True) -> dict[str, Any] | None:
    """``sleepfed-agent status --json``; with ``check=False`` None when it fails (e.g. no
    buffer yet)."""
    result = run_agent("status", "--json", "--config", str(config_path))
    # 1 (daemon not running) and 3 (degraded) still print the status; only no output fails.
    if result.returncode not in (0, 1, 3) or not result.stdout.strip():
        if check:
            raise AssertionError(f"status exited {result.returncode}: {result.stderr}")
        return None
    return json.loads(result.stdout)


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
    between: Callable[[float], object] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError on
    timeout. ``between(seconds)`` replaces the sleep (e.g. ``PtyLink.wait`` to keep
    draining ACKs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        (between or time.sleep)(interval)


def wait_connected(
    config_path: Path,
    expected: str = "1/1",
    timeout: float = 15.0,
    between: Callable[[float], object] | None = None,
    proc: subprocess.Popen[bytes] | None = None,
) -> dict[str, Any]:
    """Wait until ``status --json`` reports the daemon running with ``expected`` sources."""

    def ready() -> dict[str, Any] | None:
        if proc is not None and proc.poll() is not None:
            log = Path(config_path).with_name("agent.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise AssertionError(f"agent exited with {proc.returncode}:\n{tail}")
        status = agent_status(config_path, check=False)
        daemon = status["daemon"] if status else {}
        if daemon.get("running") and daemon.get("sources_connected") == expected:
            return status
        return None

    return wait_for(ready, timeout, 0.1, f"sources_connected == {expected}", between)
