"""Whether a SQLite file of a program's state can be used as it is: readable, undamaged
(``PRAGMA quick_check``: every page read once) and holding that program's tables. Each
problem is one sentence that names the file, for an operator, never a traceback.

What a program does about a problem is its own choice: the server's history is moved aside
and salvaged (sleepfed.server.app.history_file), its board registry is refused until the
operator recovers it (sleepfed.server.fleet.registry_file).
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

from sleepfed.common.sqlite_recovery import is_corrupt


class StateFileError(Exception):
    """A state file that cannot be used as it is; ``str()`` is one sentence naming it.
    ``kind``: ``damaged`` (SQLite found it damaged, or it is not SQLite at all), ``foreign``
    (sound, but not this program's tables), or ``unreadable`` (no permission, busy, ...)."""

    def __init__(
        self, path: Path, problem: str, advice: str = "", kind: str = "unreadable"
    ) -> None:
        self.path = path
        self.problem = problem
        self.kind = kind
        super().__init__(f"{path}: {problem}" + (f"; {advice}" if advice else ""))


def quick_check(conn: sqlite3.Connection) -> str | None:
    """None if the file is sound, else what SQLite found first. A corruption error met on
    the way counts as a finding; any other error is raised."""
    try:
        answer = str(conn.execute("PRAGMA quick_check").fetchone()[0])
    except sqlite3.DatabaseError as error:
        if is_corrupt(error):
            return str(error)
        raise
    if answer == "ok":
        return None
    # its first finding, past the "*** in database main ***" heading
    findings = [line for line in answer.splitlines() if not line.startswith("***")]
    return (findings or [answer])[0][:200]


def schema_problem(conn: sqlite3.Connection, expected: Mapping[str, Iterable[str]]) -> str | None:
    """Why the file does not hold ``expected``'s tables with (at least) their columns, or
    None. A file without any table is a new one; a file with none of the expected tables
    but others is another program's."""
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if tables and not tables & set(expected):
        shown = ", ".join(sorted(tables)[:4])
        return f"not a file of ours (it holds the tables {shown})"
    for table, columns in expected.items():
        if table not in tables:
            continue
        have = {row[1] for row in conn.execute(f'PRAGMA main.table_info("{table}")')}
        missing = [c for c in columns if c not in have]
        if missing:
            more = f" and {len(missing) - 3} more" if missing[3:] else ""
            shown = ", ".join(missing[:3]) + more
            return f"another schema (its table {table} has no column {shown})"
    return None


def damage(finding: str) -> str:
    """What SQLite found wrong with a file, in words."""
    if "not a database" in finding:
        return "not a SQLite database (or its first page is damaged)"
    return f"damaged ({finding})"


def describe(error: BaseException) -> str:
    """An error met opening or reading a state file, in words."""
    if isinstance(error, OSError):
        return f"cannot be opened ({error.strerror or error})"
    if is_corrupt(error):
        return damage(str(error))
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_CANTOPEN:
        return "cannot be opened (no permission, or not a file)"
    if code is not None and code & 0xFF == sqlite3.SQLITE_READONLY:
        return "cannot be written (no permission, or a read-only file system)"
    return f"cannot be read ({error})"


def open_read_only(
    path: Path,
    expected: Mapping[str, Iterable[str]],
    damaged_advice: str = "",
    foreign_advice: str = "",
) -> sqlite3.Connection:
    """A read-only connection to the existing file at ``path`` after it passed the checks
    above; otherwise a StateFileError, the advice given for a damaged file or another
    program's. Nothing is written to the file: a read-only connection does not even copy
    its WAL into it on closing (a writable one would, into a damaged file)."""
    try:
        if path.is_dir():
            raise StateFileError(path, "a folder, not a file")
        with path.open("rb"):  # SQLite would say "unable to open" for any reason
            pass
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise
        raise StateFileError(path, describe(error)) from None
    try:
        # as a URI (the path percent-encoded): mode=ro is only an option of a URI
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as error:
        raise StateFileError(path, describe(error)) from None
    try:
        problem = quick_check(conn)
        if problem is not None:
            raise StateFileError(path, damage(problem), damaged_advice, "damaged")
        wrong = schema_problem(conn, expected)
        if wrong is not None:
            raise StateFileError(path, wrong, foreign_advice, "foreign")
    except sqlite3.Error as error:
        conn.close()
        raise describe_as_error(path, error, damaged_advice) from None
    except StateFileError:
        conn.close()
        raise
    return conn


def describe_as_error(path: Path, error: BaseException, damaged_advice: str) -> StateFileError:
    """``error`` met using the file at ``path``, as a StateFileError of its kind."""
    if is_corrupt(error):
        return StateFileError(path, describe(error), damaged_advice, "damaged")
    return StateFileError(path, describe(error))
