"""What benchmarks/bench_load.py samples once a second: CPU seconds and RSS of the server's
process tree and of each board's daemon and tree, and the machine's load average."""

from __future__ import annotations

import os
import statistics
import threading
from dataclasses import dataclass, field

import psutil

INTERVAL = 1.0


@dataclass
class Tree:
    """CPU seconds and RSS of one process tree, sampled; dead children keep their last CPU."""

    cpu_by_pid: dict[tuple[int, float], float] = field(default_factory=dict)
    own_cpu: float = 0.0
    own_cpu_start: float | None = None
    own_rss: list[int] = field(default_factory=list)
    tree_rss: list[int] = field(default_factory=list)

    def sample(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total_rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
                    key = (proc.pid, proc.create_time())
            except psutil.Error:
                continue
            cpu = times.user + times.system
            self.cpu_by_pid[key] = cpu
            total_rss += rss
            if proc.pid == pid:
                if self.own_cpu_start is None:
                    self.own_cpu_start = cpu
                self.own_cpu = cpu - self.own_cpu_start
                self.own_rss.append(rss)
        self.tree_rss.append(total_rss)

    def tree_cpu(self, baseline: Tree | None = None) -> float:
        """CPU seconds of the tree since ``baseline`` (its first sample) was taken."""
        total = sum(self.cpu_by_pid.values())
        if baseline is not None:
            total -= sum(v for k, v in baseline.cpu_by_pid.items() if k in self.cpu_by_pid)
        return total


class Sampler:
    def __init__(self) -> None:
        self.server_pid: int | None = None
        self.agent_pids: dict[str, int] = {}
        self.server = Tree()
        self.server_start = Tree()
        self.boards: dict[str, Tree] = {}
        self.board_start: dict[str, Tree] = {}
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        if self.server_pid is not None:
            self.server_start.sample(self.server_pid)
        for name, pid in self.agent_pids.items():
            first = Tree()
            first.sample(pid)
            self.board_start[name] = first
            self.boards[name] = Tree()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            if self.server_pid is not None:
                self.server.sample(self.server_pid)
            for name, pid in self.agent_pids.items():
                self.boards[name].sample(pid)
            self.loads.append(os.getloadavg()[0])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"
