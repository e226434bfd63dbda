"""A crash of the agent's process: 30 SIGKILLs of the real agent at random moments while it
ingests over a real PTY as fast as the link goes (``SLEEPFED_POWER_KILLS`` for more).

After every kill: every reading the agent acknowledged is in the file (exactly once), the
counters committed with the readings agree with them, and the agent restarts on the same
file and acknowledges again. ``PRAGMA integrity_check`` runs every tenth kill and at the end.
Half the runs use ``synchronous = "normal"``, half the default ``"full"``: both survive a
killed process, whose writes the kernel still holds. A power cut also loses what the kernel
had not written to the disk: tests/faults/test_power_cut.py shows that ``"full"`` loses no
acknowledged reading then, and that ``"normal"`` does.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from sleepfed_tools.replay import PtyLink

from sleepfed.board.buffer.schema import SCHEMA_VERSION
from tests.support.helpers import start_agent, stop_agent, write_agent_config

T0_MS = 1_764_000_000_000
STEP_MS = 10
KILLS = int(os.environ.get("SLEEPFED_POWER_KILLS", "30"))


def _lines(first_ms: int, count: int) -> bytes:
    return "".join(
        f"SF1,HR,{(first_ms + STEP_MS * k) / 1000:.3f},70\n" for k in range(count)
    ).encode()


def _has_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` holds ``path`` open (read from /proc, no helper process)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == path for fd in fds.iterdir())
    except OSError:  # the process or one of its fds went away meanwhile
        return False


def _count_between(conn: sqlite3.Connection, first_ms: int, last_ms: int) -> int:
    # timestamps are stored as float seconds; half a step of slack on each side
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM readings WHERE ts >= ? AND ts <= ?",
            ((first_ms - STEP_MS / 2) / 1000, (last_ms + STEP_MS / 2) / 1000),
        ).fetchone()[0]
    )


@pytest.mark.slow
def test_sigkills_lose_no_acknowledged_reading(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    buffer = tmp_path / "buffer.db"
    config = tmp_path / "agent.toml"
    next_ms = T0_MS
    acked_total = 0
    runs_with_ack = 0
    acknowledged: list[tuple[int, int, int]] = []  # per run: first and last ms, count
    kill_moments: list[float] = []
    for run in range(KILLS):
        sync = "normal" if run % 2 else "full"
        link = PtyLink()
        proc = None
        try:
            write_agent_config(config, buffer=buffer, ports={"wrist": link.device_path})
            text = config.read_text().replace(
                "[buffer]\n", f'[buffer]\nsynchronous = "{sync}"\nbatch_max_readings = 500\n'
            )
            config.write_text(text)
            proc = start_agent(config)
            started = time.monotonic()
            sent_from = next_ms
            # 15% during start-up (opening the file, recovering the WAL), the others during
            # the ingest (start-up takes 0.5-1.5 s here: wait for the port to be open)
            early = rng.random() < 0.15
            kill_at = started + rng.uniform(0.0, 0.6) if early else float("inf")
            # pyserial flushes the port's input when it opens it: stream only once it has
            while time.monotonic() < kill_at and not _has_open(proc.pid, link.device_path):
                time.sleep(0.01)
                if time.monotonic() - started > 30:
                    raise AssertionError("the agent did not open its port within 30 s")
            if kill_at == float("inf"):
                kill_at = time.monotonic() + rng.uniform(0.1, 0.5)
            time.sleep(0.05)
            while time.monotonic() < kill_at:
                link.write(_lines(next_ms, 200), timeout=5)
                next_ms += 200 * STEP_MS
                if proc.poll() is not None:
                    raise AssertionError(f"agent exited by itself with {proc.returncode}")
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
            kill_moments.append(time.monotonic() - started)
            link.drain()  # ACKs written just before the kill count too
            ack = link.last_ack
        finally:
            if proc is not None:
                stop_agent(proc, timeout=5)
            link.close()
        context = f"seed={seed} run={run} synchronous={sync}"
        with sqlite3.connect(buffer) as conn:  # opening it recovers the WAL, as a restart does
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                # killed while creating the file: the schema is one transaction, all or nothing
                assert ack is None, context
                assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
                continue
            if ack is not None:
                runs_with_ack += 1
                last_ms = round(ack[0] * 1000)
                assert sent_from <= last_ms < next_ms, context
                expected = (last_ms - sent_from) // STEP_MS + 1
                # the ACK's count is this link's committed readings: all of them, in order
                assert ack[1] == expected, context
                # every acknowledged reading is stored exactly once
                assert _count_between(conn, sent_from, last_ms) == expected, context
                acked_total += expected
                acknowledged.append((sent_from, last_ms, expected))
            # nothing of this run beyond what was sent, nothing invented
            assert _count_between(conn, sent_from, next_ms) <= (next_ms - sent_from) // STEP_MS
            rows = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            counted = conn.execute(
                "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = 'accepted_hr'"
            ).fetchone()[0]
            # readings and their counters are committed in one transaction
            assert rows == counted, context
            if run % 10 == 9:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", context
        conn.close()
    with sqlite3.connect(buffer) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        rows = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        # at the end, after every later run and kill: each run's acknowledged readings are
        # all there, each exactly once (every reading has a timestamp of its own)
        for first_ms, last_ms, expected in acknowledged:
            assert _count_between(conn, first_ms, last_ms) == expected, (seed, first_ms)
        doubled = conn.execute(
            "SELECT COUNT(*) FROM (SELECT ts FROM readings GROUP BY ts HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        assert doubled == 0, seed
    conn.close()
    assert rows >= acked_total
    # most kills came after ACKs: the test exercised the ingest, not only start-up
    assert runs_with_ack >= KILLS * 0.6, (runs_with_ack, seed)
    print(
        f"\n{KILLS} SIGKILLs (seed {seed}): {runs_with_ack} runs had acknowledged readings, "
        f"{acked_total} acknowledged, {rows} stored, 0 lost; kill moments "
        f"{min(kill_moments):.2f}-{max(kill_moments):.2f}s after start"
    )
