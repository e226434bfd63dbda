"""Flower's command-line processes as supervised children: where their programs are, the
environment they run in, and stopping one with everything it started (its process group)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal: it exists
        return True
    return True


def stop_process_group(process: subprocess.Popen[bytes] | None, grace_seconds: float) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace_seconds``. The child must
    have been started with ``start_new_session=True``. The group is ended even when its
    leader has already exited: what the leader started (an nginx worker holding the listening
    socket, a SuperNode's flower-superexec) would otherwise outlive it."""
    if process is None:
        return
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_seconds)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid) or process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        process.wait()
        while _group_alive(pgid) and time.monotonic() < deadline + 5.0:
            time.sleep(0.05)


def descendants(pid: int) -> set[tuple[int, int]]:
    """(pid, start time in clock ticks) of every process below ``pid``, from /proc (Linux;
    elsewhere empty). The start time tells a process from a later one given the same pid."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            # after "pid (comm)": state, ppid, ... starttime is the 20th
            parents.setdefault(int(fields[1]), []).append((int(stat.parent.name), int(fields[19])))
    found: set[tuple[int, int]] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def kill_remembered(processes: set[tuple[int, int]]) -> int:
    """SIGKILL each (pid, start time) that is still that same process; returns how many."""
    killed = 0
    for pid, started in processes:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[19]) == started:
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed
