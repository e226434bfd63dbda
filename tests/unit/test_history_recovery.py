"""A damaged history (real SQLite files, damaged as an SD card damages them): moved aside with
its WAL, what is readable salvaged into a fresh file the server goes on with, logged once,
and kept for ``status``; a sound file that is not a history is left alone."""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from sleepfed.common.sqlite_checks import StateFileError
from sleepfed.model import logistic as model
from sleepfed.server.app.history import History

ROUNDS = 200
GARBAGE = 8192  # two of SQLite's 4 KB pages
PAGE = 4096


def _add(history: History, global_round: int) -> None:
    history.add_round(
        global_round=global_round,
        run_id="r1",
        server_round=global_round,
        arrays=model.arrays_to_bytes([np.full(model.SHAPE, float(global_round))]),
        train_metrics={"train-loss": 0.3},
        eval_metrics={"eval-accuracy": 0.8},
        server_metrics={"auc": 0.8, "accuracy": 0.7, "balanced_accuracy": 0.7, "windows": 9},
        train_nodes=3,
        eval_nodes=3,
    )


def _history(path: Path, rounds: int = ROUNDS) -> list[tuple[object, ...]]:
    """A history of ``rounds`` rounds of one run; its rounds' rows as the file holds them."""
    history = History(path)
    history.start_run("r1", 0, rounds)
    for r in range(1, rounds + 1):
        _add(history, r)
    history.finish_run("r1", "finished")
    rows = history.conn.execute("SELECT * FROM rounds ORDER BY id").fetchall()
    history.close()
    return rows


def _garbage_in_the_middle(path: Path, seed: int = 17) -> None:
    middle = path.stat().st_size // 2 // PAGE * PAGE
    with path.open("r+b") as file:
        file.seek(middle)
        file.write(random.Random(seed).randbytes(GARBAGE))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recovery_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "ERROR_CLASS", None) == "buffer_corrupt"]


def test_a_history_with_garbage_in_its_middle_is_salvaged_and_the_server_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.db"
    original = {row[0]: row for row in _history(path)}
    _garbage_in_the_middle(path)
    with caplog.at_level(logging.INFO, logger="sleepfed.server"):
        history = History(path)
    # moved aside, by UTC time
    quarantined = sorted(tmp_path.glob("history.db.corrupt-*"))
    assert [q.name for q in quarantined if not q.name.endswith(("-wal", "-shm"))] == [
        quarantined[0].name
    ]
    assert quarantined[0].stat().st_size > GARBAGE
    # what was salvaged is exactly what was written, the last round included
    salvaged = history.conn.execute("SELECT * FROM rounds ORDER BY id").fetchall()
    assert all(row == original[row[0]] for row in salvaged)
    assert 150 <= len(salvaged) < ROUNDS
    last = history.last_round()
    assert last is not None and last.global_round == ROUNDS
    assert model.intercept(model.arrays_from_bytes(last.arrays)) == ROUNDS
    assert [run["status"] for run in history.runs()] == ["finished"]
    # the fresh file is sound, private, and takes the next round
    assert history.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert path.stat().st_mode & 0o777 == 0o600
    _add(history, ROUNDS + 1)
    (recovery,) = history.recoveries()
    history.close()
    assert recovery["quarantined"] == quarantined[0].name
    assert recovery["salvaged"] == {"rounds": len(salvaged), "runs": 1, "recoveries": 0}
    assert recovery["problem"] == "damaged (database disk image is malformed)"
    assert recovery["damaged_stretches"] >= 1 and recovery["dropped_rounds"] == 0
    # one ERROR, with the class, the rows per table and the quarantined file's name
    (logged,) = _recovery_logs(caplog)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    text = logged.getMessage()
    assert f"rounds {len(salvaged)}, runs 1, recoveries 0" in text
    assert quarantined[0].name in text
    assert str(quarantined[0]) == logged.QUARANTINED  # type: ignore[attr-defined]
    # opened again: sound, nothing more to do or log
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sleepfed.server"):
        reopened = History(path)
    assert len(reopened.rounds()) == len(salvaged) + 1 and len(reopened.recoveries()) == 1
    reopened.close()
    assert caplog.records == []


def test_the_wal_goes_aside_with_the_file_and_its_rounds_are_salvaged(tmp_path: Path) -> None:
    """Rounds committed to the WAL only (not yet copied into the file) are salvaged."""
    live = tmp_path / "live" / "history.db"
    _history(live)  # closed: its rounds are in the file
    writer = History(live)
    writer.conn.execute("PRAGMA wal_autocheckpoint = 0")  # the next rounds stay in the WAL
    for r in range(ROUNDS + 1, ROUNDS + 41):
        _add(writer, r)
    copy = tmp_path / "copy" / "history.db"
    copy.parent.mkdir()
    for suffix in ("", "-wal"):  # the card as the power cut left it
        shutil.copyfile(f"{live}{suffix}", f"{copy}{suffix}")
    writer.close()
    _garbage_in_the_middle(copy)
    history = History(copy)
    (recovery,) = history.recoveries()
    rounds = [r.global_round for r in history.rounds()]
    history.close()
    wal = copy.parent / f"{recovery['quarantined']}-wal"
    assert wal.stat().st_size > 40 * 1000
    assert rounds[-40:] == list(range(ROUNDS + 1, ROUNDS + 41)), rounds


def test_a_file_that_is_not_sqlite_is_moved_aside_and_a_fresh_history_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.db"
    path.write_text("rounds,auc\n1,0.8\n")
    with caplog.at_level(logging.ERROR, logger="sleepfed.server"):
        history = History(path)
    assert history.rounds() == [] and history.last_round() is None
    (recovery,) = history.recoveries()
    history.close()
    assert recovery["salvaged"] == {"rounds": 0, "runs": 0, "recoveries": 0}
    assert recovery["salvage_problem"]  # says why nothing was kept
    assert (tmp_path / recovery["quarantined"]).read_text() == "rounds,auc\n1,0.8\n"
    assert len(_recovery_logs(caplog)) == 1


def test_a_salvaged_round_whose_model_does_not_load_is_dropped(tmp_path: Path) -> None:
    """A row that reads but does not load (as a damaged page that still parses gives) is
    not kept: the next run would resume from it."""
    path = tmp_path / "history.db"
    _history(path, 40)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE rounds SET arrays = x'00ff00ff' WHERE global_round = 40")
    _garbage_in_the_middle(path)
    history = History(path)
    (recovery,) = history.recoveries()
    last = history.last_round()
    history.close()
    assert recovery["dropped_rounds"] == 1
    assert last is not None and last.global_round < 40


def test_a_second_recovery_keeps_the_record_of_the_first(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _history(path)
    _garbage_in_the_middle(path, seed=1)
    History(path).close()
    _garbage_in_the_middle(path, seed=2)
    history = History(path)
    records = history.recoveries()
    history.close()
    assert len(records) == 2 and records[0]["at"] <= records[1]["at"]
    assert len(list(tmp_path.glob("history.db.corrupt-*[0-9Z]"))) == 2


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ("CREATE TABLE photos (id INTEGER PRIMARY KEY, jpeg BLOB)", "not a file of ours"),
        ("CREATE TABLE rounds (id INTEGER PRIMARY KEY, weights BLOB)", "has no column"),
    ],
)
def test_a_sound_file_that_is_not_a_history_is_left_as_it_is(
    tmp_path: Path, schema: str, says: str
) -> None:
    """Another program's file, or another version's history: moving it aside would start
    the federation again from round 0; the operator decides."""
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as conn:
        conn.execute(schema)
    before = _digest(path)
    for read_only in (False, True):
        with pytest.raises(StateFileError, match=says) as raised:
            History(path, read_only=read_only)
        assert str(path) in str(raised.value) and raised.value.kind == "foreign"
    assert _digest(path) == before and not list(tmp_path.glob("*.corrupt-*"))


def test_reading_a_damaged_history_leaves_it_for_the_server(tmp_path: Path) -> None:
    """``status``, the metrics and ``report`` only read: a damaged file is reported, not
    recovered, and its bytes stay as they were."""
    path = tmp_path / "history.db"
    _history(path, 60)
    _garbage_in_the_middle(path)
    before = _digest(path)
    with pytest.raises(StateFileError, match=r"damaged.*moves it aside") as raised:
        History(path, read_only=True)
    assert raised.value.kind == "damaged" and "\n" not in str(raised.value)
    assert _digest(path) == before and not list(tmp_path.glob("*.corrupt-*"))
