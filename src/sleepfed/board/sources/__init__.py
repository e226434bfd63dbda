"""Sensor sources. A source runs in its own thread, turns its device's input into
validated readings or counted rejections, and takes acknowledgements back."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from sleepfed.board.sources.protocol import Reading


@dataclass(frozen=True, slots=True)
class Rejection:
    """A piece of input that was not a valid reading."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """Something that happened to a source (a lost link, a failed connect): counted under
    ``counter`` and logged, but not a rejected reading."""

    counter: str
    detail: str


# What a source hands to the daemon: its name and, in input order, the readings and
# rejections of one read from its device (one call per chunk keeps the per-reading cost low).
Item = Reading | Rejection | SourceEvent
Emit = Callable[[str, list[Item]], None]


class Source(ABC):
    """One sensor input. ``run`` blocks until ``stop`` is set; it must never raise for bad
    input or a vanished device: it counts, logs, reconnects and goes on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = threading.Event()

    @abstractmethod
    def run(self, emit: Emit, stop: threading.Event) -> None: ...

    def acknowledge(self, last_timestamp: float, committed: int) -> None:  # noqa: B027
        """Called after readings from this source were committed. Default: nothing."""
