"""The buffer's models (one row per global model received) and the night predictions each
model made. Kept, never evicted."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sleepfed.board.buffer.connection import BufferConnection


@dataclass(frozen=True)
class PersonalModelRecord:
    """The person's own model as the buffer keeps it: fine-tuned from global model
    ``base_version`` on ``train_windows`` labelled windows; both models scored on the
    ``held_out_windows`` (log loss, accuracy); ``kept``: it scored better and predicts."""

    base_version: int
    arrays: bytes
    train_windows: int
    held_out_windows: int
    global_loss: float
    personal_loss: float
    global_accuracy: float
    personal_accuracy: float
    kept: bool
    made_at: float


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
        self,
        night: str,
        model_version: int,
        efficiency: float,
        quality: str,
        model_kind: str = "global",
        head: str = "full",
    ) -> None:
        """``model_kind``: "global", or "personal" (the person's own model, fine-tuned from
        global model ``model_version``); ``head``: "full", or "no_movement" for a night
        without movement readings (sleepfed.model.logistic)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (night, model_version, efficiency, quality, time.time(), model_kind, head),
            )

    def latest_predictions(self) -> dict[str, tuple[int, float, str, str, str]]:
        """night -> (model version, efficiency, quality, model kind, head), newest model per
        night."""
        rows = self.conn.execute(
            "SELECT night, model_version, efficiency, quality, model_kind, head FROM predictions p "
            "WHERE model_version = "
            "(SELECT MAX(model_version) FROM predictions q WHERE q.night = p.night)"
        ).fetchall()
        return {night: tuple(rest) for night, *rest in rows}

    # -- the person's own model (sleepfed.board.nights.personal_model) --------------------
    def save_personal_model(self, record: PersonalModelRecord) -> None:
        """Keep ``record``, and only it: a personal model of an earlier global model is
        never used again."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM personal_models")
            conn.execute(
                "INSERT INTO personal_models VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    record.base_version,
                    record.arrays,
                    record.train_windows,
                    record.held_out_windows,
                    record.global_loss,
                    record.personal_loss,
                    record.global_accuracy,
                    record.personal_accuracy,
                    int(record.kept),
                    record.made_at,
                ),
            )

    def personal_model(self) -> PersonalModelRecord | None:
        row = self.conn.execute("SELECT * FROM personal_models").fetchone()
        if row is None:
            return None
        return PersonalModelRecord(*row[:8], kept=bool(row[8]), made_at=row[9])

    def retire_personal_model(self) -> int:
        """Delete the personal model; returns how many rows went."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM personal_models").rowcount
