"""The agent daemon as a real process, fed through real pseudo-terminals
(sleepfed_tools.replay.PtyLink).

Every number is read back through ``sleepfed-agent status --json`` or from the SQLite file
itself; nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sleepfed_tools.replay import PtyLink

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.sources.protocol import Kind, Reading, checksum, format_reading
from tests.support.helpers import (
    agent_status,
    run_agent,
    wait_connected,
    wait_for,
    write_agent_config,
)

T0 = 1_764_000_000.0  # 2025-11-24 16:00 UTC
Start = Callable[[Path], subprocess.Popen[bytes]]


def setup_agent(tmp_path: Path, port: str, settle: float = 1.0) -> tuple[Path, Path]:
    buffer = tmp_path / "buffer.db"
    config = write_agent_config(
        tmp_path / "agent.toml", buffer=buffer, ports={"wrist": port}, settle_seconds=settle
    )
    return config, buffer


def db_timestamps(buffer: Path) -> list[float]:
    with sqlite3.connect(buffer) as conn:
        rows = [r[0] for r in conn.execute("SELECT ts FROM readings ORDER BY ts")]
    conn.close()
    return rows


def ms(ts: float) -> int:
    return round(ts * 1000)


def status_when(
    config: Path, link: PtyLink, predicate: Callable[[dict], bool], what: str, timeout: float = 15
) -> dict:
    """Poll status (draining ACKs meanwhile) until ``predicate(status)`` holds."""

    def check() -> dict | None:
        status = agent_status(config)
        return status if predicate(status) else None

    return wait_for(check, timeout, 0.1, what, between=link.wait)


# -- a. valid and malformed lines ----------------------------------------------------------------
def test_valid_and_malformed_lines(tmp_path: Path, agent_procs: Start) -> None:
    link = PtyLink()
    try:
        config, buffer = setup_agent(tmp_path, link.device_path)
        proc = agent_procs(config)
        wait_connected(config, between=link.wait, proc=proc)

        kinds = [Kind.HR, Kind.RR, Kind.MOV, Kind.LUX, Kind.HR, Kind.LBL]
        values = {Kind.HR: 61.0, Kind.RR: 950.0, Kind.MOV: 12.0, Kind.LUX: 3.5, Kind.LBL: 2.0}
        valid = [Reading(T0 + i, kinds[i % 6], values[kinds[i % 6]]) for i in range(2000)]
        bad_lines = [
            b"SF1,HR,1764000000.500,60*00\n",  # checksum
            b"SF1,HR,1764000000.600,300\n",  # value_out_of_range
            b"SF1,HR,1764000000.700,nan\n",  # not_a_number
            b"\x00\xff\xfe\x80garbage\n",  # encoding
            b"SF1,SPO2,1764000000.800,97\n",  # unknown_kind
            b"hello\n",  # version
        ]
        chunks: list[bytes] = []
        for i, reading in enumerate(valid):
            chunks.append(format_reading(reading, with_checksum=i % 2 == 0))
            if i % 300 == 150:
                chunks.append(bad_lines[(i // 300) % len(bad_lines)])
        # 7 bad lines so far (one of each reason, checksum twice); then an over-long line
        # without newline, a pause, its newline, and the last valid reading
        assert len(chunks) == 2000 + 7
        link.write(b"".join(chunks[:-1]), timeout=10)
        link.write(b"A" * 500, timeout=10)
        link.wait(0.5)
        link.write(b"AAAA\n", timeout=10)
        link.write(chunks[-1], timeout=10)

        n_lbl = sum(1 for r in valid if r.kind is Kind.LBL)
        status = status_when(
            config, link, lambda s: sum(s["accepted"].values()) == 2000, "2000 accepted"
        )
        link.wait(0.3)  # a later commit would show up here
        status = agent_status(config)
        assert status is not None
        assert status["accepted"] == {
            "hr": sum(1 for r in valid if r.kind is Kind.HR),
            "rr": sum(1 for r in valid if r.kind is Kind.RR),
            "mov": sum(1 for r in valid if r.kind is Kind.MOV),
            "lux": sum(1 for r in valid if r.kind is Kind.LUX),
            "lbl": n_lbl,
        }
        assert status["rejected"] == {
            "checksum": 2,
            "value_out_of_range": 1,
            "not_a_number": 1,
            "encoding": 1,
            "unknown_kind": 1,
            "version": 1,
            "too_long": 1,
        }
        assert status["buffer"]["readings"] == 2000 - n_lbl
        assert status["buffer"]["stage_labels"] == n_lbl
        assert status["daemon"]["running"] is True
        assert status["daemon"]["sources_connected"] == "1/1"
        assert proc.poll() is None
        assert link.last_ack == (valid[-1].timestamp, 2000)
        assert len(db_timestamps(buffer)) == 2000 - n_lbl
    finally:
        link.close()


# -- b. a line split across two writes -----------------------------------------------------------
def test_partial_line_is_accepted_once(tmp_path: Path, agent_procs: Start) -> None:
    link = PtyLink()
    try:
        config, buffer = setup_agent(tmp_path, link.device_path)
        proc = agent_procs(config)
        wait_connected(config, between=link.wait, proc=proc)
        body = "SF1,HR,1764000123.250,72.5"
        line = f"{body}*{checksum(body.encode()):02X}\n".encode()
        link.write(line[:11], timeout=5)
        link.wait(0.6)  # longer than the port's read timeout: the half arrives alone
        link.write(line[11:], timeout=5)
        status = status_when(config, link, lambda s: s["accepted"].get("hr") == 1, "1 HR")
        link.wait(0.5)
        status = agent_status(config)
        assert status is not None
        assert status["accepted"] == {"hr": 1}
        assert status["rejected"] == {}
        assert status["buffer"]["readings"] == 1
        assert link.last_ack == (1764000123.25, 1)
        assert db_timestamps(buffer) == [1764000123.25]
        assert proc.poll() is None
    finally:
        link.close()


# -- c. the device vanishes and comes back ---------------------------------------------------------
def _point(symlink: Path, target: str) -> None:
    tmp = symlink.with_name(symlink.name + ".new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, symlink)  # atomic repoint


def test_reconnects_after_the_port_vanishes(tmp_path: Path, agent_procs: Start) -> None:
    port = tmp_path / "ttySENSOR"
    first = PtyLink()
    second: PtyLink | None = None
    try:
        _point(port, first.device_path)
        config, buffer = setup_agent(tmp_path, str(port))
        proc = agent_procs(config)
        wait_connected(config, between=first.wait, proc=proc)
        log = tmp_path / "agent.log"

        batch1 = [Reading(T0 + i, Kind.HR, 60.0) for i in range(300)]
        first.write(b"".join(format_reading(r) for r in batch1), timeout=10)
        wait_for(lambda: first.last_ack == (batch1[-1].timestamp, 300), 10, 0.05,
                 "ACK of batch 1", between=first.wait)  # fmt: skip

        first.close()  # the device goes away (USB unplugged)
        status = wait_for(
            lambda: (s := agent_status(config)) and s["counters"].get("source_disconnects") and s,
            10,
            0.1,
            "source_disconnects",
        )
        assert status["counters"]["source_disconnects"] == 1
        assert "source_disconnect" not in status["rejected"]
        assert proc.poll() is None

        second = PtyLink()  # plugged in again: a new device node behind the stable name
        _point(port, second.device_path)
        wait_for(lambda: log.read_text().count(f"port={port} connected") >= 2, 15, 0.05,
                 "reconnection", between=second.wait)  # fmt: skip

        batch2 = [Reading(T0 + 1000 + i, Kind.MOV, 5.0) for i in range(400)]
        second.write(b"".join(format_reading(r, with_checksum=True) for r in batch2), timeout=10)
        status = status_when(
            config, second, lambda s: s["buffer"]["readings"] == 700, "700 readings"
        )
        assert status["accepted"] == {"hr": 300, "mov": 400}
        assert status["rejected"] == {}
        assert status["counters"]["source_disconnects"] == 1
        status = status_when(
            config, second, lambda s: s["daemon"]["sources_connected"] == "1/1", "1/1 again"
        )
        # The ACK count is per source since the daemon started: 300 + 400.
        wait_for(lambda: second.last_ack == (batch2[-1].timestamp, 700), 5, 0.05,
                 "ACK of batch 2", between=second.wait)  # fmt: skip
        assert len(db_timestamps(buffer)) == 700
        assert proc.poll() is None
    finally:
        first.close()
        if second is not None:
            second.close()


# -- d. SIGKILL mid-ingest: everything acknowledged is on disk ------------------------------------
def _stream_until(link: PtyLink, next_ts: int, stop_at: float, per_chunk: int = 200) -> int:
    """Write HR lines with timestamps (in ms) ``next_ts, next_ts + 10, ...`` until
    ``stop_at`` (monotonic); returns the next unused timestamp."""
    while time.monotonic() < stop_at:
        lines = [f"SF1,HR,{(next_ts + 10 * k) / 1000:.3f},70\n" for k in range(per_chunk)]
        next_ts += 10 * per_chunk
        link.write("".join(lines).encode(), timeout=5)
    return next_ts


def test_sigkill_mid_ingest_loses_nothing_acknowledged(tmp_path: Path, agent_procs: Start) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    buffer = tmp_path / "buffer.db"
    config = tmp_path / "agent.toml"
    next_ts = ms(T0)
    previous_rows = 0
    acked: set[int] = set()  # every timestamp (ms) some run acknowledged
    for run in range(5):
        link = PtyLink()
        try:
            write_agent_config(config, buffer=buffer, ports={"wrist": link.device_path})
            proc = agent_procs(config)
            status = wait_connected(config, between=link.wait, proc=proc)
            assert status["buffer"]["readings"] == previous_rows  # restarted on the same file
            sent_from = next_ts
            # stream until the first ACK arrives, then for a random while longer
            next_ts = _stream_until(link, next_ts, time.monotonic() + 0.2)
            while link.last_ack is None:
                next_ts = _stream_until(link, next_ts, time.monotonic() + 0.05)
            next_ts = _stream_until(link, next_ts, time.monotonic() + rng.uniform(0.0, 0.6))
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=5) == -signal.SIGKILL
            link.drain()  # ACKs written just before the kill still count
            ack = link.last_ack
            assert ack is not None
            last_acked = ms(ack[0])
            assert sent_from <= last_acked < next_ts
        finally:
            link.close()

        with sqlite3.connect(buffer) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = {ms(r[0]) for r in conn.execute("SELECT ts FROM readings")}
        conn.close()
        sent = set(range(ms(T0), next_ts, 10))
        acked |= set(range(sent_from, last_acked + 1, 10))
        context = f"seed={seed} run={run} last_acked={last_acked} next={next_ts}"
        assert acked <= stored, context  # nothing acknowledged is lost
        assert stored <= sent, context  # nothing invented
        assert len(stored) >= previous_rows, context  # rows only grow
        # this run's acknowledged count matches what it committed
        assert ack[1] == (last_acked - sent_from) // 10 + 1, context
        previous_rows = len(stored)
    assert previous_rows > 0


# -- e. SIGTERM: clean exit, acknowledged readings on disk ---------------------------------------
def test_sigterm_exits_cleanly(tmp_path: Path, agent_procs: Start) -> None:
    link = PtyLink()
    try:
        config, buffer = setup_agent(tmp_path, link.device_path)
        proc = agent_procs(config)
        wait_connected(config, between=link.wait, proc=proc)
        next_ts = _stream_until(link, ms(T0), time.monotonic() + 0.5)
        while link.last_ack is None:
            next_ts = _stream_until(link, next_ts, time.monotonic() + 0.05)
        proc.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        wait_for(lambda: proc.poll() is not None, 5, 0.02, "exit after SIGTERM",
                 between=link.wait)  # fmt: skip
        assert time.monotonic() - sent_at < 5
        assert proc.returncode == 0
        link.drain()
        ack = link.last_ack
        assert ack is not None
    finally:
        link.close()
    stored = {ms(ts) for ts in db_timestamps(buffer)}
    acked = set(range(ms(T0), ms(ack[0]) + 1, 10))
    assert acked <= stored
    assert stored <= set(range(ms(T0), next_ts, 10))
    assert ack[1] == len(acked)
    reader = Buffer(buffer, readonly=True)
    try:
        assert reader.state()["health"] == "stopped"
        assert reader.state()["daemon_pid"] == 0
        assert reader.counters()["accepted_hr"] == len(stored)
        assert reader.integrity_check() == "ok"
    finally:
        reader.close()
    status = agent_status(config)
    assert status is not None
    assert status["daemon"]["running"] is False
    assert status["daemon"]["pid"] is None
    assert status["daemon"]["health"] == "not running"
    assert status["buffer"]["readings"] == len(stored)


# -- f. configuration errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[buffer]\npath = "b.db"\nmax_mb = \n', "not valid TOML"),
        ("[buffer\npath = 1\n", "not valid TOML"),
        ('[buffer]\npath = "b.db"\nmax_mb = "big"\n', "buffer.max_mb"),
        ('[buffer]\npath = "b.db"\nmax_mb = true\n', "buffer.max_mb"),
        ('[buffer]\npath = "b.db"\nmax_mb = -1\n', "buffer.max_mb"),
        ("[buffer]\nmax_mb = 1\n", "buffer.path"),
        ('[buffer]\npath = "b.db"\nsynchronous = "off"\n', "buffer.synchronous"),
        ('[buffer]\npath = "b.db"\n[nights]\nsettle_seconds = "soon"\n', "nights.settle_seconds"),
        ('[buffer]\npath = "b.db"\n[[sources]]\ntype = "serial"\n', "sources[0].port"),
        ('[buffer]\npath = "b.db"\n[[sources]]\ntype = "zigbee"\nport = "x"\n', "sources[0].type"),
        ('[buffer]\npath = "b.db"\n[[sources]]\ntype = "ble"\n', "sources[0].devices"),
        (
            '[buffer]\npath = "b.db"\n[[sources]]\ntype = "ble"\n'
            '[[sources.devices]]\naddress = "nope"\n',
            "sources[0].devices[0].address",
        ),
        ('[board]\ntimezone = "Mars/Olympus"\n[buffer]\npath = "b.db"\n', "board.timezone"),
    ],
)
def test_bad_config_exits_2_naming_the_field(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    result = run_agent("run", "--config", str(config), timeout=10)
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b.db").exists()


def test_missing_config_exits_2(tmp_path: Path) -> None:
    result = run_agent("status", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


# -- g. the morning report ----------------------------------------------------------------------
def test_label_is_stored_and_shown(tmp_path: Path, agent_procs: Start) -> None:
    night = "2026-11-24"
    evening = dt.datetime(2026, 11, 24, 22, 0, tzinfo=dt.UTC).timestamp()
    link = PtyLink()
    try:
        config, buffer = setup_agent(tmp_path, link.device_path)
        result = run_agent("label", "--config", str(config), "--night", night, "good")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"night {night} reported good"
        reader = Buffer(buffer, readonly=True)
        assert reader.night_reports() == {night: "good"}
        reader.close()

        bad = run_agent("label", "--config", str(config), "--night", "24.11.2026", "good")
        assert bad.returncode == 2
        assert "--night" in bad.stderr

        if time.time() < evening + 14 * 3600 + 5:
            pytest.skip("the night 2026-11-24 has not ended yet on this clock")
        proc = agent_procs(config)
        wait_connected(config, between=link.wait, proc=proc)
        readings = []
        for e in range(120):  # one hour of a night: 120 epochs, MOV + HR + LBL each
            t = evening + 30 * e
            readings += [
                Reading(t + 1, Kind.MOV, float(e % 7)),
                Reading(t + 2, Kind.HR, 55.0 + e % 5),
                Reading(t + 15, Kind.LBL, 2.0 if e > 10 else 0.0),
            ]
        link.write(b"".join(format_reading(r) for r in readings), timeout=10)
        status = status_when(config, link, lambda s: s["buffer"]["nights"] == 1, "night extracted")
        assert status["last_night"]["night"] == night
        assert status["last_night"]["reported_quality"] == "good"
        assert status["last_night"]["reference_efficiency"] == pytest.approx(109 / 120)
        assert status["buffer"]["windows"] == 6
        assert status["buffer"]["labelled_windows"] == 6

        result = run_agent("label", "--config", str(config), "--night", night, "poor")
        assert result.returncode == 0, result.stderr
        status = agent_status(config)
        assert status is not None
        assert status["last_night"]["reported_quality"] == "poor"
    finally:
        link.close()
