"""Many real nodes against one SuperLink: ``sleepfed-server run --once`` (TLS, 127.0.0.1) and
bare ``flower-supernode`` processes, each with a prepared buffer of its own (a label-skewed
slice of one walch2019 person, sleepfed.server.research.partitions), running the installed
ClientApp.

Used by benchmarks/bench_real_nodes.py (20 nodes x 3 rounds is too slow for the test suite on
2 cores). While the run lasts, the SuperLink's RSS is sampled once a second, with the RSS of
the whole server tree (SuperLink, ServerApp) and of all nodes' trees (SuperNode, its
SuperExec, the ClientApp processes).
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sleepfed.common.flower_process import flower_bin, flower_environment
from sleepfed.model.walch import walch_dataset
from sleepfed.server.app.history import History
from sleepfed.server.research.partitions import resample_boards
from sleepfed.server.research.simulation import prepare_buffers
from tests.support.federation_helpers import (
    free_port,
    node_key,
    pki,
    register,
    start_server,
    stop,
    write_server_config,
)

HELD_OUT = ["1066528", "2638030", "8000685", "8692923"]


@dataclass
class FleetRun:
    nodes: int
    run_seconds: float  # from the run's start in the history to its last round
    round_seconds: list[float]
    train_nodes: list[int]
    eval_nodes: list[int]
    server_exit: int | None
    # (seconds since the run started, bytes); negative before the ServerApp's run began
    superlink_rss: list[tuple[float, int]] = field(default_factory=list)
    server_tree_peak: int = 0
    nodes_tree_peak: int = 0

    @property
    def superlink_peak(self) -> int:
        return max((rss for _, rss in self.superlink_rss), default=0)

    @property
    def superlink_at_start(self) -> int:
        """RSS when the run began (SuperLink up, nodes connecting, no round yet)."""
        return next((rss for t, rss in self.superlink_rss if t >= 0), 0)


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def _superlink(server: psutil.Process) -> psutil.Process | None:
    for child in server.children(recursive=True):
        try:
            if any("flower-superlink" in part for part in child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def start_supernode(
    root: Path, port: int, ca: Path, buffer: Path, server_config: Path
) -> subprocess.Popen[bytes]:
    """A bare SuperNode over ``buffer``, with a key of its own enrolled in the server's
    registry (the server enforces node authentication)."""
    home = buffer.parent / f"{buffer.stem}-flwr"
    home.mkdir(parents=True, exist_ok=True)
    register(server_config, buffer.stem, node_key(home / "node.key"))
    command = [
        flower_bin("flower-supernode"),
        "--superlink",
        f"127.0.0.1:{port}",
        "--root-certificates",
        str(ca),
        "--auth-supernode-private-key",
        str(home / "node.key"),
        "--port",
        str(free_port()),
        "--node-config",
        f'buffer-path="{buffer}"',
    ]
    log = (home / "supernode.log").open("wb")
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**flower_environment(home), "PYTHONUNBUFFERED": "1"},
    )


def run_fleet(
    root: Path,
    walch_dir: Path,
    *,
    nodes: int,
    rounds: int,
    round_timeout: float = 300.0,
    timeout: float = 1800.0,
) -> FleetRun:
    """Run ``rounds`` rounds over ``nodes`` real nodes; a round ends with the nodes that
    answered within ``round_timeout`` seconds; the whole run is stopped after ``timeout``."""
    certs = pki(root)
    port = free_port()
    config = write_server_config(
        root,
        port,
        certs,
        rounds=rounds,
        min_nodes=nodes,
        walch_dir=walch_dir,
        held_out=HELD_OUT,
        round_timeout=round_timeout,
    )
    people = {s: n for s, n in walch_dataset(walch_dir).items() if s not in HELD_OUT}
    boards = resample_boards(people, nodes, seed=1)
    buffers = prepare_buffers(root / "buffers", [b.windows for b in boards])
    supernodes = [start_supernode(root, port, certs["ca"], path, config) for path in buffers]
    server = start_server(config)
    started = time.monotonic()
    started_wall = time.time()
    samples: list[tuple[float, int]] = []
    server_peak = nodes_peak = 0
    try:
        server_process = psutil.Process(server.pid)
        node_processes = [psutil.Process(p.pid) for p in supernodes]
        while server.poll() is None and time.monotonic() - started < timeout:
            try:
                link = _superlink(server_process)
                if link is not None:
                    samples.append((time.time(), link.memory_info().rss))
                server_peak = max(server_peak, _tree_rss(server_process))
            except psutil.Error:
                pass
            nodes_peak = max(nodes_peak, sum(_tree_rss(p) for p in node_processes))
            time.sleep(1.0)
    finally:
        stop([server, *supernodes])
    history = History(root / "server" / "state" / "history.db")
    try:
        records = history.rounds()
        runs = history.runs()
    finally:
        history.close()
    marks = [float(runs[-1]["started_at"])] if runs else []  # type: ignore[arg-type]
    marks += [r.created_at for r in records]
    origin = marks[0] if marks else started_wall
    return FleetRun(
        nodes=nodes,
        run_seconds=marks[-1] - marks[0] if len(marks) > 1 else 0.0,
        round_seconds=[b - a for a, b in itertools.pairwise(marks)],
        train_nodes=[r.train_nodes for r in records],
        eval_nodes=[r.eval_nodes for r in records],
        server_exit=server.returncode,
        superlink_rss=[(t - origin, rss) for t, rss in samples],
        server_tree_peak=server_peak,
        nodes_tree_peak=nodes_peak,
    )
