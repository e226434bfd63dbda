"""Flower's command-line processes as supervised children: where their programs are, the
environment they run in, and stopping one with everything it started (its process group)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def flower_bin(name: str) -> str:
    """A Flower program from this interpreter's environment (the venv's bin), else PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """Flower's children need the venv's bin on PATH (the SuperNode starts
    flower-superexec); telemetry and the update check are off: no call home from a board."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


def stop_process_group(process: subprocess.Popen[bytes] | None, grace_seconds: float) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace_seconds``. The child must
    have been started with ``start_new_session=True``."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
