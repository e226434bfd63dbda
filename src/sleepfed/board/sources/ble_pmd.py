"""Movement from a Polar strap's accelerometer: its PMD stream on a BLE link becomes ``MOV``
readings, one per 30-s epoch of activity counts.

A device configured with ``pmd_acc_hz`` (sleepfed.board.service.config) gets, once its link
is up and heart rate subscribed: indications of the PMD control point and notifications of
the data characteristic on, then the start command (sample rate, 16 bits, range) written with
response and its answer awaited (sleepfed.board.sources.polar_pmd parses both). Each ACC frame
is parsed, its samples (mG) counted in epochs (sleepfed.board.sources.activity_counts), and
every completed epoch becomes one ``MOV`` reading stamped at the epoch's end. Stamps follow
the strap's own sample clock (each frame's timestamp is its last sample's), anchored once per
measurement to the link's clock (the device's Current Time when it offers one, else the
board's) at the first frame: frames that arrive late or in a burst keep their epochs 30 s
apart, and a strap whose clock was never set (an H10 starts at 2019-01-01) still stamps
tonight.

What can go wrong is counted and survived, heart rate going on throughout:

* the device has no PMD service: ``ble_pmd_missing``, heart rate only;
* the start is refused or unanswered: ``ble_pmd_refused`` with the SDK's error name in the
  log (``DEVICE_IN_CHARGER`` when the strap charges), retried after ``PMD_RETRY_SECONDS``;
* no frame for ``PMD_STALL_SECONDS`` while the link stays up (the strap ended the
  measurement, or it is off the skin and asleep): ``ble_pmd_stalled``, and the measurement
  is started again;
* a malformed frame: rejected (``rejected_pmd_<reason>``), the stream goes on;
* a link loss ends the measurement on the strap: the next connection starts a new one, with a
  new epoch counter (its counts start again from a settled filter).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from sleepfed.board.sources import Item, Rejection
from sleepfed.board.sources.activity_counts import EPOCH_SECONDS, EpochCounter
from sleepfed.board.sources.polar_pmd import (
    PMD_CONTROL_POINT,
    PMD_DATA,
    PMD_SERVICE,
    ErrorCode,
    parse_acc_frame,
    parse_control_point_response,
    start_acc_command,
)
from sleepfed.board.sources.protocol import Kind, LineRejected, checked_reading

ANSWER_SECONDS = 5.0  # the control point's answer to a start
PMD_STALL_SECONDS = 10.0  # no frame this long on a live link: the measurement ended
PMD_RETRY_SECONDS = 30.0  # after a refused start
MG_PER_G = 1000.0


class PmdRefused(Exception):
    """The strap did not start its measurement: the error's name, or no answer."""


@dataclass
class PmdStream:
    """One link's accelerometer measurement."""

    sample_rate_hz: int
    range_g: int
    counter: EpochCounter
    answers: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    running: bool = False
    samples: int = 0  # received since the measurement started
    emitted: int = 0  # epochs turned into readings
    last_frame_at: float = 0.0  # monotonic
    anchor: float | None = None  # link clock minus the strap's clock (s), from the first frame
    retry_at: float = 0.0  # monotonic: when a refused start is tried again

    @classmethod
    def new(cls, sample_rate_hz: int, range_g: int) -> PmdStream:
        return cls(sample_rate_hz, range_g, EpochCounter(sample_rate_hz))

    def restart(self) -> None:
        """A new measurement: counts start again from a settled filter."""
        self.counter = EpochCounter(self.sample_rate_hz)
        self.running, self.samples, self.emitted, self.anchor = False, 0, 0, None
        self.last_frame_at = time.monotonic()

    def stalled(self, now: float) -> bool:
        return self.running and now - self.last_frame_at > PMD_STALL_SECONDS


def offers_pmd(client: Any) -> bool:
    return client.services.get_service(PMD_SERVICE) is not None


async def subscribe(client: Any, stream: PmdStream, on_frame: Any) -> None:
    """Indications of the control point (answers into ``stream.answers``) and notifications
    of the data characteristic (``on_frame(bytes)``)."""

    def on_answer(_char: Any, data: bytearray) -> None:
        stream.answers.put_nowait(bytes(data))

    await client.start_notify(PMD_CONTROL_POINT, on_answer)
    await client.start_notify(PMD_DATA, lambda _char, data: on_frame(bytes(data)))


async def start(client: Any, stream: PmdStream) -> None:
    """Start the measurement; raises :class:`PmdRefused` unless the strap measures now."""
    stream.restart()
    while not stream.answers.empty():  # answers to commands before this one
        stream.answers.get_nowait()
    command = start_acc_command(stream.sample_rate_hz, stream.range_g)
    await client.write_gatt_char(PMD_CONTROL_POINT, command, response=True)
    try:
        answer = await asyncio.wait_for(stream.answers.get(), ANSWER_SECONDS)
        response = parse_control_point_response(answer)
    except TimeoutError:
        raise PmdRefused(f"no answer in {ANSWER_SECONDS:.0f}s") from None
    except LineRejected as rejected:
        raise PmdRefused(f"{rejected.reason}: {rejected.detail}") from None
    if response.error not in (ErrorCode.SUCCESS, ErrorCode.ALREADY_IN_STATE):
        raise PmdRefused(response.error.name)
    stream.running = True
    stream.last_frame_at = time.monotonic()


def frame_readings(stream: PmdStream, data: bytes, arrived: float, device: str) -> list[Item]:
    """The ``MOV`` readings of the epochs an ACC frame completes (or its rejection).
    ``arrived``: the frame's time on the link's clock, that of its last sample."""
    try:
        frame = parse_acc_frame(data)
    except LineRejected as rejected:
        return [Rejection(rejected.reason, f"device={device} {rejected.detail}")]
    stream.last_frame_at = time.monotonic()
    if not stream.running:
        return []  # frames of a measurement not (yet) ours: no epoch to place them in
    last_sample = frame.timestamp_ns / 1e9
    if stream.anchor is None:
        stream.anchor = arrived - last_sample
    stream.samples += len(frame.samples)
    items: list[Item] = []
    epoch_samples = stream.sample_rate_hz * EPOCH_SECONDS
    for counts in stream.counter.add(frame.samples / MG_PER_G):
        stream.emitted += 1
        after_end = stream.samples - stream.emitted * epoch_samples
        stamp = stream.anchor + last_sample - after_end / stream.sample_rate_hz
        try:
            items.append(checked_reading(stamp, Kind.MOV, counts))
        except LineRejected as rejected:
            items.append(Rejection(rejected.reason, f"device={device} {rejected.detail}"))
    return items
