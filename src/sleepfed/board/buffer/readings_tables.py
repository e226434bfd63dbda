"""The buffer's raw readings and stage labels: batched ingest, time-range queries, and the
eviction of the oldest readings (its policy: sleepfed.board.buffer.disk_guard)."""

from __future__ import annotations

from collections.abc import Sequence

from sleepfed.board.buffer.connection import BufferConnection
from sleepfed.board.sources.protocol import Kind, Reading


class ReadingsTables(BufferConnection):
    """Tables ``readings`` and ``stage_labels``."""

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

    # -- eviction -----------------------------------------------------------------------
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

    # -- queries ------------------------------------------------------------------------
    def readings_between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return self.conn.execute(
            "SELECT ts, kind, value FROM readings WHERE ts >= ? AND ts < ? ORDER BY ts",
            (start, end),
        ).fetchall()

    def latest_battery(self, since: float) -> dict[str, tuple[float, float]]:
        """source -> (percent, time) of its newest ``BAT`` reading at or after ``since`` (the
        time index bounds the search to that span)."""
        rows = self.conn.execute(
            "SELECT source, value, ts FROM readings WHERE ts >= ? AND kind = ? ORDER BY ts",
            (since, int(Kind.BAT)),
        ).fetchall()
        return {source: (value, ts) for source, value, ts in rows}

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
