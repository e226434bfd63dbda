"""The board registry's files: ``boards.db`` (SQLite), checked whenever it is opened, and
``revoked-keys``, every key ever revoked, one line each, appended and fsync'ed.

The registry decides who may join, so a damaged one fails closed: it is never opened for
use (``PRAGMA quick_check`` at every open; a file that is not SQLite, or holds other
tables, likewise), nothing is written to it, ``sleepfed-server run`` does not start (or
stops: its SuperLink, whose state is in memory, goes with it, and no board is registered),
and every command that needs it says so in one sentence (sleepfed.server.ops.exit_codes,
EXIT_STATE). Only the operator brings it back, after looking at what can be salvaged
(``sleepfed-server boards recover``, sleepfed.server.fleet.registry_recovery).

``revoked-keys`` is a second record of revocations, in another file: a revocation lost with
a damaged page of ``boards.db`` (or a page an SD card served stale) is still in it, and a key
in it is never registered again, salvaged or re-enrolled. A line damaged in it matches no
key (that revocation is then only in ``boards.db``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sleepfed.common.private_files import ensure_private_dir
from sleepfed.common.sqlite_checks import (
    StateFileError,
    describe,
    describe_as_error,
    open_read_only,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS boards (
    board_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'registered', 'revoke-pending', 'revoked')),
    node_id TEXT,
    enrolled_at REAL NOT NULL,
    changed_at REAL NOT NULL
);
"""
EXPECTED = {
    "boards": ("board_id", "public_key", "status", "node_id", "enrolled_at", "changed_at"),
}
REGISTRY_NAME = "boards.db"
REVOKED_NAME = "revoked-keys"
DAMAGED_ADVICE = "no board may join until it is recovered (sleepfed-server boards recover)"
_NOT_OURS_ADVICE = "no board may join until it is moved away (boards are then enrolled again)"


def registry_path(state_dir: Path) -> Path:
    return state_dir / REGISTRY_NAME


def open_registry(path: Path) -> sqlite3.Connection:
    """The registry at ``path``, made if missing; StateFileError if it is damaged, not a
    registry or unreadable (then it is left exactly as it was)."""
    try:
        ensure_private_dir(path.parent)  # 0700: the registry holds every board's key
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    except OSError as error:
        raise StateFileError(path, describe(error)) from None
    # checked read-only first: nothing, not even its WAL, is written into a damaged file
    open_read_only(path, EXPECTED, DAMAGED_ADVICE, _NOT_OURS_ADVICE).close()
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as error:
        raise StateFileError(path, describe(error)) from None
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)
    except sqlite3.Error as error:
        conn.close()
        raise describe_as_error(path, error, DAMAGED_ADVICE) from None
    return conn


def open_registry_read_only(path: Path) -> sqlite3.Connection:
    """A read-only look at the existing registry (FileNotFoundError if there is none)."""
    return open_read_only(path, EXPECTED, DAMAGED_ADVICE, _NOT_OURS_ADVICE)


def key_id(public_key: str) -> str:
    """A key as compared: its type and data, without a comment."""
    return " ".join(public_key.split()[:2])


def revoked_keys(state_dir: Path) -> set[str]:
    """Every key the ``revoked-keys`` file lists."""
    try:
        text = (state_dir / REVOKED_NAME).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return set()
    except OSError as error:
        raise StateFileError(state_dir / REVOKED_NAME, describe(error)) from None
    return {
        key_id(fields[1]) for line in text.splitlines() if len(fields := line.split(" ", 1)) == 2
    }


def is_revoked(state_dir: Path, public_key: str) -> bool:
    return key_id(public_key) in revoked_keys(state_dir)


def record_revoked(state_dir: Path, entries: list[tuple[str, str]]) -> None:
    """Append ``(board_id, public_key)`` lines to ``revoked-keys``, on the disk before this
    returns: the registry's own update comes after it."""
    if not entries:
        return
    path = state_dir / REVOKED_NAME
    data = "".join(f"{board_id} {key_id(key)}\n" for board_id, key in entries).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)  # the file's name too, when it was just made
    finally:
        os.close(folder)


def remember_revocations(conn: sqlite3.Connection, state_dir: Path) -> None:
    """Every revocation the registry holds is in ``revoked-keys`` too (a registry from
    before the file was kept, or a revocation whose line was lost)."""
    listed = revoked_keys(state_dir)
    rows = conn.execute(
        "SELECT board_id, public_key FROM boards WHERE status IN ('revoked', 'revoke-pending') "
        "ORDER BY board_id"
    ).fetchall()
    record_revoked(state_dir, [(str(b), str(k)) for b, k in rows if key_id(str(k)) not in listed])
