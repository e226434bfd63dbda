"""The hostile-party suite: every test here is an attack on one of sleepfed's boundaries,
made from outside with the tools an attacker has. Each records one row (attack, expected,
seen) through the ``attack`` fixture; the session ends with one table of all rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class AttackRow:
    attack: str
    expected: str
    seen: str
    held: bool


ROWS: list[AttackRow] = []


@pytest.fixture
def attack() -> Iterator[Callable[[str, str, str, bool], None]]:
    """``attack(name, expected, seen, held)`` records one row; a test still asserts."""

    def record(name: str, expected: str, seen: str, held: bool) -> None:
        ROWS.append(AttackRow(name, expected, seen, held))

    yield record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    widths = [
        max(len(h), *(len(getattr(r, f)) for r in ROWS))
        for h, f in (("attack", "attack"), ("expected", "expected"), ("seen", "seen"))
    ]
    terminalreporter.section("hostile-party suite")
    header = ("attack", "expected", "seen", "held")
    line = "  ".join(h.ljust(w) for h, w in zip(header, [*widths, 4], strict=True))
    terminalreporter.write_line(line)
    terminalreporter.write_line("  ".join("-" * w for w in [*widths, 4]))
    for row in ROWS:
        cells = (row.attack, row.expected, row.seen, "yes" if row.held else "NO")
        terminalreporter.write_line(
            "  ".join(c.ljust(w) for c, w in zip(cells, [*widths, 4], strict=True))
        )
