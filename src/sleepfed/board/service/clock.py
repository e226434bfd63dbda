"""The board's wall clock, in one place so that a test can make it jump.

The agent reads wall-clock time (night ends, participation windows, heartbeats) only through
:func:`now`; durations use ``time.monotonic()``, which no clock step moves. ``now`` is
``time.time`` itself unless the environment names ``SLEEPFED_CLOCK_OFFSET_FILE`` (tests
only): then the number of seconds written in that file is added, re-read whenever the file
changes, so a test steps the clock of a running agent as NTP or a board without an RTC would.
"""

from __future__ import annotations

import os
import time

OFFSET_FILE_ENV = "SLEEPFED_CLOCK_OFFSET_FILE"


class _SteppedClock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: int | None = None
        self.offset = 0.0

    def __call__(self) -> float:
        try:
            stamp = os.stat(self.path).st_mtime_ns
            if stamp != self.stamp:
                with open(self.path) as file:
                    self.offset = float(file.read().strip() or 0)
                self.stamp = stamp
        except (OSError, ValueError):
            pass  # keep the last offset while the file is being rewritten
        return time.time() + self.offset


_offset_file = os.environ.get(OFFSET_FILE_ENV)
now = _SteppedClock(_offset_file) if _offset_file else time.time
