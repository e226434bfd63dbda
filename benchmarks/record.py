"""Where ``make bench`` keeps each benchmark's figures: ``benchmarks/results/<bench>.json``,
with the date, the machine and the commit they were measured on. The docs' tables are made
from these files (``python -m sleepfed_tools.bench_tables --write``), never copied by hand."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# SLEEPFED_BENCH_RESULTS sends a trial run's file elsewhere, so that it does not replace the
# figures the docs are made from.
RESULTS = Path(
    os.environ.get("SLEEPFED_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)


def machine() -> dict[str, Any]:
    return {
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() or "unknown"


def save(figures: dict[str, Any]) -> Path:
    """Write ``figures`` (which name their ``bench``) with date, machine and commit."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{figures['bench']}.json"
    record = {
        "bench": figures["bench"],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "commit": commit(),
        "figures": figures,
    }
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"figures written to {path}")
    return path
