"""The end-to-end measure of benchmarks/bench_ingest.py: readings replayed over a PTY into a
real ``sleepfed-agent run`` (parse, batch, commit with synchronous=full, ACK), with the
daemon's CPU time and RSS."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from sleepfed_tools.replay import PtyLink, replay

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.sources.protocol import Reading

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.helpers import stop_agent, write_agent_config  # noqa: E402


def agent_config(root: Path, port: str) -> Path:
    # Night extraction stays out of the measurement (the replayed nights are in the past).
    return write_agent_config(
        root / "agent.toml", buffer=root / "buffer.db", ports={"bench": port}, settle_seconds=3600
    )


def wait_connected(config: Path, link: PtyLink, proc: subprocess.Popen[bytes]) -> float:
    """Poll ``status --json`` (draining the PTY meanwhile) until the daemon has the port."""
    start = time.monotonic()
    while time.monotonic() - start < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sleepfed.board.service.cli",
                "status",
                "--json",
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode == 0:
            daemon = json.loads(result.stdout).get("daemon", {})
            if daemon.get("running") and daemon.get("sources_connected") == "1/1":
                return time.monotonic() - start
        link.wait(0.2)
    raise RuntimeError("agent did not open the PTY within 60 s")


def wait_ack(link: PtyLink, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ack = link.last_ack
        if ack is not None and ack[1] >= count:
            return True
        link.wait(0.002)
    return False


class PeakRss:
    """The daemon's peak RSS while it ingests, sampled every 0.05 s by a thread."""

    def __init__(self, daemon: psutil.Process) -> None:
        self.daemon = daemon
        self.before = daemon.memory_info().rss
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.daemon.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class Ingested:
    """The clock, CPU and memory figures of one replay until its last ACK."""

    ok: bool
    sent: int
    seconds: float
    send_seconds: float
    cpu: float
    rss: int
    rss_before: int
    rss_peak: int
    acks: int
    last: tuple[float, int] | None


def _replay_and_wait(
    link: PtyLink, proc: subprocess.Popen[bytes], readings: list[Reading]
) -> Ingested:
    daemon = psutil.Process(proc.pid)
    with PeakRss(daemon) as rss:
        cpu0 = daemon.cpu_times()
        t0 = time.perf_counter()
        sent = replay(readings, link.write, None, drain=link.drain)
        t_sent = time.perf_counter()
        ok = wait_ack(link, len(readings) + 1, 120)
        t1 = time.perf_counter()
        cpu1 = daemon.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return Ingested(
        ok=ok,
        sent=sent,
        seconds=t1 - t0,
        send_seconds=t_sent - t0,
        cpu=cpu,
        rss=daemon.memory_info().rss,
        rss_before=rss.before,
        rss_peak=rss.peak,
        acks=link.acks.acks,
        last=link.last_ack,
    )


def _ingest(root: Path, readings: list[Reading], warmup: Reading) -> tuple[Ingested, float]:
    with PtyLink() as link:
        config = agent_config(root, link.device_path)
        log = (root / "agent.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sleepfed.board.service.cli", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            startup = wait_connected(config, link, proc)
            # One reading first: proves the link carries data and ACKs come back.
            replay([warmup], link.write, None, drain=link.drain)
            if not wait_ack(link, 1, 30):
                raise RuntimeError("no ACK for the first reading")
            return _replay_and_wait(link, proc, readings), startup
        finally:
            stop_agent(proc, timeout=30)
            log.close()


def bench_end_to_end(root: Path, readings: list[Reading], warmup: Reading) -> dict[str, object]:
    """The real ``sleepfed-agent run`` on a PTY: PTY -> parse -> batch -> commit -> ACK."""
    n = len(readings)
    root.mkdir(parents=True, exist_ok=True)
    run, startup = _ingest(root, readings, warmup)
    if not run.ok:
        tail = (root / "agent.log").read_text()[-2000:]
        raise RuntimeError(f"only {run.last} acknowledged of {n + 1}; agent log:\n{tail}")
    buffer = Buffer(root / "buffer.db", readonly=True)
    try:
        stored = buffer.counts()
        counters = buffer.counters()
    finally:
        buffer.close()
    return {
        "readings": n,
        "sent": run.sent,
        "seconds": run.seconds,
        "send_seconds": run.send_seconds,
        "per_s": n / run.seconds,
        "daemon_cpu_s": run.cpu,
        "daemon_cpu_s_per_100k": run.cpu / n * 100_000,
        "daemon_cpu_share": run.cpu / run.seconds,
        "acks": run.acks,
        "readings_per_ack": n / max(run.acks - 1, 1),
        "stored_readings": stored.readings,
        "stored_labels": stored.stage_labels,
        "rejected": sum(v for k, v in counters.items() if k.startswith("rejected_")),
        "startup_seconds": startup,
        "daemon_rss_mb": run.rss / 2**20,
        "daemon_rss_before_mb": run.rss_before / 2**20,
        "daemon_rss_peak_mb": run.rss_peak / 2**20,
    }
