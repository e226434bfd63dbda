"""The buffer's models (one row per global model received) and the night predictions each
model made. Kept, never evicted."""

from __future__ import annotations

import time

from sleepfed.board.buffer.connection import BufferConnection


class ModelTables(BufferConnection):
    """Tables ``models`` and ``predictions``."""

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
