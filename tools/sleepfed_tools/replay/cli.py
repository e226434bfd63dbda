"""The ``sleepfed-replay`` command line: pick the data set and subject, open the link (a PTY,
a serial device, or a BLE wearable on a BlueZ stand-in) and replay the night into it."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sleepfed.board.sources.ble_parsing import HEART_RATE_MEASUREMENT
from sleepfed.board.sources.protocol import Reading
from sleepfed.model.walch import walch_subjects
from sleepfed_tools.replay.links import PtyLink, SerialLink
from sleepfed_tools.replay.mmash import mmash_readings, mmash_users
from sleepfed_tools.replay.pacing import replay
from sleepfed_tools.replay.stats import ReplayStats
from sleepfed_tools.replay.walch_ble import replay_ble, walch_ble_notifications
from sleepfed_tools.replay.walch_serial import walch_labels, walch_readings

if TYPE_CHECKING:
    from sleepfed_tools.bluez_standin import BlueZStandIn

DEFAULT_RATE = 2000.0
NOTES = {
    "walch": "note: walch2019 has no light channel; no LUX readings emitted",
    "mmash": "note: mmash has no light channel and no PSG labels; none emitted",
}


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
    if fmt == "mmash" and not subject.startswith("user_"):
        subject = f"user_{subject}"
    night_start = args.night_start if args.night_start is not None else default_night_start()
    stats = ReplayStats()
    try:
        readings = _checked_readings(fmt, data_dir, subject, night_start, stats)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {fmt} subject {subject}: {exc}", file=sys.stderr)
        return 2
    if args.ble:
        if fmt != "walch":
            parser.error("--ble replays walch2019 subjects")
        return _main_ble(args, data_dir, subject, night_start)
    if not (args.pty or args.port):
        parser.error("one of --pty, --port or --ble is required")
    link = _open_link(args)
    if link is None:
        return 2
    print(NOTES[fmt], flush=True)
    try:
        _wait_for_reader(link, args.wait_open)
        sent = _send(readings, link, args)
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


def _checked_readings(
    fmt: str, data_dir: Path, subject: str, night_start: float, stats: ReplayStats
) -> Iterator[Reading]:
    """The subject's readings, the first one already read: a missing subject fails here,
    before any link is opened."""
    if fmt == "walch":
        readings = walch_readings(data_dir, subject, night_start, stats)
    else:
        readings = mmash_readings(data_dir, subject, night_start, stats)
    first = next(readings, None)
    return readings if first is None else itertools.chain([first], readings)


def _open_link(args: argparse.Namespace) -> PtyLink | SerialLink | None:
    """A new PTY (its path printed for the agent) or the ``--port`` device; None (reported)
    when the device cannot be opened."""
    if args.pty:
        link = PtyLink()
        print(f"PTY {link.device_path}", flush=True)
        return link
    try:
        return SerialLink(args.port)
    except Exception as exc:
        print(f"error: cannot open {args.port}: {exc}", file=sys.stderr)
        return None


def _wait_for_reader(link: PtyLink | SerialLink, wait_open: float) -> None:
    """With ``--wait-open``, hold the first line back until the agent opened the PTY: its
    serial driver discards what was written before."""
    if not isinstance(link, PtyLink) or wait_open <= 0:
        return
    if link.wait_opened(wait_open):
        print(f"{link.device_path} opened; sending", flush=True)
    else:
        print(
            f"warning: nobody opened {link.device_path} in {wait_open:g} s; sending anyway",
            file=sys.stderr,
            flush=True,
        )


def _send(readings: Iterator[Reading], link: PtyLink | SerialLink, args: argparse.Namespace) -> int:
    """Replay the readings into the link, then keep it open ``--linger`` seconds for ACKs."""
    sent = replay(
        readings,
        link.write,
        args.rate if args.rate > 0 else None,
        with_checksum=args.checksum,
        drain=link.drain,
        limit=args.limit,
    )
    if args.linger > 0:
        link.wait(args.linger)
    link.drain()
    return sent


def _main_ble(args: argparse.Namespace, data_dir: Path, subject: str, night_start: float) -> int:
    """``--ble``: the night as notifications of a wearable on a private BlueZ stand-in; the
    PSG labels, if a PTY or port is given, over serial as a reference device sends them."""
    # Imported here: the stand-in needs dbus-python and python-dbusmock, only --ble uses it.
    from sleepfed_tools.bluez_standin import BlueZStandIn

    address = args.ble.upper()
    link: PtyLink | SerialLink | None = None
    with BlueZStandIn() as standin:
        _add_wearable(standin, address)
        if args.pty or args.port:
            link = PtyLink() if args.pty else SerialLink(args.port)
            if isinstance(link, PtyLink):
                print(f"PTY {link.device_path} (reference labels)", flush=True)
        print("note: walch2019 has no light channel; no illuminance notifications sent", flush=True)
        try:
            sent, labels = _send_ble(standin, address, link, args, data_dir, subject, night_start)
        except KeyboardInterrupt:
            return 130
        finally:
            if link is not None:
                link.close()
    print(f"replayed {sent} BLE notifications and {labels} labels of walch subject {subject}")
    return 0


def _add_wearable(standin: BlueZStandIn, address: str) -> None:
    """A heart-rate wearable with movement and Current Time at ``address``, advertising."""
    standin.add_heart_rate_sensor(
        address, with_illuminance=False, with_movement=True, with_current_time=True
    )
    standin.advertise(address)
    print(f"DBUS_SYSTEM_BUS_ADDRESS={standin.bus_address}", flush=True)
    print(f"BLE wearable {address}: Heart Rate 0x2A37, movement, Current Time", flush=True)


def _send_ble(
    standin: BlueZStandIn,
    address: str,
    link: PtyLink | SerialLink | None,
    args: argparse.Namespace,
    data_dir: Path,
    subject: str,
    night_start: float,
) -> tuple[int, int]:
    """Once the agent subscribed: the labels over the link (all of them first), then the
    notifications; returns ``(notifications, labels)`` sent."""
    wait = max(args.wait_open, 60.0)
    standin.wait_until_notifying(address, HEART_RATE_MEASUREMENT, timeout=wait)
    labels = 0
    if link is not None:
        labels = replay(
            walch_labels(data_dir, subject, night_start), link.write, None, drain=link.drain
        )
    sent = replay_ble(
        walch_ble_notifications(data_dir, subject, night_start),
        lambda uuid, value: standin.notify(address, uuid, value),
        lambda uuid: standin.wait_until_notifying(address, uuid, timeout=60),
    )
    if args.linger > 0:
        time.sleep(args.linger)
    return sent, labels
