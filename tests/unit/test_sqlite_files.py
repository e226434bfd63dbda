"""Several processes opening the same new SQLite file at the same moment (real files, real
processes): every one of them opens it, and it is set up once.

Seen in CI: the ServerApp made a new history.db while an operator's script opened it; both
saw the rounds table without the columns added since the first release, both added `privacy`,
and the second failed with `duplicate column name`. Without one write transaction for the
schema, 8 openers failed that way 15 times in 10 attempts; with it but without the folder
lock, about one attempt in five had two openers switch the new file to WAL together and fail
with `database is locked`. The board's buffer (the daemon and `sleepfed-agent` commands) had
the same WAL race (1 failure in 20 attempts).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import pytest

from sleepfed.board.buffer.schema import SCHEMA_VERSION
from sleepfed.board.buffer.store import Buffer
from sleepfed.server.app.history import History

OPENERS = 8
ATTEMPTS = 20


def _open(kind: str, path: str, start: Synchronized[int], errors: Queue[str]) -> None:
    while not start.value:  # all spin here, then open together
        pass
    try:
        (History if kind == "history" else Buffer)(path).close()
    except Exception as error:  # reported to the test, which asserts there were none
        errors.put(repr(error))


def _history_is_set_up(conn: sqlite3.Connection) -> None:
    columns = [row[1] for row in conn.execute("PRAGMA table_info(rounds)")]
    assert columns[-2:] == ["rejected", "privacy"]
    assert len(columns) == len(set(columns)) == 14


def _buffer_is_set_up(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


@pytest.mark.parametrize(
    ("kind", "check"), [("history", _history_is_set_up), ("buffer", _buffer_is_set_up)]
)
def test_processes_opening_a_new_file_at_once_all_succeed(
    tmp_path: Path, kind: str, check: Callable[[sqlite3.Connection], None]
) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(ATTEMPTS):
        path = tmp_path / str(attempt) / f"{kind}.db"
        start, errors = context.Value("b", 0), context.Queue()
        openers = [
            context.Process(target=_open, args=(kind, str(path), start, errors))
            for _ in range(OPENERS)
        ]
        for opener in openers:
            opener.start()
        start.value = 1
        for opener in openers:
            opener.join(60)
        assert [opener.exitcode for opener in openers] == [0] * OPENERS
        found = []
        while not errors.empty():
            found.append(errors.get())
        assert found == [], f"attempt {attempt}"
        assert path.stat().st_mode & 0o777 == 0o600
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            check(conn)
