"""Ingest throughput: parsing, buffer commits, and the real daemon end to end.

Not a test: it prints a small table and one final JSON line with every figure. Every rate
is also given as a ratio to a baseline measured in the same run. Goal: at least 100,000
readings/s into the buffer, batched.

    python benchmarks/bench_ingest.py [--data ../shared/data] [--readings 200000]

Readings are real Walch 2019 nights (sleepfed_tools.replay.walch_readings, one subject per night,
nights back to back) when the data folder is there, synthetic lines otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import record
from host import fs_type
from ingest_daemon import bench_end_to_end
from sleepfed_tools.replay import walch_readings

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.sources.protocol import Kind, Reading, format_reading, parse_line
from sleepfed.model.walch import walch_subjects

REPO = Path(__file__).resolve().parents[1]
GOAL_READINGS_PER_S = 100_000
DEFAULT_BATCH = 2000  # sleepfed.board.service.config default buffer.batch_max_readings
REPEATS = 5  # parse timings: best of
NIGHT_START = 1_700_000_000.0  # 2023-11-14 22:13 UTC; long past, settled by the agent config
# The end-to-end figures kept in the results file as they are (rounded).
E2E_KEPT = ("seconds", "send_seconds", "daemon_cpu_s_per_100k", "daemon_rss_mb")
E2E_KEPT += ("daemon_rss_before_mb", "daemon_rss_peak_mb")


def default_data() -> Path:
    return Path(os.environ.get("SLEEPFED_DATA", REPO.parent / "shared" / "data"))


# -- readings -----------------------------------------------------------------------------------
def realistic_readings(data: Path, n: int) -> tuple[list[Reading], str]:
    """``n`` readings in increasing time order: real Walch nights one after the other (each
    subject on its own night, cycling through the subjects), or synthetic ones."""
    walch = data / "walch2019" if (data / "walch2019").is_dir() else data
    subjects = walch_subjects(walch) if walch.is_dir() else []
    out: list[Reading] = []
    if subjects:
        night = 0
        while len(out) < n:
            subject = subjects[night % len(subjects)]
            out.extend(walch_readings(walch, subject, NIGHT_START + 86400.0 * night))
            night += 1
        return out[:n], f"walch2019 ({len(subjects)} subjects, {night} nights) from {walch}"
    rng = random.Random(1)
    t = NIGHT_START
    kinds = [Kind.MOV, Kind.HR, Kind.RR, Kind.HR, Kind.RR, Kind.LBL]
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        value = {
            Kind.MOV: float(rng.randint(0, 300)),
            Kind.HR: round(rng.uniform(45, 90), 2),
            Kind.RR: round(rng.uniform(650, 1300), 1),
            Kind.LBL: float(rng.randint(0, 5)),
        }[kind]
        t += 2.5
        out.append(Reading(t, kind, value))
    return out, "synthetic (no Walch data found)"


# -- measurements -------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_parse(lines: list[bytes], checked: list[bytes]) -> list[dict[str, object]]:
    """parse_line against a bare split + float of the same lines (the least any parser does)."""

    def bare() -> None:
        for line in lines:
            fields = line.split(b",")
            float(fields[2])
            float(fields[3])

    def parse(items: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            for line in items:
                parse_line(line)

        return run

    base = len(lines) / min(timed(bare) for _ in range(REPEATS))
    rows = [
        {"name": "bare split+float (baseline)", "per_s": base, "ratio": 1.0},
    ]
    for name, items in (("parse_line", lines), ("parse_line, with checksum", checked)):
        rate = len(items) / min(timed(parse(items)) for _ in range(REPEATS))
        rows.append({"name": name, "per_s": rate, "ratio": rate / base})
    return rows


def commit_rate(
    root: Path, batch: list[tuple[str, Reading]], size: int, synchronous: str
) -> tuple[float, int]:
    """Readings/s committing ``batch`` in transactions of ``size`` into a fresh buffer file."""
    path = root / f"buffer-{size}-{synchronous}.db"
    buffer = Buffer(path, synchronous=synchronous)
    try:
        start = time.perf_counter()
        for i in range(0, len(batch), size):
            chunk = batch[i : i + size]
            buffer.add_readings(chunk, {"accepted_hr": len(chunk)})
        elapsed = time.perf_counter() - start
    finally:
        buffer.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return len(batch) / elapsed, len(batch)


def bench_commits(
    root: Path, readings: list[Reading], single_n: int, batched_n: int
) -> list[dict[str, object]]:
    pairs = [("bench", r) for r in readings]
    rows: list[dict[str, object]] = []
    base, n = commit_rate(root, pairs[:single_n], 1, "full")
    rows.append({"name": "1 reading/txn, full (baseline)", "per_s": base, "ratio": 1.0, "n": n})
    rate, n = commit_rate(root, pairs[:single_n], 1, "normal")
    rows.append({"name": "1 reading/txn, normal", "per_s": rate, "ratio": rate / base, "n": n})
    for size in (100, 1000, DEFAULT_BATCH):
        for sync in ("full", "normal"):
            rate, n = commit_rate(root, pairs[:batched_n], size, sync)
            rows.append(
                {
                    "name": f"batch {size}, {sync}",
                    "per_s": rate,
                    "ratio": rate / base,
                    "n": n,
                }
            )
    return rows


# -- output -------------------------------------------------------------------------------------
def print_table(title: str, rows: list[dict[str, object]], unit: str, baseline: str) -> None:
    print(f"\n{title}")
    print(f"  {'':38} {unit:>14} {'x ' + baseline:>24}")
    for row in rows:
        per_s = float(row["per_s"])  # type: ignore[arg-type]
        ratio = float(row["ratio"])  # type: ignore[arg-type]
        print(f"  {row['name']:38} {per_s:14,.0f} {ratio:24.2f}")


def print_end_to_end(e2e: dict[str, object], base: float) -> None:
    e2e_rate = float(e2e["per_s"])  # type: ignore[arg-type]
    print_table(
        "end to end: PTY -> sleepfed-agent run -> buffer (synchronous=full) -> ACK",
        [
            {"name": "1 reading/txn, full (baseline)", "per_s": base, "ratio": 1.0},
            {"name": "daemon, end to end", "per_s": e2e_rate, "ratio": e2e_rate / base},
        ],
        "readings/s",
        "1/txn full",
    )
    print(
        f"  {e2e['readings']:,} readings in {e2e['seconds']:.2f} s (all written after "
        f"{e2e['send_seconds']:.2f} s); {e2e['acks']:,} ACKs "
        f"(~{e2e['readings_per_ack']:.0f} readings each); stored {e2e['stored_readings']:,} "
        f"readings + {e2e['stored_labels']:,} labels, {e2e['rejected']} rejected\n"
        f"  daemon CPU {e2e['daemon_cpu_s']:.2f} s = {e2e['daemon_cpu_s_per_100k']:.2f} s per "
        f"100k readings ({e2e['daemon_cpu_share']:.0%} of one core); "
        f"daemon RSS {e2e['daemon_rss_before_mb']:.1f} MB before, "
        f"{e2e['daemon_rss_peak_mb']:.1f} MB peak, {e2e['daemon_rss_mb']:.1f} MB after"
    )


def print_goal(e2e_rate: float, default_rate: float) -> None:
    print(
        f"\ngoal >= {GOAL_READINGS_PER_S:,} readings/s: buffer batch {DEFAULT_BATCH} full "
        f"{default_rate:,.0f}/s ({default_rate / GOAL_READINGS_PER_S:.2f}x goal), "
        f"end to end {e2e_rate:,.0f}/s ({e2e_rate / GOAL_READINGS_PER_S:.2f}x goal); "
        f"end to end = {e2e_rate / default_rate:.2f}x the bare batch-{DEFAULT_BATCH} commit rate"
    )


# -- the results file ---------------------------------------------------------------------------
def slug(name: object) -> str:
    """A row's name as a key of the results file: "batch 100, full" -> "batch_100_full"."""
    text = str(name).replace(" (baseline)", "").replace("/", "_per_")
    return text.replace(", ", "_").replace(" ", "_").replace("+", "_")


def by_name(rows: list[dict[str, object]], key: str, digits: int) -> dict[str, float]:
    values = {slug(r["name"]): float(r[key]) for r in rows}  # type: ignore[arg-type]
    return {k: round(v, digits) if digits else round(v) for k, v in values.items()}


def end_to_end_figures(
    e2e: dict[str, object], base: float, default_rate: float
) -> dict[str, object]:
    e2e_rate = float(e2e["per_s"])  # type: ignore[arg-type]
    return {
        "readings_per_s": round(e2e_rate),
        "ratio_to_1_per_txn_full": round(e2e_rate / base, 2),
        "ratio_to_goal": round(e2e_rate / GOAL_READINGS_PER_S, 3),
        "ratio_to_batch_2000_full": round(e2e_rate / default_rate, 3),
        **{key: round(float(e2e[key]), 3) for key in E2E_KEPT},  # type: ignore[arg-type]
        "acks": e2e["acks"],
        "rejected": e2e["rejected"],
    }


def summary(
    readings: int,
    origin: str,
    parse_rows: list[dict[str, object]],
    commit_rows: list[dict[str, object]],
    e2e: dict[str, object],
) -> dict[str, object]:
    base = float(commit_rows[0]["per_s"])  # type: ignore[arg-type]
    default_rate = float(default_batch(commit_rows)["per_s"])  # type: ignore[arg-type]
    return {
        "bench": "ingest",
        "readings": readings,
        "data": origin,
        "goal_readings_per_s": GOAL_READINGS_PER_S,
        "parse_lines_per_s": by_name(parse_rows, "per_s", 0),
        "parse_ratio_to_bare_split": by_name(parse_rows, "ratio", 3),
        "commit_readings_per_s": by_name(commit_rows, "per_s", 0),
        "commit_ratio_to_1_per_txn_full": by_name(commit_rows, "ratio", 2),
        "end_to_end": end_to_end_figures(e2e, base, default_rate),
    }


def default_batch(commit_rows: list[dict[str, object]]) -> dict[str, object]:
    return next(r for r in commit_rows if r["name"] == f"batch {DEFAULT_BATCH}, full")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="shared data folder")
    parser.add_argument("--readings", type=int, default=200_000, help="readings per measure")
    parser.add_argument(
        "--single", type=int, default=5_000, help="readings for the one-per-transaction baseline"
    )
    parser.add_argument("--tmpdir", type=Path, help="where the SQLite files go (default: $TMPDIR)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    # One more reading than measured: the first one goes out before the clock starts.
    readings, origin = realistic_readings(args.data, args.readings + 1)
    warmup, readings = readings[0], readings[1:]
    lines = [format_reading(r)[:-1] for r in readings]
    checked = [format_reading(r, with_checksum=True)[:-1] for r in readings]
    root = Path(tempfile.mkdtemp(prefix="sleepfed-bench-", dir=args.tmpdir))
    try:
        print(
            f"sleepfed bench_ingest: {len(readings):,} readings, {origin}\n"
            f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"SQLite files in {root} ({fs_type(root)})"
        )
        parse_rows = bench_parse(lines, checked)
        print_table("parse (lines/s)", parse_rows, "lines/s", "bare split")
        commit_rows = bench_commits(root, readings, args.single, args.readings)
        print_table("buffer commits (readings/s)", commit_rows, "readings/s", "1/txn full")
        e2e = bench_end_to_end(root / "e2e", readings, warmup)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = float(commit_rows[0]["per_s"])  # type: ignore[arg-type]
    print_end_to_end(e2e, base)
    print_goal(float(e2e["per_s"]), float(default_batch(commit_rows)["per_s"]))  # type: ignore[arg-type]
    print(f"(took {time.perf_counter() - began:.0f} s)")

    figures = summary(len(readings), origin, parse_rows, commit_rows, e2e)
    print(json.dumps(figures, sort_keys=False))
    record.save(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
