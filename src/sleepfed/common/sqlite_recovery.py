"""A corrupt SQLite file: moved aside, and what is readable salvaged into a fresh file.

The salvage reads the bad file through SQLite itself, table by table in rowid order, and
steps over what it cannot read: when a read fails (a damaged page), it looks for the first
rowid after the last good one that SQLite can reach again (doubling, then halving: a few
dozen seeks through the table's interior pages) and goes on from there. The rows on the
damaged pages are lost; every other row is copied, with the columns the fresh file (made by
the caller's own migrations) and the bad one share, so a file of another schema version
salvages what matches and nothing of its schema reaches the new file.

Not SQLite's own ``.recover``: Debian 12's ``sqlite3`` shell (3.40.1) fails on every file
with "SQL logic error", because its library is built without the ``sqlite_dbpage`` virtual
table the recovery extension reads pages through (tests/unit/test_sqlite_recovery.py checks
that this is still so), and no PyPI binding exposes ``sqlite3_recover``. What this cannot do
that ``.recover`` can: reach rows below a damaged interior page, and tell every garbage cell
of a damaged page that still parses from a row (those out of rowid order are dropped; the
caller may check the others).

Used by the board's buffer (sleepfed.board.buffer.buffer_recovery) and the server's history.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Within a database's own folder: the name its quarantined copies get.
QUARANTINE_INFIX = ".corrupt-"
BATCH_ROWS = 2000
_SIDE_FILES = ("-wal", "-shm", "-journal")
_FIRST_ROWID = -(1 << 63)
_LAST_ROWID = (1 << 63) - 1


def is_corrupt(error: BaseException) -> bool:
    """Whether ``error`` says the file itself is damaged (SQLITE_CORRUPT, SQLITE_NOTADB),
    not that it is busy, full or unwritable."""
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(error)
    return "malformed" in text or "not a database" in text


@dataclass(frozen=True)
class Salvage:
    """What one recovery did: the bad file's new name, the rows kept per table, the damaged
    stretches met per table, and why nothing was kept, if nothing was."""

    quarantined: Path
    at: float
    salvaged: dict[str, int] = field(default_factory=dict)
    damaged: dict[str, int] = field(default_factory=dict)
    problem: str | None = None


def quarantine(path: Path, now: float | None = None) -> Path:
    """Rename ``path`` (and its -wal, -shm) to ``<name>.corrupt-<UTC time>``: SQLite finds
    the renamed WAL beside the renamed file, so the salvage reads both."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}{QUARANTINE_INFIX}{stamp}")
    serial = 1
    while target.exists():
        serial += 1
        target = path.with_name(f"{path.name}{QUARANTINE_INFIX}{stamp}.{serial}")
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    if path.exists():
        path.rename(target)
    return target


def quarantined_files(path: Path) -> list[Path]:
    """The quarantined copies of ``path`` and their side files, oldest first."""
    return sorted(path.parent.glob(f"{path.name}{QUARANTINE_INFIX}*"))


def salvage_into(
    quarantined: Path, fresh: sqlite3.Connection, tables: Iterable[str], at: float
) -> Salvage:
    """Copy the readable rows of ``tables`` from ``quarantined`` into ``fresh`` (an open
    connection, outside a transaction)."""
    try:
        bad = sqlite3.connect(f"file:{quarantined}?mode=ro", uri=True)
        # a damaged page that still parses must fail, not yield garbage rows
        bad.execute("PRAGMA cell_size_check = ON")
    except sqlite3.Error as error:
        return Salvage(quarantined, at, problem=f"it cannot be opened ({error})")
    salvaged: dict[str, int] = {}
    damaged: dict[str, int] = {}
    try:
        present = _tables(bad)
        for table in tables:
            if table not in present:
                continue
            theirs = set(_columns(bad, table))
            columns = [c for c in _columns(fresh, table) if c in theirs]
            salvaged[table], stretches = _copy_table(bad, fresh, table, columns)
            if stretches:
                damaged[table] = stretches
    except sqlite3.DatabaseError as error:  # not even its list of tables could be read
        return Salvage(quarantined, at, salvaged, damaged, problem=f"nothing readable ({error})")
    finally:
        bad.close()
    problem = None if salvaged else "nothing readable: none of this program's tables is in it"
    return Salvage(quarantined, at, salvaged, damaged, problem)


def _copy_table(
    bad: sqlite3.Connection, fresh: sqlite3.Connection, table: str, columns: list[str]
) -> tuple[int, int]:
    """Rows copied and damaged stretches met: a pass up in rowid order that steps over
    damage, then a pass down from the end to the first damage, for the rows past a stretch
    whose garbage cells sent the first pass too far. Rows both passes read are copied once
    (the fresh table's keys)."""
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" * len(columns))
    insert = f'INSERT OR IGNORE INTO main."{table}" ({names}) VALUES ({marks})'
    up = f'SELECT rowid, {names} FROM "{table}" WHERE rowid > ? ORDER BY rowid'
    down = f'SELECT rowid, {names} FROM "{table}" WHERE rowid < ? ORDER BY rowid DESC'
    copied = damaged = 0
    after = _FIRST_ROWID
    while True:
        rows, failed = _read(bad, up, (after,), ascending=True)
        copied += _insert(fresh, insert, rows)
        if rows:
            after = int(rows[-1][0])  # type: ignore[call-overload]
        if not failed:
            if len(rows) < BATCH_ROWS:
                break
            continue
        damaged += 1
        # no row read since the last resume: the damage starts right there, step past it
        resume = _next_readable(bad, table, after if rows else after + 1)
        if resume is None:
            break
        after = resume - 1
    before = _LAST_ROWID
    while damaged:  # down from the end, to the first damage
        rows, failed = _read(bad, down, (before,), ascending=False)
        copied += _insert(fresh, insert, rows)
        if failed or len(rows) < BATCH_ROWS:
            break
        before = int(rows[-1][0])  # type: ignore[call-overload]
    return copied, damaged


def _read(
    bad: sqlite3.Connection,
    sql: str,
    args: tuple[object, ...],
    *,
    ascending: bool,
    limit: int | None = BATCH_ROWS,
) -> tuple[list[tuple[object, ...]], bool]:
    """Up to ``limit`` rows, and whether the read stopped at damage: an error, or a rowid
    out of order (a damaged page that still parses)."""
    rows: list[tuple[object, ...]] = []
    try:
        for row in bad.execute(sql, args):
            rowid = int(row[0])  # type: ignore[call-overload]
            if rows and (rowid <= rows[-1][0]) == ascending:  # type: ignore[operator]
                return rows, True
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    except sqlite3.DatabaseError:
        return rows, True
    return rows, False


def _insert(fresh: sqlite3.Connection, insert: str, rows: list[tuple[object, ...]]) -> int:
    if not rows:
        return 0
    fresh.execute("BEGIN IMMEDIATE")
    try:
        added = fresh.executemany(insert, [row[1:] for row in rows]).rowcount
    except BaseException:
        fresh.execute("ROLLBACK")
        raise
    fresh.execute("COMMIT")
    return int(added)


def _next_readable(bad: sqlite3.Connection, table: str, after: int) -> int | None:
    """The first rowid > ``after`` from which ``table`` reads again (the step doubled, then
    bisected), or None if no seek past ``after`` works or nothing is left."""
    seek = f'SELECT rowid FROM "{table}" WHERE rowid >= ? ORDER BY rowid LIMIT 1'

    def works(start: int) -> bool:
        try:
            bad.execute(seek, (start,)).fetchone()
        except sqlite3.DatabaseError:
            return False
        return True

    low, step = after, 1  # a seek from `low` fails
    while True:
        high = min(after + step, _LAST_ROWID)
        if works(high):
            break
        if high == _LAST_ROWID:
            return None
        low, step = high, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if works(middle) else (middle, high)
    row = bad.execute(seek, (high,)).fetchone()
    return None if row is None else int(row[0])


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows}


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f'PRAGMA main.table_info("{table}")')]
