"""The board's local buffer: one SQLite file (WAL mode) that holds everything the board keeps.

Raw readings are the only thing ever evicted (oldest first, when the file passes its cap or
the disk runs low: sleepfed.board.buffer.disk_guard); stage labels, night reports, feature
windows, models and predictions are kept.

Durability: every batch is one transaction. With ``synchronous=FULL`` (the default) a
committed batch survives a crash of the process *and* a power loss (the WAL is fsynced at
each commit). ``synchronous=NORMAL`` survives a crash of the process but a power loss may
roll back the last commits. A reading is acknowledged (ACK line, counters) only after its
transaction committed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sleepfed.board.buffer.board_state import BoardState, encode_state
from sleepfed.board.sources.protocol import Kind, Reading
from sleepfed.common.sqlite_files import create_private, setting_up

SYNCHRONOUS_MODES = ("full", "normal", "extra")
# A small WAL, checkpointed often and truncated after, leaves room on a small disk.
WAL_AUTOCHECKPOINT_PAGES = 256
WAL_SIZE_LIMIT_BYTES = 1 << 20

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind INTEGER NOT NULL,
        value REAL NOT NULL,
        source TEXT NOT NULL
    );
    CREATE INDEX readings_ts ON readings(ts);
    CREATE TABLE stage_labels (
        ts REAL PRIMARY KEY,
        stage INTEGER NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE night_reports (
        night TEXT PRIMARY KEY,
        quality TEXT NOT NULL CHECK (quality IN ('good', 'poor')),
        reported_at REAL NOT NULL
    );
    CREATE TABLE nights (
        night TEXT PRIMARY KEY,
        start_ts REAL NOT NULL,
        end_ts REAL NOT NULL,
        epochs INTEGER NOT NULL,
        windows INTEGER NOT NULL,
        labelled_windows INTEGER NOT NULL,
        reference_efficiency REAL,
        extracted_at REAL NOT NULL
    );
    CREATE TABLE windows (
        night TEXT NOT NULL,
        start_ts REAL NOT NULL,
        features TEXT NOT NULL,
        label INTEGER,
        PRIMARY KEY (night, start_ts)
    );
    CREATE TABLE models (
        version INTEGER PRIMARY KEY,
        server_round INTEGER NOT NULL,
        run_id TEXT NOT NULL,
        arrays BLOB NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE TABLE predictions (
        night TEXT NOT NULL,
        model_version INTEGER NOT NULL,
        efficiency REAL NOT NULL,
        quality TEXT NOT NULL,
        predicted_at REAL NOT NULL,
        PRIMARY KEY (night, model_version)
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class BufferError(RuntimeError):
    """The buffer file cannot be used (wrong schema, unwritable, corrupt)."""


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


class Buffer:
    """A connection to the board's SQLite buffer. Not shared between threads."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        max_bytes: int | None = None,
        readonly: bool = False,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise BufferError(
                f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}"
            )
        self.path = Path(path)
        self.max_bytes = max_bytes
        if readonly:
            if not self.path.exists():
                raise BufferError(f"no buffer at {self.path}")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
            self._prepare_or_close(readonly, synchronous)
            return
        with setting_up(self.path):
            create_private(self.path)
            self.conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self._prepare_or_close(readonly, synchronous)

    def _prepare_or_close(self, readonly: bool, synchronous: str) -> None:
        try:
            self._prepare(readonly, synchronous)
        except BaseException:
            self.conn.close()
            raise

    def _prepare(self, readonly: bool, synchronous: str) -> None:
        self.conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            if self.conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                # Must be set before the first table exists.
                self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise BufferError(f"{self.path}: could not switch to WAL (got {mode})")
            self.conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            self.conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
            self._migrate()
        version = self.schema_version()
        if version != SCHEMA_VERSION:
            raise BufferError(
                f"{self.path}: schema version {version}, this agent knows {SCHEMA_VERSION}"
            )

    # -- schema -------------------------------------------------------------------------
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise BufferError(
                f"{self.path}: schema version {current} is newer than this agent ({SCHEMA_VERSION})"
            )
        for version in range(current, SCHEMA_VERSION):
            with self.transaction():
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {version + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    # -- ingest -------------------------------------------------------------------------
    def add_readings(
        self, batch: Sequence[tuple[str, Reading]], counters: dict[str, int] | None = None
    ) -> int:
        """Store a batch of ``(source name, reading)`` and counter increments in one
        transaction. Returns how many readings were committed; they count as acknowledged
        only once this returns."""
        raw_rows = [
            (r.timestamp, int(r.kind), r.value, src) for src, r in batch if r.kind != Kind.LBL
        ]
        label_rows = [(r.timestamp, int(r.value), src) for src, r in batch if r.kind == Kind.LBL]
        with self.transaction() as conn:
            if raw_rows:
                conn.executemany(
                    "INSERT INTO readings (ts, kind, value, source) VALUES (?, ?, ?, ?)", raw_rows
                )
            if label_rows:
                conn.executemany(
                    "INSERT OR REPLACE INTO stage_labels (ts, stage, source) VALUES (?, ?, ?)",
                    label_rows,
                )
            if counters:
                self._bump(conn, counters)
        return len(batch)

    # -- counters and state -------------------------------------------------------------
    @staticmethod
    def _bump(conn: sqlite3.Connection, counters: dict[str, int]) -> None:
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(name, int(delta)) for name, delta in counters.items() if delta],
        )

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

    # -- eviction (its policy: sleepfed.board.buffer.disk_guard) ---------------------------
    def evict_oldest_readings(self, rows: int) -> int:
        """Delete up to ``rows`` of the oldest raw readings in one transaction, counted as
        ``evicted_readings``. Never touches labels, windows, models or predictions. Returns
        the rows deleted."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?)",
                (rows,),
            )
            if cursor.rowcount > 0:
                self._bump(conn, {"evicted_readings": cursor.rowcount})
        return max(cursor.rowcount, 0)

    def release_free_pages(self) -> None:
        # executescript steps the pragma to its end (execute() frees one page per step)
        self.conn.executescript("PRAGMA incremental_vacuum;")

    def shrink(self) -> None:
        """Give free pages back to the filesystem: move them to the end of the file, copy
        the WAL into the file and truncate both (a reader may delay the truncation)."""
        self.release_free_pages()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    # -- queries --------------------------------------------------------------------------
    def readings_between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return self.conn.execute(
            "SELECT ts, kind, value FROM readings WHERE ts >= ? AND ts < ? ORDER BY ts",
            (start, end),
        ).fetchall()

    def labels_between(self, start: float, end: float) -> list[tuple[float, int]]:
        return self.conn.execute(
            "SELECT ts, stage FROM stage_labels WHERE ts >= ? AND ts < ? ORDER BY ts", (start, end)
        ).fetchall()

    def reading_time_span(self) -> tuple[float, float] | None:
        row = self.conn.execute(
            "SELECT MIN(ts), MAX(ts) FROM (SELECT ts FROM readings UNION ALL "
            "SELECT ts FROM stage_labels)"
        ).fetchone()
        return None if row[0] is None else (row[0], row[1])

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

    # -- nights, windows ----------------------------------------------------------------
    def save_night(
        self,
        night: str,
        start_ts: float,
        end_ts: float,
        epochs: int,
        windows: Iterable[tuple[float, list[float], int | None]],
        reference_efficiency: float | None,
    ) -> None:
        rows = [(night, start, json.dumps(feats), label) for start, feats, label in windows]
        with self.transaction() as conn:
            conn.execute("DELETE FROM windows WHERE night = ?", (night,))
            conn.executemany(
                "INSERT INTO windows (night, start_ts, features, label) VALUES (?, ?, ?, ?)", rows
            )
            conn.execute(
                "INSERT OR REPLACE INTO nights (night, start_ts, end_ts, epochs, windows, "
                "labelled_windows, reference_efficiency, extracted_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    night,
                    start_ts,
                    end_ts,
                    epochs,
                    len(rows),
                    sum(1 for r in rows if r[3] is not None),
                    reference_efficiency,
                    time.time(),
                ),
            )

    def night_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT night FROM nights ORDER BY night")]

    def night_info(self, night: str) -> dict[str, object] | None:
        cursor = self.conn.execute("SELECT * FROM nights WHERE night = ?", (night,))
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cursor.description], row, strict=True))

    def windows(
        self, night: str | None = None, labelled_only: bool = False
    ) -> list[tuple[str, float, list[float], int | None]]:
        sql = "SELECT night, start_ts, features, label FROM windows"
        clauses, args = [], []
        if night is not None:
            clauses.append("night = ?")
            args.append(night)
        if labelled_only:
            clauses.append("label IS NOT NULL")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY night, start_ts"
        return [(n, s, json.loads(f), lab) for n, s, f, lab in self.conn.execute(sql, args)]

    def labelled_window_count(self) -> int:
        return int(
            self.conn.execute("SELECT COUNT(*) FROM windows WHERE label IS NOT NULL").fetchone()[0]
        )

    # -- labels from the person -----------------------------------------------------------
    def add_night_report(self, night: str, quality: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO night_reports (night, quality, reported_at) VALUES (?,?,?)",
                (night, quality, time.time()),
            )

    def night_reports(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT night, quality FROM night_reports"))

    # -- models and predictions -----------------------------------------------------------
    def save_model(self, server_round: int, run_id: str, arrays_blob: bytes) -> int:
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO models (server_round, run_id, arrays, received_at) VALUES (?,?,?,?)",
                (server_round, run_id, arrays_blob, time.time()),
            )
            return int(cursor.lastrowid or 0)

    def latest_model(self) -> tuple[int, int, str, bytes] | None:
        """(version, server_round, run_id, arrays blob) of the newest model, or None."""
        return self.conn.execute(
            "SELECT version, server_round, run_id, arrays FROM models ORDER BY version DESC LIMIT 1"
        ).fetchone()

    def latest_model_version(self) -> tuple[int, int] | None:
        """(version, server_round) of the newest model, or None (without its arrays)."""
        return self.conn.execute(
            "SELECT version, server_round FROM models ORDER BY version DESC LIMIT 1"
        ).fetchone()

    def model_receipts(self, limit: int = 1000) -> list[tuple[int, int, str, float]]:
        """(version, server_round, run_id, received_at) of the newest ``limit`` models,
        oldest first (without their arrays)."""
        rows = self.conn.execute(
            "SELECT version, server_round, run_id, received_at FROM models "
            "ORDER BY version DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return rows[::-1]

    def save_prediction(
        self, night: str, model_version: int, efficiency: float, quality: str
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?)",
                (night, model_version, efficiency, quality, time.time()),
            )

    def latest_predictions(self) -> dict[str, tuple[int, float, str]]:
        """night -> (model version, efficiency, quality), newest model per night."""
        rows = self.conn.execute(
            "SELECT night, model_version, efficiency, quality FROM predictions p WHERE "
            "model_version = (SELECT MAX(model_version) FROM predictions q WHERE q.night = p.night)"
        ).fetchall()
        return {night: (version, eff, quality) for night, version, eff, quality in rows}

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])
