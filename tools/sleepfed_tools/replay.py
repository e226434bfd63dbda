"""Replay a real subject's recording over sleepfed's serial line protocol (``SF1``).

The replay turns one night of a public data set into the readings a sensor would send and
writes them, at an accelerated rate, into a real serial device or a pseudo-terminal that
the agent opens with pyserial like any sensor port::

    sleepfed-replay --data ../shared/data/walch2019 --subject 1066528 --pty

Two data sets (see ``../shared/data/README.md``):

* **walch2019**: per 30-s epoch ``e`` starting at ``t_e = night_start + 30 e``: one ``MOV``
  at ``t_e + 1`` carrying ``count_feature[e]`` (so the device's per-epoch activity sum is
  exactly Walch's feature), six identical ``HR`` at ``t_e + 2, 7, ..., 27`` carrying
  ``60 + 10 hr_feature[e]`` bpm (an affine map, exact after the night's z-score), one ``RR``
  consistent with that bpm 0.5 s after each ``HR``, and the PSG stage as ``LBL`` at
  ``t_e + 15``. Epochs are laid out back to back, as the project's Walch benchmark treats them.
* **mmash**: the in-bed part of the 24-h recording (first In Bed - 30 min .. last Out Bed
  + 30 min from ``sleep.csv``; 22:00 .. 08:00 when there is no bout): every beat as ``RR``
  (beats sharing a second spread evenly inside it), every 1-Hz actigraph row as ``MOV``
  (Vector Magnitude) and, when plausible, ``HR``. Clock offsets are kept, relative to the
  first emitted reading, which lands on ``night_start``.

Neither set has a light channel, and MMASH has no PSG labels; the CLI says so on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import os
import pty
import select
import struct
import sys
import time
import tty
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sleepfed.board.sources.protocol import VALUE_RANGES, Kind, Reading, format_reading, parse_ack
from sleepfed.model.features import (
    EPOCH_SECONDS,
    WALCH_FILES,
    load_walch_subject,
    reference_efficiency,
    walch_subjects,
)

WALCH_HR_OFFSETS = (2.0, 7.0, 12.0, 17.0, 22.0, 27.0)
WALCH_RR_DELAY = 0.5
WALCH_MOV_OFFSET = 1.0
WALCH_LBL_OFFSET = 15.0
# One epoch's readings, (offset from the epoch start, kind), in time order.
_WALCH_EPOCH_TEMPLATE: tuple[tuple[float, Kind], ...] = tuple(
    sorted(
        [(WALCH_MOV_OFFSET, Kind.MOV), (WALCH_LBL_OFFSET, Kind.LBL)]
        + [(o, Kind.HR) for o in WALCH_HR_OFFSETS]
        + [(o + WALCH_RR_DELAY, Kind.RR) for o in WALCH_HR_OFFSETS]
    )
)

MMASH_MARGIN_S = 30 * 60
MMASH_DEFAULT_WINDOW = (22 * 3600, 86400 + 8 * 3600)  # 22:00 day 1 .. 08:00 day 2
# Inside one second of MMASH data: MOV at +0.00, HR at +0.02, beats spread over [+0.05, +0.95).
_MMASH_HR_FRACTION = 0.02
_MMASH_BEAT_START, _MMASH_BEAT_SPAN = 0.05, 0.9

DEFAULT_RATE = 2000.0
DEFAULT_CHUNK = 256
NOTES = {
    "walch": "note: walch2019 has no light channel; no LUX readings emitted",
    "mmash": "note: mmash has no light channel and no PSG labels; none emitted",
}


@dataclass
class ReplayStats:
    """What a reading generator left out, by reason (filled while it is iterated)."""

    skipped: dict[str, int] = field(default_factory=dict)
    clipped: int = 0

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


# -- Walch 2019 --------------------------------------------------------------------------------
def _read_column(path: Path) -> list[float]:
    with path.open() as handle:
        return [float(line) for line in handle if line.strip()]


def _walch_columns(data_dir: str | Path, subject: str) -> dict[str, list[float]]:
    folder = Path(data_dir)
    columns = {name: _read_column(folder / f"{subject}_{name}.out") for name in WALCH_FILES}
    n = min(len(c) for c in columns.values())
    return {name: c[:n] for name, c in columns.items()}


def walch_bpm(hr_feature: float) -> float:
    """The bpm carried for Walch's normalised heart-rate feature (affine, clipped to 25..250)."""
    low, high = VALUE_RANGES[Kind.HR]
    return min(max(60.0 + 10.0 * hr_feature, low), high)


def walch_readings(
    data_dir: str | Path,
    subject: str,
    night_start: float,
    stats: ReplayStats | None = None,
) -> Iterator[Reading]:
    """The readings of one Walch 2019 subject, in strictly increasing timestamp order."""
    stats = stats if stats is not None else ReplayStats()
    columns = _walch_columns(data_dir, str(subject))
    counts, hrs, stages = columns["count_feature"], columns["hr_feature"], columns["psg_labels"]
    mov_low, mov_high = VALUE_RANGES[Kind.MOV]
    lbl_high = VALUE_RANGES[Kind.LBL][1]
    for e, (count, hr_feature, stage) in enumerate(zip(counts, hrs, stages, strict=True)):
        t_e = night_start + EPOCH_SECONDS * e
        bpm = walch_bpm(hr_feature)
        if bpm != 60.0 + 10.0 * hr_feature:
            stats.clipped += 1
        rr = 60000.0 / bpm
        label = round(stage)
        for offset, kind in _WALCH_EPOCH_TEMPLATE:
            if kind is Kind.MOV:
                if mov_low <= count <= mov_high:
                    yield Reading(t_e + offset, Kind.MOV, count)
                else:
                    stats.skip("mov_out_of_range")
            elif kind is Kind.HR:
                yield Reading(t_e + offset, Kind.HR, bpm)
            elif kind is Kind.RR:
                yield Reading(t_e + offset, Kind.RR, rr)
            elif 0 <= label <= lbl_high:
                yield Reading(t_e + offset, Kind.LBL, float(label))
            else:
                stats.skip("unlabelled_epoch")


# -- Walch 2019 as a BLE wearable ----------------------------------------------------------------
# Over BLE the heart rate is a whole number of bpm, so the replay spreads Walch's normalised
# feature wider than over serial (z-scores are unchanged by the affine map; the rounding to
# whole bpm is the only loss: at most 0.0125 in hr_feature units).
BLE_BPM_OFFSET, BLE_BPM_SCALE = 50.0, 40.0


def walch_ble_bpm(hr_feature: float) -> int:
    low, high = VALUE_RANGES[Kind.HR]
    return round(min(max(BLE_BPM_OFFSET + BLE_BPM_SCALE * hr_feature, low), high))


def walch_ble_notifications(
    data_dir: str | Path, subject: str, night_start: float, tz: dt.tzinfo = dt.UTC
) -> Iterator[tuple[str, bytes]]:
    """``(characteristic UUID, value)`` notifications a BLE wearable would send for one
    Walch night: per epoch, Current Time then the movement counts (float32) at +1 s, and
    Current Time then a Heart Rate Measurement (contact detected, one RR interval) at +2 s.
    The PSG labels are not part of it: a reference device sends them (``walch_labels``)."""
    from sleepfed.board.sources.ble_parsing import (
        CURRENT_TIME,
        HEART_RATE_MEASUREMENT,
        MOVEMENT,
        format_current_time,
    )

    series = load_walch_subject(data_dir, str(subject))
    for e, (count, hr_feature) in enumerate(zip(series.activity, series.hr, strict=True)):
        t_e = night_start + EPOCH_SECONDS * e
        yield CURRENT_TIME, format_current_time(t_e + 1.0, tz)
        yield MOVEMENT, struct.pack("<f", float(count))
        bpm = walch_ble_bpm(float(hr_feature))
        rr = round(60.0 / bpm * 1024)
        flags = 0x06 | 0x10 | (0x01 if bpm > 255 else 0)
        value = bytes([flags]) + bpm.to_bytes(2 if bpm > 255 else 1, "little")
        yield CURRENT_TIME, format_current_time(t_e + 2.0, tz)
        yield HEART_RATE_MEASUREMENT, value + struct.pack("<H", rr)


def walch_labels(data_dir: str | Path, subject: str, night_start: float) -> Iterator[Reading]:
    """Only the PSG stage lines of a Walch night, as a reference device sends them."""
    return (r for r in walch_readings(data_dir, subject, night_start) if r.kind is Kind.LBL)


def replay_ble(
    notifications: Iterable[tuple[str, bytes]],
    notify: Callable[[str, bytes], bool],
    wait_notifying: Callable[[str], None],
) -> int:
    """Push notifications through a BLE peripheral (the BlueZ stand-in). ``notify`` returns
    False when the agent is not subscribed (e.g. the link dropped): then wait until it is
    again (``wait_notifying`` raises on time-out) and resend, so nothing is skipped."""
    sent = 0
    for uuid, value in notifications:
        while not notify(uuid, value):
            wait_notifying(uuid)
        sent += 1
    return sent


def reference_efficiency_walch(data_dir: str | Path, subject: str) -> float:
    """Share of the subject's labelled PSG epochs that are asleep (stage > 0)."""
    efficiency = reference_efficiency(load_walch_subject(data_dir, str(subject)))
    if efficiency is None:
        raise ValueError(f"walch subject {subject} has too few labelled epochs")
    return efficiency


# -- MMASH ---------------------------------------------------------------------------------------
def _mmash_user_dir(data_dir: str | Path, user: str) -> Path:
    name = str(user)
    if not name.startswith("user_"):
        name = f"user_{name}"
    folder = Path(data_dir) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no MMASH user folder {folder}")
    return folder


def mmash_users(data_dir: str | Path) -> list[str]:
    folders = [p for p in Path(data_dir).glob("user_*") if (p / "RR.csv").exists()]
    return [p.name for p in sorted(folders, key=lambda p: int(p.name.split("_")[1]))]


def _mmash_day(text: str) -> int:
    day = int(float(text))
    return 2 if day == -29 else day  # users 8 and 9 write day 2 as -29


def _clock_seconds(text: str) -> int:
    parts = [int(p) for p in text.strip().split(":")]
    while len(parts) < 3:
        parts.append(0)
    hours, minutes, seconds = parts[:3]
    return hours * 3600 + minutes * 60 + seconds


def _recording_second(day: int, clock: str) -> int:
    """Seconds since 00:00 of the recording's first day (day 1)."""
    return (day - 1) * 86400 + _clock_seconds(clock)


def mmash_night_window(data_dir: str | Path, user: str) -> tuple[int, int]:
    """``(start, end)`` in seconds since 00:00 of day 1: the in-bed span padded by 30 min."""
    folder = _mmash_user_dir(data_dir, user)
    bouts: list[tuple[int, int]] = []
    with (folder / "sleep.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not (row.get("In Bed Time") or "").strip():
                continue
            start = _recording_second(_mmash_day(row["In Bed Date"]), row["In Bed Time"])
            end = _recording_second(_mmash_day(row["Out Bed Date"]), row["Out Bed Time"])
            if end < start:  # out-of-bed day written one too low (users 3, 5, 13, ...)
                end += 86400
            bouts.append((start, end))
    if not bouts:  # user_11: no sleep bout
        return MMASH_DEFAULT_WINDOW
    return min(b[0] for b in bouts) - MMASH_MARGIN_S, max(b[1] for b in bouts) + MMASH_MARGIN_S


def mmash_readings(
    data_dir: str | Path,
    user: str,
    night_start: float,
    stats: ReplayStats | None = None,
) -> Iterator[Reading]:
    """The night-window readings of one MMASH user, in strictly increasing timestamp order."""
    stats = stats if stats is not None else ReplayStats()
    folder = _mmash_user_dir(data_dir, user)
    start, end = mmash_night_window(data_dir, user)
    events: list[tuple[float, Kind, float]] = []  # (recording seconds, kind, value)

    rr_low, rr_high = VALUE_RANGES[Kind.RR]
    beats_by_second: dict[int, list[float]] = {}
    with (folder / "RR.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            second = _recording_second(_mmash_day(row["day"]), row["time"])
            if start <= second < end:
                beats_by_second.setdefault(second, []).append(float(row["ibi_s"]) * 1000.0)
    for second, beats in beats_by_second.items():
        step = _MMASH_BEAT_SPAN / len(beats)
        for i, ms in enumerate(beats):
            if rr_low <= ms <= rr_high:
                events.append((second + _MMASH_BEAT_START + i * step, Kind.RR, ms))
            else:
                stats.skip("rr_out_of_range")

    hr_low, hr_high = VALUE_RANGES[Kind.HR]
    mov_low, mov_high = VALUE_RANGES[Kind.MOV]
    with (folder / "Actigraph.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            second = _recording_second(_mmash_day(row["day"]), row["time"])
            if not start <= second < end:
                continue
            magnitude = float(row["Vector Magnitude"])
            if mov_low <= magnitude <= mov_high:
                events.append((float(second), Kind.MOV, magnitude))
            else:
                stats.skip("mov_out_of_range")
            bpm = float(row["HR"])
            if hr_low <= bpm <= hr_high:
                events.append((second + _MMASH_HR_FRACTION, Kind.HR, bpm))
            else:
                stats.skip("hr_out_of_range")

    events.sort(key=lambda ev: ev[0])
    if not events:
        return
    first = events[0][0]
    for seconds, kind, value in events:
        yield Reading(night_start + (seconds - first), kind, value)


# -- links ---------------------------------------------------------------------------------------
class AckTracker:
    """Splits bytes coming back from the agent into lines and keeps the latest ACK."""

    def __init__(self) -> None:
        self._buffer = b""
        self.last_ack: tuple[float, int] | None = None
        self.acks = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                ack = parse_ack(line)
            except ValueError:
                ack = None
            if ack is not None:
                self.last_ack = ack
                self.acks += 1
        if len(self._buffer) > 4096:  # garbage without newlines
            self._buffer = self._buffer[-256:]


OPEN_SETTLE_SECONDS = 0.5


def opened_elsewhere(device_path: str) -> bool:
    """True if a process other than this one holds ``device_path`` open (Linux /proc)."""
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == me:
            continue
        with contextlib.suppress(OSError):  # gone, or not ours to look at
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == device_path:
                        return True
    return False


class PtyLink:
    """A pseudo-terminal pair: the replay writes on the master, the agent opens ``device_path``.

    The slave fd stays open for the link's lifetime, so the device path stays valid while the
    agent opens and closes it. The master is non-blocking; :meth:`write` waits (draining ACKs)
    while the kernel buffer is full, so a slow reader slows the replay down.
    """

    def __init__(self) -> None:
        self.master_fd, self.slave_fd = pty.openpty()
        tty.setraw(self.master_fd)
        tty.setraw(self.slave_fd)
        os.set_blocking(self.master_fd, False)
        self.device_path = os.ttyname(self.slave_fd)
        self.acks = AckTracker()
        self._closed = False

    @property
    def last_ack(self) -> tuple[float, int] | None:
        return self.acks.last_ack

    def drain(self) -> int:
        """Read whatever the agent wrote back (ACKs); returns the number of bytes read."""
        total = 0
        while True:
            try:
                data = os.read(self.master_fd, 4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EIO: no slave open (cannot happen while we hold it)
                break
            if not data:
                break
            total += len(data)
            self.acks.feed(data)
        return total

    def write(self, data: bytes, timeout: float | None = None) -> None:
        view = memoryview(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        while view:
            try:
                n = os.write(self.master_fd, view)
                view = view[n:]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            self.drain()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"pty {self.device_path}: nobody reads ({len(view)} bytes left)")
            select.select([self.master_fd], [self.master_fd], [], 0.05)
        self.drain()

    def wait(self, seconds: float) -> None:
        """Keep the link open for ``seconds``, recording ACKs meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([self.master_fd], [], [], min(left, 0.1))
            self.drain()

    def wait_opened(self, seconds: float, settle: float = OPEN_SETTLE_SECONDS) -> bool:
        """Wait up to ``seconds`` for another process (the agent) to open the device, then
        ``settle`` more: pyserial discards the input queue right after it opens a port, so a
        line written at that moment would be lost. False if nobody opened it in time."""
        deadline = time.monotonic() + seconds
        while not opened_elsewhere(self.device_path):
            if time.monotonic() >= deadline:
                return False
            self.wait(0.1)
        self.wait(settle)
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.drain()
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> PtyLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialLink:
    """An existing serial device or PTY path, written with pyserial."""

    def __init__(self, path: str, baudrate: int = 115200) -> None:
        import serial  # pyserial, a project dependency

        self.device_path = path
        self._port = serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=None)
        self.acks = AckTracker()

    @property
    def last_ack(self) -> tuple[float, int] | None:
        return self.acks.last_ack

    def drain(self) -> int:
        waiting = self._port.in_waiting
        if waiting:
            data = self._port.read(waiting)
            self.acks.feed(data)
            return len(data)
        return 0

    def write(self, data: bytes) -> None:
        self._port.write(data)
        self.drain()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while deadline - time.monotonic() > 0:
            self.drain()
            time.sleep(0.05)
        self.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.drain()
        self._port.close()


# -- replay --------------------------------------------------------------------------------------
def replay(
    readings: Iterable[Reading],
    write: Callable[[bytes], None],
    rate: float | None,
    *,
    with_checksum: bool = False,
    drain: Callable[[], object] | None = None,
    limit: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write ``readings`` as protocol lines; returns how many were written.

    ``rate`` is readings per second (None: as fast as the reader takes them). Lines go out
    in chunks (about 50 per second when paced); ``drain`` runs between chunks so that the
    agent's ACKs are read and it never blocks writing them.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    per_chunk = chunk_size if rate is None else max(1, min(chunk_size, int(rate / 50.0)))
    started = clock()
    sent = 0
    pending: list[bytes] = []

    def flush() -> None:
        nonlocal sent
        if not pending:
            return
        write(b"".join(pending))
        sent += len(pending)
        pending.clear()
        if drain is not None:
            drain()
        if rate is not None:
            ahead = started + sent / rate - clock()
            if ahead > 0:
                sleep(ahead)

    for reading in readings:
        if limit is not None and sent + len(pending) >= limit:
            break
        pending.append(format_reading(reading, with_checksum=with_checksum))
        if len(pending) >= per_chunk:
            flush()
    flush()
    return sent


# -- CLI -----------------------------------------------------------------------------------------
def default_night_start(now: dt.datetime | None = None) -> float:
    """22:00 UTC on the evening of the latest night that has already ended (nights end at
    noon), as Unix seconds: the agent treats the replayed night as finished."""
    now = now or dt.datetime.now(dt.UTC)
    evening = (now - dt.timedelta(hours=12)).date() - dt.timedelta(days=1)
    return dt.datetime.combine(evening, dt.time(22, 0), tzinfo=dt.UTC).timestamp()


def guess_format(data_dir: Path) -> str:
    if walch_subjects(data_dir):
        return "walch"
    if mmash_users(data_dir):
        return "mmash"
    raise ValueError(f"{data_dir}: neither a walch2019 nor an mmash folder")


def _resolve_data(data_dir: Path, fmt: str | None) -> tuple[Path, str]:
    """Accept the data set folder itself or the shared data root holding both sets."""
    subfolders = {"walch": "walch2019", "mmash": "mmash"}
    with contextlib.suppress(ValueError):
        guessed = guess_format(data_dir)
        if fmt is None or fmt == guessed:
            return data_dir, guessed
    for name in [fmt] if fmt else ["walch", "mmash"]:
        candidate = data_dir / subfolders[name]
        if candidate.is_dir():
            return candidate, name
    raise ValueError(f"{data_dir}: no {fmt or 'walch2019/mmash'} data found")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sleepfed-replay",
        description="Replay a real recording (Walch 2019 or MMASH) as SF1 serial lines.",
    )
    parser.add_argument("--data", required=True, type=Path, help="walch2019 or mmash folder")
    parser.add_argument("--subject", help="subject id (walch) or user (mmash: 3 or user_3)")
    parser.add_argument("--format", choices=("walch", "mmash"), help="default: from --data")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--pty", action="store_true", help="create a PTY and print its path")
    target.add_argument("--port", help="write into this existing serial device or PTY")
    parser.add_argument(
        "--wait-open",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --pty: wait up to this long for the agent to open it before sending "
        "(readings written before it opens would be discarded by its serial driver)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help="readings per second; 0 = as fast as possible",
    )
    parser.add_argument(
        "--night-start",
        type=float,
        metavar="EPOCH",
        help="Unix time of the first reading (default: yesterday 22:00 UTC)",
    )
    parser.add_argument("--checksum", action="store_true", help="append NMEA checksums")
    parser.add_argument(
        "--linger",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="keep the link open this long after the last reading",
    )
    parser.add_argument("--limit", type=int, help="stop after this many readings")
    parser.add_argument(
        "--ble",
        metavar="ADDRESS",
        help="walch only: start a BlueZ stand-in on a private system bus with a heart-rate "
        "wearable at ADDRESS and send the night as its BLE notifications (heart rate, RR, "
        "movement, Current Time); the PSG labels go to --pty/--port, if given",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        data_dir, fmt = _resolve_data(args.data, args.format)
    except ValueError as exc:
        parser.error(str(exc))
    subjects = walch_subjects(data_dir) if fmt == "walch" else mmash_users(data_dir)
    subject = args.subject or subjects[0]
    night_start = args.night_start if args.night_start is not None else default_night_start()
    stats = ReplayStats()
    try:
        if fmt == "walch":
            readings: Iterator[Reading] = walch_readings(data_dir, subject, night_start, stats)
        else:
            readings = mmash_readings(data_dir, subject, night_start, stats)
            subject = subject if subject.startswith("user_") else f"user_{subject}"
        first = next(readings, None)  # fail early on a missing subject
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {fmt} subject {subject}: {exc}", file=sys.stderr)
        return 2

    def all_readings() -> Iterator[Reading]:
        if first is not None:
            yield first
        yield from readings

    if args.ble:
        if fmt != "walch":
            parser.error("--ble replays walch2019 subjects")
        return _main_ble(args, data_dir, subject, night_start)
    if not (args.pty or args.port):
        parser.error("one of --pty, --port or --ble is required")

    link: PtyLink | SerialLink
    if args.pty:
        link = PtyLink()
        print(f"PTY {link.device_path}", flush=True)
    else:
        try:
            link = SerialLink(args.port)
        except Exception as exc:
            print(f"error: cannot open {args.port}: {exc}", file=sys.stderr)
            return 2
    print(NOTES[fmt], flush=True)
    try:
        if isinstance(link, PtyLink) and args.wait_open > 0:
            if link.wait_opened(args.wait_open):
                print(f"{link.device_path} opened; sending", flush=True)
            else:
                print(
                    f"warning: nobody opened {link.device_path} in {args.wait_open:g} s; "
                    "sending anyway",
                    file=sys.stderr,
                    flush=True,
                )
        sent = replay(
            all_readings(),
            link.write,
            args.rate if args.rate > 0 else None,
            with_checksum=args.checksum,
            drain=link.drain,
            limit=args.limit,
        )
        if args.linger > 0:
            link.wait(args.linger)
        link.drain()
    except KeyboardInterrupt:
        return 130
    finally:
        ack = link.last_ack
        link.close()
    ack_text = f"ts={ack[0]:.3f} count={ack[1]}" if ack else "ts=none count=0"
    print(
        f"replayed {sent} readings of {fmt} subject {subject} (skipped {stats.total_skipped}); "
        f"last ACK {ack_text}",
        flush=True,
    )
    return 0


def _main_ble(args: argparse.Namespace, data_dir: Path, subject: str, night_start: float) -> int:
    from sleepfed.board.sources.ble_parsing import HEART_RATE_MEASUREMENT
    from sleepfed_tools.bluez_standin import BlueZStandIn

    address = args.ble.upper()
    link: PtyLink | SerialLink | None = None
    with BlueZStandIn() as standin:
        standin.add_heart_rate_sensor(
            address, with_illuminance=False, with_movement=True, with_current_time=True
        )
        standin.advertise(address)
        print(f"DBUS_SYSTEM_BUS_ADDRESS={standin.bus_address}", flush=True)
        print(f"BLE wearable {address}: Heart Rate 0x2A37, movement, Current Time", flush=True)
        if args.pty or args.port:
            link = PtyLink() if args.pty else SerialLink(args.port)
            if isinstance(link, PtyLink):
                print(f"PTY {link.device_path} (reference labels)", flush=True)
        print("note: walch2019 has no light channel; no illuminance notifications sent", flush=True)
        try:
            wait = max(args.wait_open, 60.0)
            standin.wait_until_notifying(address, HEART_RATE_MEASUREMENT, timeout=wait)
            labels = 0
            if link is not None:
                labels = replay(
                    walch_labels(data_dir, subject, night_start),
                    link.write,
                    None,
                    drain=link.drain,
                )
            sent = replay_ble(
                walch_ble_notifications(data_dir, subject, night_start),
                lambda uuid, value: standin.notify(address, uuid, value),
                lambda uuid: standin.wait_until_notifying(address, uuid, timeout=60),
            )
            if args.linger > 0:
                time.sleep(args.linger)
        except KeyboardInterrupt:
            return 130
        finally:
            if link is not None:
                link.close()
    print(f"replayed {sent} BLE notifications and {labels} labels of walch subject {subject}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
