"""A corrupt buffer never stops collection: it is moved aside, what is readable is salvaged
into a fresh buffer (sleepfed.common.sqlite_recovery), and the daemon goes on with that.

Checked when the daemon opens its buffer (``PRAGMA quick_check``, every page read once,
through a read-only connection) and whenever a running buffer answers with a corruption
error (sleepfed.board.service.buffer_keeper calls ``recover``).
The recovery is kept in the fresh buffer's state (``buffer_recovered``: when, the quarantined
file's name, rows salvaged, readings lost) and counted (``buffer_recovered``), for
``status`` and the metrics; the quarantined files count against the disk cap and are the
first thing freeing room removes (sleepfed.board.buffer.disk_guard).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from sleepfed.board.buffer.connection import BufferError
from sleepfed.board.buffer.store import Buffer
from sleepfed.common.sqlite_checks import quick_check
from sleepfed.common.sqlite_files import setting_up
from sleepfed.common.sqlite_recovery import (
    Salvage,
    is_corrupt,
    quarantine,
    salvage_into,
)

log = logging.getLogger("sleepfed.agent")

_CORRUPT = {"ERROR_CLASS": "buffer_corrupt"}


def open_checked(path: Path, **options: Any) -> Buffer:
    """The buffer at ``path``; a corrupt one is recovered first (``recover``)."""
    problem = _damage(path)
    if problem is not None:
        return recover(path, problem, **options)
    try:
        buffer = Buffer(path, **options)
    except sqlite3.DatabaseError as error:
        if not is_corrupt(error):
            raise
        return recover(path, str(error), **options)
    except BufferError as error:
        # a file SQLite reads but that is not a buffer of ours (no schema version it could
        # migrate): set aside like a corrupt one, so that collection goes on
        if "schema version" not in str(error) or "newer" in str(error):
            raise
        buffer = None
        problem = str(error)
    else:
        return buffer
    return recover(path, problem, **options)


def _damage(path: Path) -> str | None:
    """What ``PRAGMA quick_check`` finds in the file, read through a read-only connection:
    closing a writable one could copy the WAL into a damaged file before it is moved aside."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None  # opening it for writing says why
    try:
        return quick_check(conn)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def recover(path: Path, problem: str, **options: Any) -> Buffer:
    """Move the buffer at ``path`` aside, salvage it into a fresh one and return that."""
    with setting_up(path):
        quarantined = quarantine(path)
    buffer = Buffer(path, **options)
    tables = [
        name
        for (name,) in buffer.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    salvage = salvage_into(quarantined, buffer.conn, tables, _now())
    lost = readings_lost(buffer, salvage)
    record = {
        "at": salvage.at,
        "problem": problem[:200],
        "quarantined": quarantined.name,
        "salvaged_rows": sum(salvage.salvaged.values()),
        "salvaged_readings": salvage.salvaged.get("readings", 0),
        "readings_lost": lost,
        "damaged_stretches": sum(salvage.damaged.values()),
        "salvage_problem": salvage.problem,
    }
    buffer.set_state(buffer_recovered=record)
    buffer.bump_counters({"buffer_recovered": 1})
    log.error(
        "buffer corrupt (%s): moved aside as %s; salvaged %d rows (%d readings), %s readings "
        "lost%s; collecting into a fresh buffer",
        record["problem"],
        quarantined.name,
        record["salvaged_rows"],
        record["salvaged_readings"],
        "unknown" if lost is None else lost,
        f" ({salvage.problem})" if salvage.problem else "",
        extra=_CORRUPT | {"QUARANTINED": str(quarantined)},
    )
    return buffer


def readings_lost(buffer: Buffer, salvage: Salvage) -> int | None:
    """Readings the bad file held that were not salvaged: its accepted readings less those
    evicted, by its own counters (None when they were not salvaged)."""
    if not salvage.salvaged.get("counters"):
        return None
    counters = buffer.counters()
    # stage labels (accepted_lbl) live in their own table
    accepted = sum(
        v for k, v in counters.items() if k.startswith("accepted_") and k != "accepted_lbl"
    )
    held = accepted - counters.get("evicted_readings", 0)
    return max(0, held - salvage.salvaged.get("readings", 0))


def _now() -> float:
    from sleepfed.board.service import clock

    return clock.now()
