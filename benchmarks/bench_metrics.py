"""What a Prometheus scrape costs: the agent's endpoint on buffers of growing size, the
server's on a long history.

Not a test: it prints a small table and one final JSON line. Each scrape is the endpoint's
whole work (``generate_latest`` over the collector: open the file read-only, read counters,
state, counts and model receipts, format the text), timed as the median of repeated runs;
the baseline, measured in the same run on the same file, is the cheapest possible read:
open the file read-only, read the counters table, close.

    python benchmarks/bench_metrics.py [--readings 100000,1000000] [--rounds 1000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import record
from prometheus_client import CollectorRegistry, generate_latest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sleepfed.board.buffer.store import Buffer  # noqa: E402
from sleepfed.board.service.metrics import AgentCollector  # noqa: E402
from sleepfed.board.sources.protocol import Kind, Reading  # noqa: E402
from sleepfed.server.app.history import History  # noqa: E402
from sleepfed.server.ops.config import parse_config  # noqa: E402
from sleepfed.server.ops.metrics import ServerCollector  # noqa: E402

REPEATS = 15


def median_ms(work: Callable[[], object], repeats: int = REPEATS) -> float:
    work()  # warm the page cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def fill_buffer(path: Path, readings: int) -> None:
    buffer = Buffer(path, synchronous="normal")
    kinds = (Kind.HR, Kind.RR, Kind.MOV)
    t0 = 1_764_000_000.0
    for start in range(0, readings, 20_000):
        batch = [
            ("wrist", Reading(t0 + i, kinds[i % 3], 60.0))
            for i in range(start, min(start + 20_000, readings))
        ]
        buffer.add_readings(batch, {"accepted_hr": len(batch)})
    buffer.close()


def counters_only(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute("SELECT name, value FROM counters").fetchall()
    conn.close()


def scrape_bytes(registry: CollectorRegistry) -> int:
    return len(generate_latest(registry))


def agent_rows(root: Path, sizes: list[int]) -> list[dict[str, float]]:
    rows = []
    for size in sizes:
        path = root / f"buffer-{size}.db"
        fill_buffer(path, size)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(AgentCollector(path, None, 1))
        baseline = median_ms(lambda p=path: counters_only(p))
        scrape = median_ms(lambda r=registry: scrape_bytes(r))
        rows.append(
            {
                "readings": size,
                "file_mb": path.stat().st_size / 1e6,
                "baseline_ms": baseline,
                "scrape_ms": scrape,
                "ratio": scrape / baseline,
                "scrape_bytes": scrape_bytes(registry),
            }
        )
    return rows


def server_row(root: Path, rounds: int) -> dict[str, float]:
    state = root / "server"
    config = parse_config({"server": {"state_dir": str(state), "insecure": True}}, root)
    history = History(config.history_path)
    history.start_run("1", 0, rounds)
    blob = bytes(13 * 8)
    for r in range(1, rounds + 1):
        history.add_round(
            global_round=r,
            run_id="1",
            server_round=r,
            arrays=blob,
            train_metrics={"train-loss": 0.3},
            eval_metrics={"eval-accuracy": 0.8},
            server_metrics={"auc": 0.8, "loss": 0.4, "accuracy": 0.8, "windows": 500.0},
            train_nodes=20,
            eval_nodes=20,
        )
    history.finish_run("1", "finished")
    history.close()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(config, lambda: True))
    baseline = median_ms(lambda: counters_only_history(config.history_path))
    scrape = median_ms(lambda: scrape_bytes(registry))
    return {
        "rounds": rounds,
        "baseline_ms": baseline,
        "scrape_ms": scrape,
        "ratio": scrape / baseline,
    }


def counters_only_history(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute("SELECT COUNT(*) FROM runs").fetchall()
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", default="100000,1000000")
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.readings.split(",")]
    with tempfile.TemporaryDirectory(prefix="sleepfed-bench-metrics-") as tmp:
        root = Path(tmp)
        agent = agent_rows(root, sizes)
        server = server_row(root, args.rounds)
    print("| endpoint | file | baseline read (ms) | scrape (ms) | × baseline |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in agent:
        print(
            f"| agent | {row['readings']:,} readings ({row['file_mb']:.0f} MB) | "
            f"{row['baseline_ms']:.2f} | {row['scrape_ms']:.1f} | {row['ratio']:.0f} |"
        )
    print(
        f"| server | {server['rounds']:,} rounds | {server['baseline_ms']:.2f} | "
        f"{server['scrape_ms']:.1f} | {server['ratio']:.0f} |"
    )
    print(json.dumps({"agent": agent, "server": server}))
    record.save({"bench": "metrics", "agent": agent, "server": server})
    return 0


if __name__ == "__main__":
    sys.exit(main())
