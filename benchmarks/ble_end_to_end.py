"""Measure 3 of benchmarks/bench_ble.py: notifications pushed by the BlueZ stand-in
(python-dbusmock on a private D-Bus system bus) through bleak's BlueZ backend in a real
``sleepfed-agent run`` daemon into its SQLite buffer, with every process's CPU time."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import psutil
from ble_in_process import ADDRESS

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.sources.ble_parsing import HEART_RATE_MEASUREMENT
from sleepfed.board.sources.protocol import Kind

if TYPE_CHECKING:
    from sleepfed_tools.bluez_standin import BlueZStandIn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.helpers import stop_agent, write_agent_config  # noqa: E402

HR_KIND = int(Kind.HR)
PUSH_BATCH = 100  # notifications per NotifyMany D-Bus call


def agent_config(root: Path) -> Path:
    # Night extraction stays out of the measurement.
    source = f"""
[[sources]]
type = "ble"
name = "ble"
scan_timeout_seconds = 5

[[sources.devices]]
name = "strap"
address = "{ADDRESS}"
"""
    return write_agent_config(
        root / "agent.toml", buffer=root / "buffer.db", settle_seconds=3600, extra=source
    )


def count_kind(db: Path, kind: int) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return 0
    try:
        return int(
            conn.execute("SELECT count(*) FROM readings WHERE kind = ?", (kind,)).fetchone()[0]
        )
    except sqlite3.Error:
        return 0  # schema not there yet
    finally:
        conn.close()


def wait_rows(db: Path, kind: int, n: int, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_kind(db, kind) >= n:
            return True
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        time.sleep(0.01)
    return False


def cpu_of(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()
    return times.user + times.system


@dataclass
class Pushed:
    """The clock and CPU figures of one push of every notification until stored."""

    delivered: int
    ok: bool
    seconds: float
    push_seconds: float
    cpu: tuple[float, float, float, float]  # daemon, stand-in, dbus-daemon, this process
    pusher_cpu: float
    rss: int


def _start_daemon(config: Path, log: BinaryIO) -> subprocess.Popen[bytes]:
    # DBUS_SYSTEM_BUS_ADDRESS names the stand-in's bus while it runs: the daemon inherits it.
    return subprocess.Popen(
        [sys.executable, "-m", "sleepfed.board.service.cli", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def _warm_up(bluez: BlueZStandIn, db: Path, proc: subprocess.Popen[bytes]) -> float:
    """Seconds until the daemon subscribed; one notification proves the path before the clock."""
    t_start = time.monotonic()
    bluez.wait_until_notifying(ADDRESS, HEART_RATE_MEASUREMENT, timeout=30)
    startup = time.monotonic() - t_start
    if not bluez.notify(ADDRESS, HEART_RATE_MEASUREMENT, bytes([0x16, 60, 0, 4])):
        raise RuntimeError("the warm-up notification was not delivered")
    if not wait_rows(db, HR_KIND, 1, 30, proc):
        raise RuntimeError("the warm-up notification never reached the buffer")
    return startup


def _push(
    bluez: BlueZStandIn, payloads: list[bytearray], db: Path, proc: subprocess.Popen[bytes]
) -> Pushed:
    daemon = psutil.Process(proc.pid)
    server = psutil.Process(bluez.server_pid)
    bus_daemon = getattr(bluez, "_bus", None)  # PrivateDBus; its pid is public there
    bus = psutil.Process(bus_daemon.pid) if bus_daemon is not None else None
    cpu0 = (cpu_of(daemon), cpu_of(server), cpu_of(bus), time.process_time())
    t0 = time.perf_counter()
    # NotifyMany: many notifications per D-Bus call, so that the stand-in's own call
    # overhead does not bound the rate; each still reaches bleak as its own signal.
    delivered = sum(
        bluez.notify_many(ADDRESS, HEART_RATE_MEASUREMENT, payloads[i : i + PUSH_BATCH])
        for i in range(0, len(payloads), PUSH_BATCH)
    )
    t_pushed = time.perf_counter()
    cpu_pushed = time.process_time()
    ok = wait_rows(db, HR_KIND, len(payloads) + 1, 120, proc)
    t1 = time.perf_counter()
    cpu1 = (cpu_of(daemon), cpu_of(server), cpu_of(bus), time.process_time())
    used = (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2], cpu1[3] - cpu0[3])
    return Pushed(
        delivered, ok, t1 - t0, t_pushed - t0, used, cpu_pushed - cpu0[3], daemon.memory_info().rss
    )


def _push_through_daemon(root: Path, payloads: list[bytearray]) -> tuple[Pushed, float]:
    from sleepfed_tools.bluez_standin import BlueZStandIn

    db = root / "buffer.db"
    config = agent_config(root)
    with BlueZStandIn(log_dir=root) as bluez:
        bluez.add_heart_rate_sensor(ADDRESS, with_illuminance=False, with_movement=False)
        bluez.advertise(ADDRESS)
        log = (root / "agent.log").open("wb")
        proc = _start_daemon(config, log)
        try:
            startup = _warm_up(bluez, db, proc)
            pushed = _push(bluez, payloads, db, proc)
        finally:
            stop_agent(proc, timeout=30)
            log.close()
    return pushed, startup


def bench_end_to_end(root: Path, payloads: list[bytearray]) -> dict[str, object]:
    n = len(payloads)
    root.mkdir(parents=True, exist_ok=True)
    db = root / "buffer.db"
    pushed, startup = _push_through_daemon(root, payloads)
    if not pushed.ok:
        tail = (root / "agent.log").read_text()[-2000:]
        raise RuntimeError(f"{count_kind(db, HR_KIND) - 1} of {n} HR rows stored; log:\n{tail}")
    buffer = Buffer(db, readonly=True)
    try:
        counters = buffer.counters()
        hr_rows = count_kind(db, HR_KIND) - 1
        rr_rows = count_kind(db, int(Kind.RR)) - 1
    finally:
        buffer.close()
    return {
        "n": n,
        "delivered": pushed.delivered,
        "seconds": pushed.seconds,
        "push_seconds": pushed.push_seconds,
        "per_s": n / pushed.seconds,
        "push_per_s": n / pushed.push_seconds,
        "cpu_s_per_1k": pushed.cpu[0] / n * 1000.0,
        "daemon_cpu_s": pushed.cpu[0],
        "standin_cpu_s": pushed.cpu[1],
        "bus_cpu_s": pushed.cpu[2],
        "pusher_cpu_s": pushed.pusher_cpu,
        "bench_cpu_s": pushed.cpu[3],
        "hr_rows": hr_rows,
        "rr_rows": rr_rows,
        "rejected": sum(v for k, v in counters.items() if k.startswith("rejected_")),
        "startup_seconds": startup,
        "daemon_rss_mb": pushed.rss / 2**20,
    }
