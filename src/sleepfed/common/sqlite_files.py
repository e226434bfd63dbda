"""Opening a SQLite file that other processes may open at the same moment.

SQLite fails with ``database is locked`` instead of waiting when two connections switch a new
file to WAL together, and two processes can both see a schema that is not yet migrated. So a
process sets up its file (create it private, switch journal mode, migrate) while holding an
exclusive ``flock`` on the file's folder. The lock is on the folder, not on the file: closing
any descriptor of the file would drop SQLite's own POSIX locks on it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def setting_up(path: Path) -> Iterator[None]:
    """Hold the set-up lock of ``path``'s folder (made if missing) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def create_private(path: Path) -> None:
    """Create the file with mode 0600 before SQLite touches it (SQLite copies the mode to its
    -wal and -shm files)."""
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
