"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def fs_type(path: Path) -> str:
    """The file system ``path`` is on (its longest mount point's type)."""
    best = ("?", "")
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if str(path).startswith(mount) and len(mount) > len(best[1]):
            best = (part.fstype, mount)
    return best[0]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"
