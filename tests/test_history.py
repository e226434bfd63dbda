"""The server's round history: versioned rounds, resume point and rollback (a real SQLite file)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import numpy as np
import pytest

from agent import model
from server.history import History


def _add(history: History, global_round: int, value: float, run_id: str = "r1") -> None:
    arrays = [np.full((1, model.N_FEATURES), value), np.array([value])]
    history.add_round(
        global_round=global_round,
        run_id=run_id,
        server_round=global_round,
        arrays=model.arrays_to_bytes(arrays),
        train_metrics={"train-loss": 0.3},
        eval_metrics={},
        server_metrics={"auc": 0.8},
        train_nodes=3,
        eval_nodes=3,
    )


def test_rounds_persist_and_the_last_active_round_is_the_resume_point(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    history = History(path)
    for r in (1, 2, 3):
        _add(history, r, float(r))
    history.close()
    assert path.stat().st_mode & 0o777 == 0o600
    reopened = History(path)
    last = reopened.last_round()
    assert last is not None and last.global_round == 3
    assert model.arrays_from_bytes(last.arrays)[1][0] == 3.0
    assert [r.train_nodes for r in reopened.rounds()] == [3, 3, 3]


def test_rollback_keeps_the_rounds_but_resumes_from_the_chosen_one(tmp_path: Path) -> None:
    history = History(tmp_path / "history.db")
    for r in (1, 2, 3):
        _add(history, r, float(r))
    assert history.rollback(1) == 2
    last = history.last_round()
    assert last is not None and last.global_round == 1
    # The rolled-back rounds stay in the history, flagged.
    assert [(r.global_round, r.rolled_back) for r in history.rounds()] == [
        (1, False),
        (2, True),
        (3, True),
    ]
    # The next run numbers on from round 1; round 2 exists again, once active.
    _add(history, 2, 20.0, run_id="r2")
    assert [r.global_round for r in history.rounds(include_rolled_back=False)] == [1, 2]
    with pytest.raises(ValueError, match="no active round 7"):
        history.rollback(7)


def test_an_active_round_cannot_be_written_twice(tmp_path: Path) -> None:
    import sqlite3

    history = History(tmp_path / "history.db")
    _add(history, 1, 1.0)
    with pytest.raises(sqlite3.IntegrityError):
        _add(history, 1, 2.0)


def _open_history(path: str, start: Synchronized[int], errors: Queue[str]) -> None:
    while not start.value:
        pass
    try:
        History(path).close()
    except Exception as error:  # reported to the test, which asserts there were none
        errors.put(repr(error))


def test_processes_opening_a_new_history_at_once_all_succeed(tmp_path: Path) -> None:
    """Seen in CI: the ServerApp made a new history while an operator's script opened it; both
    saw the table without the columns added since the first release, both added `privacy`,
    and the second failed with `duplicate column name`. Without the one write transaction 8
    openers failed that way 15 times in 10 attempts; with it but without the folder lock, one
    in five attempts had two openers switch the new file to WAL together: `database is locked`."""
    for attempt in range(10):
        path = tmp_path / f"history{attempt}.db"
        context = multiprocessing.get_context("fork")
        start, errors = context.Value("b", 0), context.Queue()
        openers = [
            context.Process(target=_open_history, args=(str(path), start, errors)) for _ in range(8)
        ]
        for opener in openers:
            opener.start()
        start.value = 1
        for opener in openers:
            opener.join(60)
        assert [opener.exitcode for opener in openers] == [0] * 8
        found = []
        while not errors.empty():
            found.append(errors.get())
        assert found == []
        with sqlite3.connect(path) as conn:
            columns = [row[1] for row in conn.execute("PRAGMA table_info(rounds)")]
        assert columns[-2:] == ["rejected", "privacy"]
        assert len(columns) == len(set(columns)) == 14
