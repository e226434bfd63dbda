"""Memory of a board (and of the server) around one real federated round over TLS.

Not a test: it prints a small table and one final JSON line with every figure. Goal: the
agent daemon's RSS between rounds is at most 60 MB. Every figure is also given as a ratio
to a bare Python interpreter measured in the same run.

    python benchmarks/bench_memory.py --data ../shared/data

The federation is the one the tests start (tests/support/federation_helpers.py): a TLS SuperLink
(``sleepfed-server run --once``, 1 round, min_nodes=2, held-out Walch subjects) and two
agent daemons whose buffers already hold one extracted Walch night. psutil samples every
0.2 s: the daemon process alone, the board's whole process tree (daemon + flower-supernode
+ its ClientApp processes) and the server's tree (sleepfed-server + flower-superlink +
ServerApp). Tree figures are sums of RSS (shared pages are counted once per process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.federation_helpers import (  # noqa: E402
    board_state,
    free_port,
    pki,
    start_agent,
    start_server,
    stop,
    write_board,
    write_server_config,
)

MB = 2**20
GOAL_BETWEEN_ROUNDS_MB = 60.0
INTERVAL = 0.2
IDLE_SECONDS = 5.0
AFTER_SECONDS = 5.0
ROUND_TIMEOUT = 150.0
BOARD_SUBJECTS = ["4426783", "8258170"]
HELD_OUT = ["1066528", "2638030", "8000685", "8692923"]


# -- sampling -----------------------------------------------------------------------------------
def label(proc: psutil.Process) -> str:
    """A short name for a process: the console script or module it runs."""
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    for i, part in enumerate(cmd):
        if part == "-m" and i + 1 < len(cmd):
            return {
                "sleepfed.board.service.cli": "sleepfed-agent",
                "sleepfed.server.ops.cli": "sleepfed-server",
            }.get(cmd[i + 1], cmd[i + 1])
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


# -- the federation -----------------------------------------------------------------------------
def run_federation(root: Path, walch: Path) -> dict[str, object]:
    certs = pki(root)
    port = free_port()
    server_config = write_server_config(
        root, port, certs, rounds=1, min_nodes=2, walch_dir=walch, held_out=HELD_OUT
    )
    boards = [
        write_board(root, f"board{i}", port, certs["ca"], walch_dir=walch, subject=subject)
        for i, subject in enumerate(BOARD_SUBJECTS)
    ]
    agents = [start_agent(b) for b in boards]
    server = None
    series = {b.parent.name: Series() for b in boards}
    server_series = Series()
    marks: dict[str, float] = {}
    began = time.monotonic()

    def sample(phase: str) -> None:
        for board, agent in zip(boards, agents, strict=True):
            series[board.parent.name].add(phase, agent.pid)
        if server is not None:
            server_series.add(phase, server.pid)

    def sample_for(seconds: float, phase: str) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sample(phase)
            time.sleep(INTERVAL)

    def heartbeat(config: Path) -> bool:
        try:
            return bool(board_state(config).get("heartbeat_at"))
        except Exception:
            return False

    try:
        # Idle: the daemons are up, their night extracted (pre-filled), the server not yet.
        deadline = time.monotonic() + 60
        while not all(heartbeat(b) for b in boards):
            if time.monotonic() > deadline or any(a.poll() is not None for a in agents):
                raise RuntimeError("agents did not start: see " + str(root / "board0"))
            time.sleep(0.2)
        sample_for(IDLE_SECONDS, "idle")

        # The round: from starting the server until it exits (run --once).
        marks["server_start"] = time.monotonic() - began
        server = start_server(server_config)
        deadline = time.monotonic() + ROUND_TIMEOUT
        while server.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"round not over in {ROUND_TIMEOUT:.0f}s")
            sample("round")
            time.sleep(INTERVAL)
        marks["server_exit"] = time.monotonic() - began
        if server.returncode != 0:
            log = (root / "server" / "server.log").read_text()[-2000:]
            raise RuntimeError(f"server exited with {server.returncode}:\n{log}")

        # Between rounds: each board's session over and its SuperNode gone.
        def session_over(config: Path, pid: int) -> bool:
            state = board_state(config)
            try:
                children = psutil.Process(pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return True
            return state.get("last_session_outcome") == "finished" and not children

        deadline = time.monotonic() + 60
        while not all(session_over(b, a.pid) for b, a in zip(boards, agents, strict=True)):
            if time.monotonic() > deadline:
                break
            sample("round")
            time.sleep(INTERVAL)
        marks["sessions_over"] = time.monotonic() - began
        time.sleep(1.0)
        sample_for(AFTER_SECONDS, "after")
        outcomes = {b.parent.name: board_state(b) for b in boards}
    finally:
        stop([*agents, *([server] if server is not None else [])])
    logs = {b.parent.name: (b.parent / "agent.log").read_text(errors="replace") for b in boards}
    return {
        "series": series,
        "server": server_series,
        "marks": marks,
        "states": outcomes,
        "logs": logs,
    }


# -- output -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    walch = args.data / "walch2019" if (args.data / "walch2019").is_dir() else args.data
    if not any(walch.glob("*_psg_labels.out")):
        parser.error(f"no Walch 2019 data under {args.data}")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

    began = time.perf_counter()
    bare = baseline_rss("import time; time.sleep(3)")
    numpy_rss = baseline_rss("import time, numpy; time.sleep(3)")
    root = Path(tempfile.mkdtemp(prefix="sleepfed-bench-mem-"))
    try:
        result = run_federation(root, walch)
    finally:
        if args.keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)

    series: dict[str, Series] = result["series"]  # type: ignore[assignment]
    server: Series = result["server"]  # type: ignore[assignment]
    marks: dict[str, float] = result["marks"]  # type: ignore[assignment]
    states: dict[str, dict[str, object]] = result["states"]  # type: ignore[assignment]
    logs: dict[str, str] = result["logs"]  # type: ignore[assignment]

    def mb(value: float) -> float:
        return value / MB

    rows: list[tuple[str, float]] = [
        ("bare python (baseline)", mb(bare)),
        ("python + numpy", mb(numpy_rss)),
    ]
    per_board: dict[str, dict[str, float]] = {}
    for name, s in series.items():
        idle = Series.pick(s.own, "idle")
        round_own = Series.pick(s.own, "round")
        round_tree = Series.pick(s.tree, "round")
        after = Series.pick(s.own, "after")
        figures = {
            "daemon_idle_mb": mb(statistics.median(idle)) if idle else 0.0,
            "daemon_round_peak_mb": mb(max(round_own)) if round_own else 0.0,
            "tree_round_peak_mb": mb(max(round_tree)) if round_tree else 0.0,
            "daemon_after_mb": mb(max(after)) if after else 0.0,
        }
        per_board[name] = figures
        rows += [
            (f"{name}: daemon idle before round (median)", figures["daemon_idle_mb"]),
            (f"{name}: daemon peak during round", figures["daemon_round_peak_mb"]),
            (f"{name}: board tree peak during round", figures["tree_round_peak_mb"]),
            (f"{name}: daemon after round (max)", figures["daemon_after_mb"]),
        ]
    server_peak = mb(max(Series.pick(server.tree, "round"), default=0))
    rows.append(("server tree peak during round", server_peak))

    print(
        f"sleepfed bench_memory: 1 round, 2 boards ({', '.join(BOARD_SUBJECTS)}), "
        f"held-out {', '.join(HELD_OUT)}\n"
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM; RSS sampled every {INTERVAL} s\n"
        f"server started at {marks.get('server_start', 0):.1f} s, exited at "
        f"{marks.get('server_exit', 0):.1f} s, sessions over at "
        f"{marks.get('sessions_over', 0):.1f} s"
    )
    print(f"\n  {'':48} {'RSS MB':>8} {'x bare python':>14}")
    for name, value in rows:
        print(f"  {name:48} {value:8.1f} {value / mb(bare):14.2f}")

    worst_after = max(f["daemon_after_mb"] for f in per_board.values())
    print(
        "\n  board tree at its peak (MB): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k} {mb(v):.0f}" for k, v in sorted(s.peak_tree[1].items()))
            for name, s in series.items()
        )
    )
    print(
        "  server tree at its peak (MB): "
        + ", ".join(f"{k} {mb(v):.0f}" for k, v in sorted(server.peak_tree[1].items()))
    )
    for name, state in states.items():
        counters = state.get("counters", {})
        print(
            f"  {name}: session {state.get('last_session_outcome')!r}, "
            f"rounds_trained {counters.get('rounds_trained')}, "  # type: ignore[union-attr]
            f"rounds_evaluated {counters.get('rounds_evaluated')}, "  # type: ignore[union-attr]
            f"SuperNode starts: {logs[name].count('federation starting node')}"
        )
        if "Traceback" in logs[name]:
            tail = logs[name][logs[name].index("Traceback") :].splitlines()
            print(f"  {name}: agent log has a traceback: {' | '.join(tail[:8])[-400:]}")
    verdict = "meets" if worst_after <= GOAL_BETWEEN_ROUNDS_MB else "MISSES"
    print(
        f"\ngoal daemon RSS between rounds <= {GOAL_BETWEEN_ROUNDS_MB:.0f} MB: worst board "
        f"{worst_after:.1f} MB ({verdict} the goal)"
    )
    print(f"(took {time.perf_counter() - began:.0f} s)")

    bare_mb = mb(bare)
    summary: dict[str, object] = {
        "bench": "memory",
        "goal_daemon_between_rounds_mb": GOAL_BETWEEN_ROUNDS_MB,
        "bare_python_mb": round(bare_mb, 1),
        "python_numpy_mb": round(mb(numpy_rss), 1),
        "numpy_ratio_to_bare": round(mb(numpy_rss) / bare_mb, 2),
        "boards": {
            name: {
                **{k: round(v, 1) for k, v in figures.items()},
                **{
                    k.replace("_mb", "_ratio_to_bare"): round(v / bare_mb, 2)
                    for k, v in figures.items()
                },
            }
            for name, figures in per_board.items()
        },
        "server_tree_peak_mb": round(server_peak, 1),
        "server_tree_peak_ratio_to_bare": round(server_peak / bare_mb, 2),
        "daemon_between_rounds_worst_mb": round(worst_after, 1),
        "meets_goal": worst_after <= GOAL_BETWEEN_ROUNDS_MB,
        "round_seconds": round(marks.get("server_exit", 0) - marks.get("server_start", 0), 1),
    }
    print(json.dumps(summary))
    record.save(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
