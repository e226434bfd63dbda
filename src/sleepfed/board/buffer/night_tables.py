"""The buffer's nights: their feature windows (with stage-derived labels) and the person's
own reports of how a night went. Kept, never evicted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from sleepfed.board.buffer.connection import BufferConnection


class NightTables(BufferConnection):
    """Tables ``nights``, ``windows`` and ``night_reports``."""

    # -- nights, windows ----------------------------------------------------------------
    def save_night(
        self,
        night: str,
        start_ts: float,
        end_ts: float,
        epochs: int,
        windows: Iterable[tuple[float, list[float], int | None]],
        reference_efficiency: float | None,
        movement: bool = True,
    ) -> None:
        rows = [(night, start, json.dumps(feats), label) for start, feats, label in windows]
        with self.transaction() as conn:
            conn.execute("DELETE FROM windows WHERE night = ?", (night,))
            conn.executemany(
                "INSERT INTO windows (night, start_ts, features, label) VALUES (?, ?, ?, ?)", rows
            )
            conn.execute(
                "INSERT OR REPLACE INTO nights (night, start_ts, end_ts, epochs, windows, "
                "labelled_windows, reference_efficiency, extracted_at, movement) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    night,
                    start_ts,
                    end_ts,
                    epochs,
                    len(rows),
                    sum(1 for r in rows if r[3] is not None),
                    reference_efficiency,
                    time.time(),
                    int(movement),
                ),
            )

    def night_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT night FROM nights ORDER BY night")]

    def nights_without_movement(self) -> set[str]:
        """Nights without a single movement reading: the movement-free head predicts them."""
        return {r[0] for r in self.conn.execute("SELECT night FROM nights WHERE movement = 0")}

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
