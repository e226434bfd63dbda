"""What a reading generator of the replay left out, counted while it is iterated."""

from __future__ import annotations

from dataclasses import dataclass, field


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
