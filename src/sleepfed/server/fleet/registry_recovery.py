"""``sleepfed-server boards recover``: a damaged registry brought back by the operator, who
decides on what can be salvaged; the server never does so by itself
(sleepfed.server.fleet.registry_file says why).

Without ``--yes`` nothing is written: the registry's readable rows are read (through SQLite,
stepping over damaged pages: sleepfed.common.sqlite_recovery) into memory, and every board a
recovery would keep is listed with its status. With ``--yes`` the damaged file is moved aside
(``boards.db.corrupt-<UTC time>``, with its -wal and -shm) and the same rows go into a fresh
registry. Either way:

- a board whose key ``revoked-keys`` lists stays out, whatever its salvaged row says (the row
  may be older than the revocation: a page the disk served stale);
- a row whose board id or key is not valid (a damaged page that still parsed) is dropped;
- a board whose row was on a damaged page is missing, and so refused, until enrolled again.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sleepfed.common.sqlite_checks import StateFileError
from sleepfed.common.sqlite_files import setting_up
from sleepfed.common.sqlite_recovery import Salvage, quarantine, salvage_into
from sleepfed.provisioning.request import RequestError, checked_request
from sleepfed.server.fleet.registry_file import (
    SCHEMA,
    key_id,
    open_registry,
    open_registry_read_only,
    registry_path,
    revoked_keys,
)


def registry_problem(state_dir: Path) -> StateFileError | None:
    """What is wrong with the registry, or None (sound, or none yet)."""
    try:
        open_registry_read_only(registry_path(state_dir)).close()
    except FileNotFoundError:
        return None
    except StateFileError as error:
        return error
    return None


def recover_registry(state_dir: Path, apply: bool) -> list[str]:
    """What a recovery keeps (``apply``: after doing it), as lines for the operator; a
    registry that is sound, missing, or not damaged but unusable (another program's file,
    no permission) is left alone (StateFileError for the last)."""
    path = registry_path(state_dir)
    problem = registry_problem(state_dir)
    if problem is None:
        return [f"{path}: sound (or not made yet); nothing to recover"]
    if problem.kind != "damaged":
        raise problem
    revoked = revoked_keys(state_dir)
    if not apply:
        fresh = sqlite3.connect(":memory:", isolation_level=None)
        fresh.executescript(SCHEMA)
        salvage = salvage_into(path, fresh, ["boards"], time.time())
        head = f"{path}: {problem.problem}. A recovery would keep:"
        tail = [
            "Nothing was changed. If this list is right (revoked boards revoked), run again "
            "with --yes: the damaged file is then moved aside and these boards kept."
        ]
    else:
        with setting_up(path):
            quarantined = quarantine(path)
        fresh = open_registry(path)
        salvage = salvage_into(quarantined, fresh, ["boards"], time.time())
        head = f"{path}: {problem.problem}. Moved aside as {quarantined.name}; kept:"
        tail = ["The server lets these boards in once it runs again (sleepfed-server run)."]
    try:
        boards = _screen(fresh, revoked)
    finally:
        fresh.close()
    return [head, *boards, *_losses(salvage), *tail]


def _screen(conn: sqlite3.Connection, revoked: set[str]) -> list[str]:
    """Drop rows that are not valid, keep revoked keys out; one line per board kept."""
    lines = []
    rows = conn.execute(
        "SELECT board_id, public_key, status, node_id FROM boards ORDER BY board_id"
    ).fetchall()
    for board_id, key, status, node_id in rows:
        try:
            checked_request(str(board_id), str(key))
        except (RequestError, ValueError):
            conn.execute("DELETE FROM boards WHERE board_id = ?", (board_id,))
            lines.append(f"  (a row that is not a valid board dropped: {str(board_id)[:40]!r})")
            continue
        note = ""
        if key_id(str(key)) in revoked and status not in ("revoked", "revoke-pending"):
            # the SuperLink may still know it (a node id): the next sync unregisters it
            status = "revoke-pending" if node_id is not None else "revoked"
            conn.execute(
                "UPDATE boards SET status = ?, changed_at = ? WHERE board_id = ?",
                (status, time.time(), board_id),
            )
            note = " (its row said otherwise; its key is in revoked-keys)"
        lines.append(f"  {board_id:24s} {status}{note}")
    return lines or ["  no board"]


def _losses(salvage: Salvage) -> list[str]:
    stretches = salvage.damaged.get("boards", 0)
    lines = []
    if stretches or salvage.problem:
        lines.append(
            f"Unreadable: {stretches} damaged stretch(es)"
            + (f" ({salvage.problem})" if salvage.problem else "")
            + ". Boards whose rows were there are missing: they are refused until enrolled "
            "again (sleepfed-server boards register); a revoked key stays refused."
        )
    return lines
