"""Replay a real subject's recording over sleepfed's serial line protocol (``SF1``).

The replay turns one night of a public data set into the readings a sensor would send and
writes them, at an accelerated rate, into a real serial device or a pseudo-terminal that
the agent opens with pyserial like any sensor port::

    sleepfed-replay --data ../shared/data/walch2019 --subject 1066528 --pty

Two data sets (see ``../shared/data/README.md``), one module each: ``walch_serial`` (Walch
2019 as serial readings, with its PSG labels), ``walch_ble`` (the same night as the
notifications of a BLE wearable) and ``mmash`` (MMASH, no PSG labels). ``links`` holds the
PTY and serial links, ``pacing`` the replay loop, ``cli`` the command line. Neither set has a
light channel; the CLI says so on stdout.

The names below are the tool's API, importable from ``sleepfed_tools.replay``.
"""

from sleepfed_tools.replay.cli import (
    DEFAULT_RATE,
    NOTES,
    build_parser,
    default_night_start,
    guess_format,
    main,
)
from sleepfed_tools.replay.links import (
    OPEN_SETTLE_SECONDS,
    AckTracker,
    PtyLink,
    SerialLink,
    opened_elsewhere,
)
from sleepfed_tools.replay.mmash import (
    MMASH_DEFAULT_WINDOW,
    MMASH_MARGIN_S,
    mmash_night_window,
    mmash_readings,
    mmash_users,
)
from sleepfed_tools.replay.pacing import DEFAULT_CHUNK, replay
from sleepfed_tools.replay.stats import ReplayStats
from sleepfed_tools.replay.walch_ble import (
    BLE_BPM_OFFSET,
    BLE_BPM_SCALE,
    replay_ble,
    walch_ble_bpm,
    walch_ble_notifications,
)
from sleepfed_tools.replay.walch_serial import (
    WALCH_HR_OFFSETS,
    WALCH_LBL_OFFSET,
    WALCH_MOV_OFFSET,
    WALCH_RR_DELAY,
    reference_efficiency_walch,
    walch_bpm,
    walch_labels,
    walch_readings,
)

__all__ = [
    "BLE_BPM_OFFSET",
    "BLE_BPM_SCALE",
    "DEFAULT_CHUNK",
    "DEFAULT_RATE",
    "MMASH_DEFAULT_WINDOW",
    "MMASH_MARGIN_S",
    "NOTES",
    "OPEN_SETTLE_SECONDS",
    "WALCH_HR_OFFSETS",
    "WALCH_LBL_OFFSET",
    "WALCH_MOV_OFFSET",
    "WALCH_RR_DELAY",
    "AckTracker",
    "PtyLink",
    "ReplayStats",
    "SerialLink",
    "build_parser",
    "default_night_start",
    "guess_format",
    "main",
    "mmash_night_window",
    "mmash_readings",
    "mmash_users",
    "opened_elsewhere",
    "reference_efficiency_walch",
    "replay",
    "replay_ble",
    "walch_ble_bpm",
    "walch_ble_notifications",
    "walch_bpm",
    "walch_labels",
    "walch_readings",
]
