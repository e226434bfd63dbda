"""Opening the buffer file: its pragmas (WAL, durability, a small WAL), its schema
migrations (sleepfed.board.buffer.schema), and the transaction every write goes through.

The queries on the tables are in the classes that make up ``Buffer``
(sleepfed.board.buffer.store); they all share the one connection set up here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sleepfed.board.buffer.schema import MIGRATIONS, SCHEMA_VERSION
from sleepfed.common.sqlite_files import create_private, setting_up

SYNCHRONOUS_MODES = ("full", "normal", "extra")
# A small WAL, checkpointed often and truncated after, leaves room on a small disk.
WAL_AUTOCHECKPOINT_PAGES = 256
WAL_SIZE_LIMIT_BYTES = 1 << 20


class BufferError(RuntimeError):
    """The buffer file cannot be used (wrong schema, unwritable, corrupt)."""


class BufferConnection:
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

    # -- transactions -------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @staticmethod
    def _bump(conn: sqlite3.Connection, counters: dict[str, int]) -> None:
        """Add to the named counters inside the caller's transaction (zeros are skipped)."""
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(name, int(delta)) for name, delta in counters.items() if delta],
        )

    def close(self) -> None:
        self.conn.close()
