"""The board's local buffer: one SQLite file (WAL mode) that holds everything the board keeps.

Raw readings are the only thing ever evicted (oldest first, when the file passes its cap or
the disk runs low: sleepfed.board.buffer.disk_guard); stage labels, night reports, feature
windows, models and predictions are kept.

Durability: every batch is one transaction. With ``synchronous=FULL`` (the default) a
committed batch survives a crash of the process *and* a power loss (the WAL is fsynced at
each commit). ``synchronous=NORMAL`` survives a crash of the process but a power loss may
roll back the last commits. A reading is acknowledged (ACK line, counters) only after its
transaction committed.

``Buffer`` is the one front the rest of the board uses; its parts are split by job: opening
and migrating the file (connection.py, schema.py), readings and stage labels
(readings_tables.py), nights and windows (night_tables.py), models and predictions
(model_tables.py). Counters, state and the file's size are here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sleepfed.board.buffer.board_state import BoardState, encode_state
from sleepfed.board.buffer.model_tables import ModelTables
from sleepfed.board.buffer.night_tables import NightTables
from sleepfed.board.buffer.readings_tables import ReadingsTables


@dataclass(frozen=True)
class BufferCounts:
    readings: int
    stage_labels: int
    nights: int
    windows: int
    labelled_windows: int
    models: int
    used_bytes: int
    file_bytes: int


class Buffer(ReadingsTables, NightTables, ModelTables):
    """A connection to the board's SQLite buffer. Not shared between threads."""

    # -- counters and state -------------------------------------------------------------
    def bump_counters(self, counters: dict[str, int]) -> None:
        with self.transaction() as conn:
            self._bump(conn, counters)

    def counters(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT name, value FROM counters ORDER BY name").fetchall())

    def set_state(self, **values: object) -> None:
        """Update some of the board's state (keys: the fields of ``BoardState``)."""
        rows = encode_state(values)
        with self.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", rows)

    def state(self) -> dict[str, object]:
        """The stored state as decoded JSON by key (what ``status --json`` shows)."""
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM state")}

    def board_state(self) -> BoardState:
        return BoardState.decode(self.state())

    # -- size cap -----------------------------------------------------------------------
    def used_bytes(self) -> int:
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def release_free_pages(self) -> None:
        # executescript steps the pragma to its end (execute() frees one page per step)
        self.conn.executescript("PRAGMA incremental_vacuum;")

    def shrink(self) -> None:
        """Give free pages back to the filesystem: move them to the end of the file, copy
        the WAL into the file and truncate both (a reader may delay the truncation)."""
        self.release_free_pages()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    # -- overview -------------------------------------------------------------------------
    def counts(self) -> BufferCounts:
        one = lambda sql: int(self.conn.execute(sql).fetchone()[0])  # noqa: E731
        return BufferCounts(
            readings=one("SELECT COUNT(*) FROM readings"),
            stage_labels=one("SELECT COUNT(*) FROM stage_labels"),
            nights=one("SELECT COUNT(*) FROM nights"),
            windows=one("SELECT COUNT(*) FROM windows"),
            labelled_windows=one("SELECT COUNT(*) FROM windows WHERE label IS NOT NULL"),
            models=one("SELECT COUNT(*) FROM models"),
            used_bytes=self.used_bytes(),
            file_bytes=self.path.stat().st_size,
        )

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])
