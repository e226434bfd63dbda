"""The history's SQLite file: made and migrated, checked whenever it is opened, and, when it
is damaged, moved aside and salvaged into a fresh file on which the server goes on.

Opened to write (the ServerApp, ``sleepfed-server run``, ``history``, ``rollback``), the file
is checked with ``PRAGMA quick_check`` (every page read once) under its folder's set-up lock
(sleepfed.common.sqlite_files). A damaged file, or one that is not SQLite at all, is renamed
``history.db.corrupt-<UTC time>`` with its -wal and -shm, the readable rows of its rounds,
runs and earlier recoveries are copied into a fresh file (sleepfed.common.sqlite_recovery),
and the recovery is kept in the fresh file's ``recoveries`` table, for ``status``, and logged
once as an ERROR with ``ERROR_CLASS=buffer_corrupt``. A salvaged round whose metrics or model
do not load (a damaged page that still parsed) is dropped: a run resumes from the last round
whose model loads.

A sound file that is not a history of this schema (another program's tables; a newer
version's history) is never touched: opening it raises StateFileError and the operator
decides; moving it aside would silently start the federation again from round 0. Opened to
read (``status``, the metrics, ``report``), nothing is written: a damaged file raises
StateFileError, and the next writer recovers it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from sleepfed.common.private_files import ensure_private_dir
from sleepfed.common.sqlite_checks import (
    StateFileError,
    describe,
    open_read_only,
)
from sleepfed.common.sqlite_files import create_private, setting_up
from sleepfed.common.sqlite_recovery import Salvage, is_corrupt, quarantine, salvage_into
from sleepfed.model import logistic as model

log = logging.getLogger("sleepfed.server")

SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    global_round INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    arrays BLOB NOT NULL,
    train_metrics TEXT NOT NULL,
    eval_metrics TEXT NOT NULL,
    server_metrics TEXT NOT NULL,
    train_nodes INTEGER NOT NULL,
    eval_nodes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    rolled_back INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS active_round ON rounds(global_round) WHERE rolled_back = 0;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,
    start_round INTEGER NOT NULL,
    planned_rounds INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS recoveries (
    at REAL NOT NULL,
    problem TEXT NOT NULL,
    quarantined TEXT NOT NULL,
    salvaged TEXT NOT NULL,
    damaged_stretches INTEGER NOT NULL,
    dropped_rounds INTEGER NOT NULL,
    salvage_problem TEXT
);
"""
# (name, type) of columns added since; _create_and_migrate adds them to older files.
ADDED_ROUND_COLUMNS = (
    ("rejected", "TEXT NOT NULL DEFAULT '[]'"),
    ("privacy", "TEXT NOT NULL DEFAULT '{}'"),
)
# What a file must hold to be a history (the first release's columns; later ones are added).
EXPECTED = {
    "rounds": (
        "id", "global_round", "run_id", "server_round", "arrays", "train_metrics",
        "eval_metrics", "server_metrics", "train_nodes", "eval_nodes", "created_at",
        "rolled_back",
    ),
    "runs": ("run_id", "started_at", "finished_at", "status", "start_round", "planned_rounds"),
}  # fmt: skip
SALVAGED_TABLES = ("rounds", "runs", "recoveries")
_CORRUPT = {"ERROR_CLASS": "buffer_corrupt"}
_DAMAGED_ADVICE = (
    "the server moves it aside and salvages what it can the next time it opens it "
    "(sleepfed-server run)"
)
_NOT_OURS_ADVICE = "the server leaves it as it is: move it away, or set server.state_dir"


def open_for_writing(path: Path) -> sqlite3.Connection:
    """The history at ``path``, made if missing, migrated, recovered if damaged."""
    try:
        ensure_private_dir(path.parent)  # the state dir: 0700 whatever the umask
        with setting_up(path):  # the ServerApp, `run` and scripts may open it at once
            create_private(path)
            conn, problem = _open_checked(path)
            if conn is not None:
                return conn
            try:
                quarantined = quarantine(path)
            except OSError as error:
                raise StateFileError(
                    path, problem, f"it cannot be moved aside ({error.strerror})"
                ) from None
            return _recover(path, quarantined, problem)
    except OSError as error:
        raise StateFileError(path, describe(error)) from None


def open_for_reading(path: Path) -> sqlite3.Connection:
    """A read-only connection to the existing history at ``path`` (FileNotFoundError if
    there is none); StateFileError if it is damaged, unreadable or not a history."""
    return open_read_only(path, EXPECTED, _DAMAGED_ADVICE, _NOT_OURS_ADVICE)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as error:
        raise StateFileError(path, describe(error)) from None
    return conn


def _open_checked(path: Path) -> tuple[sqlite3.Connection | None, str]:
    """(the open, migrated file, "") if it is sound; (None, what is wrong) if it is damaged."""
    try:
        open_read_only(path, EXPECTED, foreign_advice=_NOT_OURS_ADVICE).close()
    except StateFileError as error:
        if error.kind != "damaged":
            raise
        return None, error.problem
    conn = _connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        _create_and_migrate(conn)
    except sqlite3.DatabaseError as error:
        conn.close()
        if not is_corrupt(error):
            raise StateFileError(path, describe(error)) from None
        return None, describe(error)
    except BaseException:
        conn.close()
        raise
    return conn, ""


def _create_and_migrate(conn: sqlite3.Connection) -> None:
    """Make the tables, then add the columns added after the first release (older history
    files get them, empty), in one transaction: a crash leaves the file as it was.
    (Processes opening the file at once take turns: see ``setting_up``.)"""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, SCHEMA.split(";")):
            conn.execute(statement)
        have = {row[1] for row in conn.execute("PRAGMA table_info(rounds)")}
        for name, sql_type in ADDED_ROUND_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE rounds ADD COLUMN {name} {sql_type}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _recover(path: Path, quarantined: Path, problem: str) -> sqlite3.Connection:
    """A fresh history at ``path`` holding what ``quarantined`` had that can be read."""
    create_private(path)
    conn = _connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    _create_and_migrate(conn)
    salvage = salvage_into(quarantined, conn, SALVAGED_TABLES, time.time())
    dropped = _drop_unloadable_rounds(conn)
    kept = {table: salvage.salvaged.get(table, 0) for table in SALVAGED_TABLES}
    kept["rounds"] -= dropped
    _record(conn, problem, salvage, kept, dropped)
    log.error(
        "history %s: %s; moved aside as %s; salvaged %s (%d damaged stretches skipped, "
        "%d unloadable rounds dropped%s); going on with the salvaged history",
        path,
        problem[:200],
        quarantined.name,
        ", ".join(f"{table} {n}" for table, n in kept.items()),
        sum(salvage.damaged.values()),
        dropped,
        f"; {salvage.problem}" if salvage.problem else "",
        extra=_CORRUPT | {"QUARANTINED": str(quarantined)},
    )
    return conn


def _drop_unloadable_rounds(conn: sqlite3.Connection) -> int:
    """Delete the salvaged rounds whose metrics are not JSON or whose model does not load."""
    unloadable = []
    for rowid, arrays, *texts in conn.execute(
        "SELECT id, arrays, train_metrics, eval_metrics, server_metrics, rejected, privacy "
        "FROM rounds"
    ):
        try:
            for text in texts:
                json.loads(text)
            model.arrays_from_bytes(arrays)
        except Exception:  # garbage fails numpy's loader in many ways (zip, header, EOF)
            unloadable.append((rowid,))
    if unloadable:
        conn.executemany("DELETE FROM rounds WHERE id = ?", unloadable)
    return len(unloadable)


def _record(
    conn: sqlite3.Connection, problem: str, salvage: Salvage, kept: dict[str, int], dropped: int
) -> None:
    conn.execute(
        "INSERT INTO recoveries VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            salvage.at,
            problem[:200],
            salvage.quarantined.name,
            json.dumps(kept),
            sum(salvage.damaged.values()),
            dropped,
            salvage.problem,
        ),
    )


def recoveries(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The recoveries this history went through, oldest first ([] for a file made before
    recoveries were kept)."""
    try:
        cursor = conn.execute("SELECT * FROM recoveries ORDER BY at")
    except sqlite3.OperationalError:  # no such table: a read-only look at an older file
        return []
    names = [c[0] for c in cursor.description]
    found = [dict(zip(names, row, strict=True)) for row in cursor]
    for record in found:
        try:
            record["salvaged"] = json.loads(record["salvaged"])
        except (TypeError, ValueError):  # a salvaged record that is not JSON any more
            record["salvaged"] = {}
    return found
