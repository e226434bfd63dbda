"""Each round of the server's history as the figures an operator reads: when it ended, how
long it took, how many boards took part, the held-out scores, the updates rejected before
aggregation and the privacy budget spent. Shared by ``status``, the metrics and the report.

Rejections and ε are read from the history where it records them (``rejected`` and
``privacy["epsilon"]`` of a round); an older history without them gives None, not 0.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sleepfed.common.sqlite_checks import StateFileError
from sleepfed.server.app.history import History, RoundRecord
from sleepfed.server.fleet.registry_file import open_registry_read_only, registry_path


@dataclass(frozen=True)
class RoundFigures:
    global_round: int
    run_id: str
    server_round: int
    ended_at: float
    duration_seconds: float | None
    train_nodes: int
    eval_nodes: int
    auc: float | None
    loss: float | None
    accuracy: float | None
    train_loss: float | None
    eval_accuracy: float | None
    rejected: int | None  # None: the history does not record rejections
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    epsilon: float | None = None  # cumulative ε spent (differential privacy), None: no DP


def _number(metrics: dict[str, float], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _rejections(record: RoundRecord) -> tuple[int | None, dict[str, int]]:
    rejected = getattr(record, "rejected", None)
    if not isinstance(rejected, list):
        return None, {}
    reasons = Counter(str(r.get("reason", "unknown")) for r in rejected if isinstance(r, dict))
    return len(rejected), dict(reasons)


def _epsilon(record: RoundRecord) -> float | None:
    privacy = getattr(record, "privacy", None)
    if not isinstance(privacy, dict):
        return None
    return _number(privacy, "epsilon")


def figures(records: list[RoundRecord], runs: list[dict[str, object]]) -> list[RoundFigures]:
    """The active rounds' figures, oldest first. A round's duration runs from the previous
    round of its run (or the run's start, for its first round) to its own end."""
    started = {str(r["run_id"]): float(r["started_at"]) for r in runs}  # type: ignore[arg-type]
    out: list[RoundFigures] = []
    previous_end: dict[str, float] = {}
    for record in records:
        if record.rolled_back:
            continue
        since = previous_end.get(record.run_id, started.get(record.run_id))
        duration = record.created_at - since if since is not None else None
        previous_end[record.run_id] = record.created_at
        s, t, e = record.server_metrics, record.train_metrics, record.eval_metrics
        count, reasons = _rejections(record)
        out.append(
            RoundFigures(
                global_round=record.global_round,
                run_id=record.run_id,
                server_round=record.server_round,
                ended_at=record.created_at,
                duration_seconds=duration if duration is None or duration >= 0 else None,
                train_nodes=record.train_nodes,
                eval_nodes=record.eval_nodes,
                auc=_number(s, "auc"),
                loss=_number(s, "loss"),
                accuracy=_number(s, "accuracy"),
                train_loss=_number(t, "train-loss"),
                eval_accuracy=_number(e, "eval-accuracy"),
                rejected=count,
                rejected_by_reason=reasons,
                epsilon=_epsilon(record),
            )
        )
    return out


@dataclass(frozen=True)
class HistoryView:
    """What ``status``, the metrics and the report read from the history."""

    rounds: list[RoundFigures]  # the active rounds' figures
    runs: list[dict[str, object]]
    rolled_back: int
    recoveries: list[dict[str, object]]  # each time it was found damaged and salvaged
    exists: bool


def view_history(path: Path) -> HistoryView:
    """The history file read-only (nothing is written, and a missing file stays missing);
    StateFileError, one sentence naming the file, when it cannot be read."""
    try:
        history = History(path, read_only=True)
    except FileNotFoundError:
        return HistoryView([], [], 0, [], exists=False)
    try:
        records, runs, recoveries = history.rounds(), history.runs(), history.recoveries()
    except (sqlite3.Error, ValueError) as error:  # a sound file with rows we cannot read
        raise StateFileError(path, f"holds rows that cannot be read ({error})") from None
    finally:
        history.close()
    rolled_back = sum(1 for r in records if r.rolled_back)
    return HistoryView(figures(records, runs), runs, rolled_back, recoveries, exists=True)


def read_history(path: Path) -> tuple[list[RoundFigures], list[dict[str, object]], int]:
    """(active rounds' figures, runs, rolled-back round count) of ``view_history``."""
    view = view_history(path)
    return view.rounds, view.runs, view.rolled_back


def board_counts(state_dir: Path) -> dict[str, int] | None:
    """Boards in the registry by status (registered, revoked, pending, revoke-pending), or
    None when the server keeps no registry (node authentication off); StateFileError when
    it cannot be read (it is not touched)."""
    path = registry_path(state_dir)
    try:
        conn = open_registry_read_only(path)
    except FileNotFoundError:
        return None
    try:
        rows = conn.execute("SELECT status, COUNT(*) FROM boards GROUP BY status").fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise StateFileError(path, f"cannot be read ({error})") from None
        rows = []  # a registry made a moment ago, its table not there yet
    finally:
        conn.close()
    counts = {"registered": 0, "revoked": 0, "pending": 0, "revoke-pending": 0}
    counts.update({str(status): int(n) for status, n in rows})
    return counts
