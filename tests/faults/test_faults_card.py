"""The SD card, as an operator meets it, under the real agent on a copy of a real board's
buffer (a Walch 2019 night replayed through the agent over a real PTY, its night extracted):

1. a buffer with 8 KB of garbage in its middle, and a buffer that is not SQLite at all: the
   agent moves it aside (``buffer.db.corrupt-<UTC time>``), salvages what is readable into a
   fresh buffer and acknowledges new readings within seconds; ``status`` explains it without
   a traceback, naming the quarantined file;
2. the card remounted read-only by the kernel (ext4 ``errors=remount-ro`` on a loop device,
   the error raised through ext4's own ``trigger_fs_error``): nothing is acknowledged, status
   and metrics say why, the daemon neither exits nor spins; once the card is mounted again
   it resumes by itself and every reading is acknowledged and stored once;
3. the buffer's folder gone (renamed away) and back: the same.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sleepfed_tools.replay import PtyLink, walch_readings

from sleepfed.board.service.buffer_keeper import read_only
from sleepfed.board.sources.protocol import format_reading
from sleepfed.model.walch import walch_subjects
from tests.support.helpers import (
    agent_status,
    run_agent,
    start_agent,
    stop_agent,
    wait_for,
    write_agent_config,
)
from tests.support.notify_listener import NotifyListener
from tests.support.prometheus_scrape import scrape

STEP_MS = 10


def _lines(first_ms: int, count: int) -> bytes:
    return "".join(
        f"SF1,HR,{(first_ms + STEP_MS * k) / 1000:.3f},70\n" for k in range(count)
    ).encode()


def _acked(link: PtyLink) -> int:
    return (link.last_ack or (0, 0))[1]


def _until_acknowledged(link: PtyLink, timeout: float = 60.0) -> int:
    """Probe readings (before the test's own, in 2025-11-13) until one is acknowledged:
    pyserial flushes the port's input when it opens it, so lines written just before are
    lost, and on a busy machine the port's opening is no sign it is done. Returns the
    readings acknowledged once the probes settled."""
    deadline = time.monotonic() + timeout
    probe = 0
    while link.last_ack is None:
        assert time.monotonic() < deadline, "no reading acknowledged"
        link.write(f"SF1,HR,{1_763_000_000 + probe}.000,60\n".encode(), timeout=5)
        probe += 1
        link.wait(0.5)
    link.wait(1.0)  # the probes in flight are committed and acknowledged by now
    return _acked(link)


def _rows(path: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        value = int(conn.execute(sql).fetchone()[0])
    conn.close()
    return value


@pytest.fixture(scope="module")
def real_buffer(tmp_path_factory: pytest.TempPathFactory, walch_dir: Path) -> Path:
    """A board's buffer made by the real agent from a real night (readings, stage labels,
    the night's windows)."""
    folder = tmp_path_factory.mktemp("real-board")
    buffer = folder / "buffer.db"
    config = write_agent_config(folder / "agent.toml", buffer=buffer, ports={})
    night_start = float(int(time.time()) - 3 * 86400)
    subject = walch_subjects(walch_dir)[0]
    lines = b"".join(format_reading(r) for r in walch_readings(walch_dir, subject, night_start))
    with PtyLink() as link:
        write_agent_config(config, buffer=buffer, ports={"wrist": link.device_path})
        proc = start_agent(config)
        try:
            assert link.wait_opened(30), "the agent did not open its port"
            _until_acknowledged(link)
            link.write(lines, timeout=60)
            # the replayed night's windows, not the probes' own night of one epoch
            wait_for(lambda: _windows(config) > 30, 90, 0.2, "the night extracted", link.wait)
        finally:
            assert stop_agent(proc) == 0
    return buffer


def _windows(config: Path) -> int:
    status = agent_status(config, check=False)
    return int(status["buffer"]["windows"]) if status else 0


def _board(tmp_path: Path, source: Path, folder: Path | None = None) -> tuple[Path, Path]:
    folder = folder or tmp_path / "board"
    folder.mkdir(parents=True, exist_ok=True)
    buffer = folder / "buffer.db"
    shutil.copy(source, buffer)
    return buffer, tmp_path / "agent.toml"


def _garbage_in_the_middle(buffer: Path) -> None:
    size = buffer.stat().st_size
    with buffer.open("r+b") as file:
        file.seek(size // 2)
        file.write(random.Random(17).randbytes(8192))


def _not_sqlite(buffer: Path) -> None:
    buffer.write_bytes(random.Random(18).randbytes(5000))


@pytest.mark.parametrize("damage", [_garbage_in_the_middle, _not_sqlite], ids=["8kb", "random"])
def test_a_corrupt_buffer_is_moved_aside_salvaged_and_ingest_goes_on(
    tmp_path: Path, real_buffer: Path, damage: object
) -> None:
    readings = _rows(real_buffer, "SELECT COUNT(*) FROM readings")
    labels = _rows(real_buffer, "SELECT COUNT(*) FROM stage_labels")
    windows = _rows(real_buffer, "SELECT COUNT(*) FROM windows")
    assert readings > 10_000 and labels > 500 and windows > 30
    buffer, config = _board(tmp_path, real_buffer)
    damage(buffer)  # type: ignore[operator]
    damaged = buffer.read_bytes()
    with PtyLink() as link:
        write_agent_config(config, buffer=buffer, ports={"wrist": link.device_path})
        # before the agent: status says what is wrong in one sentence, exit 4
        before = run_agent("status", "--config", str(config))
        assert before.returncode == 4, before.stderr
        assert "Traceback" not in before.stderr and len(before.stderr.strip().splitlines()) == 1
        assert "corrupt" in before.stderr or "not a SQLite database" in before.stderr
        proc = start_agent(config)
        try:
            started = time.monotonic()
            assert link.wait_opened(30)
            base = _until_acknowledged(link)
            ack = link.last_ack
            took = time.monotonic() - started
            link.write(_lines(1_764_000_000_000, 500), timeout=10)
            wait_for(lambda: _acked(link) == base + 500, 20, 0.05, "500 ACKed", link.wait)
            assert proc.poll() is None  # no exit, no restart
            status = run_agent("status", "--json", "--config", str(config))
        finally:
            assert stop_agent(proc) == 0
    print(f"\nfirst ACK {took:.1f} s after start: {ack}")
    assert took < 20
    quarantined = sorted(buffer.parent.glob("buffer.db.corrupt-2*[0-9Z]"))
    assert len(quarantined) == 1, list(buffer.parent.iterdir())
    assert quarantined[0].read_bytes()[: len(damaged) // 2] == damaged[: len(damaged) // 2]
    assert status.returncode == 3, status.stderr  # degraded: the recovery is shown for a day
    shown = json.loads(status.stdout)
    recovered = shown["buffer"]["recovered"]
    assert recovered["quarantined"] == quarantined[0].name
    assert any(quarantined[0].name in p for p in shown["problems"])
    log = config.with_name("agent.log").read_text()
    assert "buffer corrupt" in log and quarantined[0].name in log
    salvaged = recovered["salvaged_readings"]
    print(f"salvaged {salvaged} of {readings} readings, {recovered['readings_lost']} lost")
    stored = _rows(buffer, "SELECT COUNT(*) FROM readings")
    assert stored == salvaged + base + 500  # the salvage, then the new readings
    if damage is _garbage_in_the_middle:
        # 8 KB is two pages of ~4,000: nearly everything comes back, and the loss is counted
        assert salvaged >= 0.95 * readings, (salvaged, readings)
        assert recovered["readings_lost"] == readings - salvaged
        assert _rows(buffer, "SELECT COUNT(*) FROM stage_labels") >= 0.9 * labels
        # the replayed night and its windows (the new readings make a night of their own)
        assert _rows(buffer, "SELECT COUNT(*) FROM windows") >= 0.9 * windows
    else:
        assert salvaged == 0 and recovered["readings_lost"] is None
        assert "nothing readable" in recovered["salvage_problem"]
    assert _rows(buffer, "SELECT COUNT(*) FROM counters WHERE name = 'buffer_recovered'") == 1


@pytest.fixture
def card(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An ext4 file system on a loop device, mounted as the kernel mounts an SD card that
    must not be written after an error (``errors=remount-ro``): (mount point, image)."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 missing (e2fsprogs)")
    image, mount = tmp_path / "card.img", tmp_path / "card"
    mount.mkdir()
    with image.open("wb") as file:
        file.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    _mount(image, mount)
    try:
        yield mount, image
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _mount(image: Path, mount: Path) -> None:
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)], check=True)


def _loop_devices(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout


def _read_only(mount: Path) -> bool:
    return read_only(mount)


def _hold_and_resume(
    tmp_path: Path, real_buffer: Path, folder: Path, cut: object, restore: object, reason: str
) -> None:
    """On a copy of a real board's buffer: stream, ``cut()``, stream more (held), check
    status, metrics, sd_notify and CPU, ``restore()``, and check that every reading is
    acknowledged and stored exactly once."""
    from tests.support.federation_helpers import free_port

    folder.mkdir(parents=True, exist_ok=True)
    buffer = folder / "buffer.db"
    shutil.copy(real_buffer, buffer)
    # on the card for good, as a board's buffer is before anything fails: a copy still in
    # the page cache is lost with it when ext4 turns read-only on an error
    os.sync()
    before = _rows(buffer, "SELECT COUNT(*) FROM readings")
    port = free_port()
    config = tmp_path / "agent.toml"
    with PtyLink() as link:
        write_agent_config(
            config,
            buffer=buffer,
            ports={"wrist": link.device_path},
            extra=f"[metrics]\nhost = '127.0.0.1'\nport = {port}\n",
        )
        listener = NotifyListener(tmp_path / "notify.sock")  # the service manager's socket
        proc = start_agent(
            config, env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"}
        )
        try:
            assert link.wait_opened(30)
            base = _until_acknowledged(link)
            link.write(_lines(1_764_000_000_000, 1000), timeout=10)
            wait_for(lambda: _acked(link) == base + 1000, 30, 0.05, "ACKs", link.wait)
            cut_at = time.monotonic()
            cut()  # type: ignore[operator]
            link.write(_lines(1_764_000_010_000, 1000), timeout=10)
            link.wait(3.0)
            held_ack = _acked(link)
            assert held_ack < base + 2000  # the readings after the cut are not acknowledged
            status = run_agent("status", "--json", "--config", str(config))
            samples = scrape(port)
            cpu = psutil.Process(proc.pid).cpu_times()
            link.wait(10.0)
            spent = sum(psutil.Process(proc.pid).cpu_times()[:2]) - sum(cpu[:2])
            assert _acked(link) == held_ack
            restore()  # type: ignore[operator]
            wait_for(lambda: _acked(link) == base + 2000, 60, 0.1, "2000 ACKed", link.wait)
            assert proc.poll() is None  # never exited
            resumed_at = time.monotonic()
        finally:
            assert stop_agent(proc) == 0
            listener.close()
    held = [m for t, m in listener.lines("STATUS=") if cut_at < t < resumed_at]
    assert any("degraded: buffer unwritable" in m and reason in m for m in held), held[-3:]
    pings = [t for t, _ in listener.lines("WATCHDOG=1") if cut_at + 3 < t < resumed_at]
    assert len(pings) >= 5  # still fed while held: a restart cannot make the card writable
    print(f"\nheld: ACK stayed at {held_ack}, {spent:.2f} s of CPU in 10 s")
    assert spent < 1.0  # waiting, not spinning
    assert samples.get(("sleepfed_agent_buffer_unwritable", ())) == 1.0, samples
    if "does not exist" in reason:  # the buffer cannot be read either: exit 4, in one sentence
        assert status.returncode == 4 and reason in status.stderr, status.stderr
        assert len(status.stderr.strip().splitlines()) == 1 and "Traceback" not in status.stderr
    else:
        assert status.returncode == 3, status.stdout + status.stderr
        problems = json.loads(status.stdout)["problems"]
        assert any(reason in p for p in problems), problems
    log = config.with_name("agent.log").read_text()
    assert "buffer unwritable" in log and "buffer writable again" in log
    held = "FROM readings WHERE ts BETWEEN 1764000010 AND 1764000020"
    assert _rows(buffer, f"SELECT COUNT(*) {held}") == 1000  # held, then stored once
    assert _rows(buffer, f"SELECT COUNT(DISTINCT ts) {held}") == 1000
    kept = _rows(
        buffer, "SELECT COUNT(*) FROM readings WHERE ts BETWEEN 1764000000 AND 1764000009.999"
    )
    total = _rows(buffer, "SELECT COUNT(*) FROM readings")
    assert kept == 1000 and total == before + base + 2000


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a loop device needs root")
def test_a_card_remounted_read_only_holds_readings_and_resumes(
    tmp_path: Path, real_buffer: Path, card: tuple[Path, Path]
) -> None:
    mount, image = card
    folder = mount / "sleepfed"

    def kernel_error() -> None:
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(mount)], capture_output=True, text=True
        ).stdout.strip()
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("test\n")
        assert _read_only(mount)

    def mounted_again() -> None:
        # an ext4 error stays read-only until the card is mounted anew, as after a reboot
        subprocess.run(["umount", "-l", str(mount)], check=True)
        # released once no process holds a file on it (the agent closed its buffer): only
        # then is everything it wrote in the image, for e2fsck and the next mount
        wait_for(lambda: not _loop_devices(image), 30, 0.1, "the card's file system released")
        checked = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True)
        _mount(image, mount)
        assert not _read_only(mount), (checked.stdout, Path("/proc/self/mounts").read_text())

    _hold_and_resume(tmp_path, real_buffer, folder, kernel_error, mounted_again, "read-only")


def test_the_buffer_folder_gone_and_back_holds_readings_and_resumes(
    tmp_path: Path, real_buffer: Path
) -> None:
    folder = tmp_path / "state" / "sleepfed"
    away = tmp_path / "state" / "moved"
    _hold_and_resume(
        tmp_path,
        real_buffer,
        folder,
        lambda: folder.rename(away),
        lambda: away.rename(folder),
        "does not exist",
    )
