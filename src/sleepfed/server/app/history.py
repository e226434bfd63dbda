"""The server's history: every round's global model and metrics, versioned, in one SQLite file.

A round is never overwritten: a rollback marks the rounds after the chosen one as rolled
back, and the next run starts from the chosen round's model. The file is checked whenever it
is opened, and a damaged one salvaged: sleepfed.server.app.history_file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepfed.server.app.history_file import (
    ADDED_ROUND_COLUMNS,
    open_for_reading,
    open_for_writing,
    recoveries,
)


@dataclass(frozen=True)
class RoundRecord:
    global_round: int
    run_id: str
    server_round: int
    arrays: bytes
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    server_metrics: dict[str, float]
    train_nodes: int
    eval_nodes: int
    created_at: float
    rolled_back: bool
    # Updates rejected before aggregation: [{"node": id, "reason": ..., "detail": ...}]
    rejected: list[dict[str, object]] = field(default_factory=list)
    # Differential privacy of this round's model: noise multiplier, clipping norm, and the
    # cumulative epsilon at delta spent by every DP round so far (see sleepfed.server.app.privacy).
    privacy: dict[str, float] = field(default_factory=dict)


class History:
    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """``read_only``: nothing is written, migrated or recovered (``status``, metrics,
        ``report``); a missing file raises FileNotFoundError. Either way a file that cannot
        be used raises StateFileError (sleepfed.server.app.history_file)."""
        self.path = Path(path)
        self.conn = open_for_reading(self.path) if read_only else open_for_writing(self.path)
        self._tables = {
            name for (name,) in self.conn.execute("SELECT name FROM sqlite_master")
        }  # both tables, or (a new file read before it was set up) none
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(rounds)")}
        # an older file read without migrating it: the added columns' defaults stand in
        self._added = ", ".join(
            name if name in have else f"{sql_type.rsplit(' ', 1)[-1]} AS {name}"
            for name, sql_type in ADDED_ROUND_COLUMNS
        )

    def close(self) -> None:
        self.conn.close()

    def last_round(self) -> RoundRecord | None:
        rows = self.rounds(include_rolled_back=False)
        return rows[-1] if rows else None

    def add_round(
        self,
        *,
        global_round: int,
        run_id: str,
        server_round: int,
        arrays: bytes,
        train_metrics: dict[str, float],
        eval_metrics: dict[str, float],
        server_metrics: dict[str, float],
        train_nodes: int,
        eval_nodes: int,
        rejected: list[dict[str, object]] | None = None,
        privacy: dict[str, float] | None = None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO rounds (global_round, run_id, server_round, arrays, train_metrics, "
            "eval_metrics, server_metrics, train_nodes, eval_nodes, created_at, rejected, "
            "privacy) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                global_round,
                run_id,
                server_round,
                arrays,
                json.dumps(train_metrics),
                json.dumps(eval_metrics),
                json.dumps(server_metrics),
                train_nodes,
                eval_nodes,
                time.time(),
                json.dumps(rejected or []),
                json.dumps(privacy or {}),
            ),
        )

    def record_evaluation(
        self, global_round: int, eval_metrics: dict[str, float], eval_nodes: int, replace: bool
    ) -> bool:
        """The boards' scores of an active round's model, which arrive after the round was
        added (with the next round's updates, or in the run's last message). An existing
        evaluation is kept unless ``replace``; returns whether the row changed."""
        keep = "" if replace else " AND eval_nodes = 0"
        cursor = self.conn.execute(
            "UPDATE rounds SET eval_metrics = ?, eval_nodes = ? "
            f"WHERE global_round = ? AND rolled_back = 0{keep}",
            (json.dumps(eval_metrics), eval_nodes, global_round),
        )
        return cursor.rowcount > 0

    def rounds(self, include_rolled_back: bool = True) -> list[RoundRecord]:
        sql = (
            "SELECT global_round, run_id, server_round, arrays, train_metrics, eval_metrics, "
            f"server_metrics, train_nodes, eval_nodes, created_at, rolled_back, {self._added} "
            "FROM rounds"
        )
        if not include_rolled_back:
            sql += " WHERE rolled_back = 0"
        sql += " ORDER BY id"
        if "rounds" not in self._tables:
            return []
        return [
            RoundRecord(
                r[0],
                r[1],
                r[2],
                r[3],
                json.loads(r[4]),
                json.loads(r[5]),
                json.loads(r[6]),
                r[7],
                r[8],
                r[9],
                bool(r[10]),
                json.loads(r[11]),
                json.loads(r[12]),
            )
            for r in self.conn.execute(sql)
        ]

    def rollback(self, to_round: int) -> int:
        """Mark every active round after ``to_round`` as rolled back; returns how many."""
        if (
            to_round > 0
            and not self.conn.execute(
                "SELECT 1 FROM rounds WHERE global_round = ? AND rolled_back = 0", (to_round,)
            ).fetchone()
        ):
            raise ValueError(f"no active round {to_round} in {self.path}")
        cursor = self.conn.execute(
            "UPDATE rounds SET rolled_back = 1 WHERE global_round > ? AND rolled_back = 0",
            (to_round,),
        )
        return cursor.rowcount

    def interrupt_unfinished_runs(self) -> int | None:
        """Mark runs still 'running' (the server was killed mid-run) as 'interrupted';
        returns the global round the latest of them planned to end at, or None."""
        rows = self.conn.execute(
            "SELECT start_round + planned_rounds FROM runs WHERE status = 'running' "
            "ORDER BY started_at"
        ).fetchall()
        if not rows:
            return None
        self.conn.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = ? WHERE status = 'running'",
            (time.time(),),
        )
        return int(rows[-1][0])

    def reopen_run(self, run_id: str) -> None:
        """The run did not end, whatever its ServerApp wrote last (it was killed with its
        SuperLink): it is running again until the next run marks it interrupted and does its
        remaining rounds."""
        self.conn.execute(
            "UPDATE runs SET status = 'running', finished_at = NULL WHERE run_id = ?", (run_id,)
        )

    def start_run(self, run_id: str, start_round: int, planned_rounds: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, NULL, 'running', ?, ?)",
            (run_id, time.time(), start_round, planned_rounds),
        )

    def finish_run(self, run_id: str, status: str) -> None:
        self.conn.execute(
            "UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ?",
            (time.time(), status, run_id),
        )

    def recoveries(self) -> list[dict[str, Any]]:
        """Each time this history was found damaged and salvaged, oldest first."""
        return recoveries(self.conn)

    def runs(self) -> list[dict[str, object]]:
        if "runs" not in self._tables:
            return []
        cursor = self.conn.execute("SELECT * FROM runs ORDER BY started_at")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]
