"""RSS sampling for benchmarks/bench_memory.py: a process tree's memory by process, tagged
with the phase of the round it was taken in, and the peak RSS of a bare interpreter."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Modules the daemons run with ``python -m``, shown under their console script's name.
CONSOLE_SCRIPTS = {
    "sleepfed.board.service.cli": "sleepfed-agent",
    "sleepfed.server.ops.cli": "sleepfed-server",
}


def label(proc: psutil.Process) -> str:
    """A short name for a process: the console script or module it runs."""
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    for i, part in enumerate(cmd):
        if part == "-m" and i + 1 < len(cmd):
            return CONSOLE_SCRIPTS.get(cmd[i + 1], cmd[i + 1])
    if len(cmd) >= 2 and "python" in Path(cmd[0]).name:
        return Path(cmd[1]).name
    return Path(cmd[0]).name if cmd else proc.name()


def tree_rss(pid: int) -> tuple[int, int, dict[str, int]]:
    """(RSS of ``pid``, summed RSS of it and all its descendants, RSS by process label)."""
    try:
        root = psutil.Process(pid)
        own = root.memory_info().rss
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, {}
    total, by_label = 0, defaultdict(int)
    for proc in procs:
        try:
            rss = proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        total += rss
        by_label[label(proc)] += rss
    return own, total, dict(by_label)


@dataclass
class Series:
    """Samples of one process tree, tagged with the phase they were taken in."""

    own: list[tuple[str, int]] = field(default_factory=list)
    tree: list[tuple[str, int]] = field(default_factory=list)
    peak_tree: tuple[int, dict[str, int]] = (0, {})

    def add(self, phase: str, pid: int) -> None:
        own, total, by_label = tree_rss(pid)
        if not own:
            return
        self.own.append((phase, own))
        self.tree.append((phase, total))
        if phase == "round" and total > self.peak_tree[0]:
            self.peak_tree = (total, by_label)

    @staticmethod
    def pick(values: list[tuple[str, int]], phase: str) -> list[int]:
        return [v for p, v in values if p == phase]


def baseline_rss(code: str) -> int:
    """Peak RSS of ``python -c code`` (sampled every 0.05 s while it runs)."""
    proc = subprocess.Popen([sys.executable, "-c", code])
    peak = 0
    try:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return peak
