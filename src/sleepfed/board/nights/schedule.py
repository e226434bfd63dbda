"""Participation windows and night boundaries, in the board's local time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# A night runs from noon of its date to noon of the next day (local time).
NIGHT_STARTS_AT = time(12, 0)


def night_of(timestamp: float, tz: ZoneInfo) -> str:
    """The night (ISO date of its evening) a timestamp belongs to."""
    local = datetime.fromtimestamp(timestamp, tz)
    return (local - timedelta(hours=12)).date().isoformat()


def night_bounds(night: str, tz: ZoneInfo) -> tuple[float, float]:
    """Unix seconds [start, end) of a night."""
    day = date.fromisoformat(night)
    start = datetime.combine(day, NIGHT_STARTS_AT, tz)
    end = datetime.combine(day + timedelta(days=1), NIGHT_STARTS_AT, tz)
    return start.timestamp(), end.timestamp()


def still_waiting(until: float, now: float, longest: float) -> bool:
    """Whether a wait that was to end at ``until`` (wall clock) goes on at ``now``: not if
    ``until`` has passed, nor if it lies more than ``longest`` (the whole wait) ahead, which
    only a clock stepped back since can explain."""
    return now < until <= now + longest


_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?-(\d{1,2}):(\d{2})(?::(\d{2}))?$")


@dataclass(frozen=True)
class ParticipationWindow:
    """A daily window ``HH:MM[:SS]-HH:MM[:SS]`` (may cross midnight), or ``always``."""

    start: time | None
    end: time | None

    @classmethod
    def parse(cls, text: str) -> ParticipationWindow:
        text = text.strip()
        if text == "always":
            return cls(None, None)
        match = _WINDOW.match(text)
        if not match:
            raise ValueError(f"expected 'HH:MM-HH:MM' or 'always', got {text!r}")
        h1, m1, s1, h2, m2, s2 = (int(g or 0) for g in match.groups())
        if h1 > 23 or h2 > 24 or max(m1, m2, s1, s2) > 59 or (h2 == 24 and (m2 or s2)):
            raise ValueError(f"no such time of day in {text!r}")
        start, end = time(h1, m1, s1), time(0, 0) if h2 == 24 else time(h2, m2, s2)
        if start == end:
            raise ValueError(f"empty window {text!r}")
        return cls(start, end)

    def __str__(self) -> str:
        if self.start is None or self.end is None:
            return "always"
        return f"{self.start:%H:%M:%S}-{self.end:%H:%M:%S}"

    def current(self, now: float, tz: ZoneInfo) -> tuple[float, float] | None:
        """(start, end) of the window that is open at ``now``, or None."""
        local = datetime.fromtimestamp(now, tz)
        if self.start is None or self.end is None:
            # "always" is the whole day: a window that ended in a refusal is retried tomorrow.
            midnight = datetime.combine(local.date(), time(0, 0), tz)
            return midnight.timestamp(), datetime.combine(
                local.date() + timedelta(days=1), time(0, 0), tz
            ).timestamp()
        for offset in (-1, 0):
            day = local.date() + timedelta(days=offset)
            start = datetime.combine(day, self.start, tz)
            end_day = day if self.end > self.start else day + timedelta(days=1)
            end = datetime.combine(end_day, self.end, tz)
            if start <= local < end:
                return start.timestamp(), end.timestamp()
        return None

    def next_start(self, now: float, tz: ZoneInfo) -> float:
        """When the next window opens (``now`` if one is open)."""
        if self.current(now, tz) is not None or self.start is None:
            return now
        local = datetime.fromtimestamp(now, tz)
        candidate = datetime.combine(local.date(), self.start, tz)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), self.start, tz)
        return candidate.timestamp()
