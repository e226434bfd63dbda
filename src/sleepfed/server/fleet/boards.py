"""The server's registry of enrolled boards (SQLite, in the state directory).

The registry is the source of truth; the SuperLink follows it. Registering or revoking while
the SuperLink runs takes effect at once (Flower's Control API, the requests of ``flwr
supernode register`` / ``unregister``: sleepfed.server.fleet.control_api); otherwise the
change is pending and ``sleepfed-server run`` applies it when its SuperLink is up. A
SuperLink whose state is in memory starts knowing no board: every enrolled board is
registered with it again (``forget_superlink``, then ``sync``). A revoked
key is never registered again (the registry refuses it, and so does ``revoked-keys``, its
second record of revocations, should ``boards.db`` lose or regress the row; Flower too, within
one SuperLink's life): a revoked board needs a new key pair (``sleepfed-enroll --new-key``).
A damaged registry is never used: sleepfed.server.fleet.registry_file.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from sleepfed.provisioning.request import (
    EnrollmentRequest,
    RequestError,
    checked_request,
)
from sleepfed.server.fleet.control_api import ControlApi, ControlApiError
from sleepfed.server.fleet.registry_file import (
    is_revoked,
    key_id,
    open_registry,
    record_revoked,
    registry_path,
    remember_revocations,
    revoked_keys,
)
from sleepfed.server.ops.config import ServerConfig

log = logging.getLogger("sleepfed.server")


class RegistryError(RequestError):
    """A registry change that cannot be made (or a request it cannot take)."""


def parse_csv(path: Path) -> list[EnrollmentRequest]:
    """A fleet's requests as CSV with the columns ``board_id,public_key``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"board_id", "public_key"} <= set(rows[0]):
        raise RegistryError(f"{path}: needs the columns board_id,public_key")
    return [checked_request(r["board_id"].strip(), r["public_key"].strip()) for r in rows]


class Registry:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sync_failures = 0
        # a damaged registry raises StateFileError here: see registry_file
        self.conn = open_registry(registry_path(config.state_dir))
        try:
            remember_revocations(self.conn, config.state_dir)
        except BaseException:
            self.conn.close()
            raise
        self.control = ControlApi(config)  # our SuperLink's, opened at the first sync

    def close(self) -> None:
        self.control.close()
        self.conn.close()

    def boards(self) -> list[dict[str, object]]:
        cursor = self.conn.execute("SELECT * FROM boards ORDER BY board_id")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def add(self, request: EnrollmentRequest) -> str:
        """Record a request; returns what happened (added / unchanged)."""
        row = self.conn.execute(
            "SELECT public_key, status FROM boards WHERE board_id = ?", (request.board_id,)
        ).fetchone()
        now = time.time()
        if row is not None:
            key, status = row
            if key == request.public_key and status in ("pending", "registered"):
                return "unchanged"
            if status not in ("revoked", "revoke-pending"):
                raise RegistryError(
                    f"board {request.board_id} is enrolled with another key: revoke it first"
                )
            self._refuse_revoked(request, revoked=key == request.public_key)
            self.conn.execute(
                "UPDATE boards SET public_key = ?, status = 'pending', node_id = NULL, "
                "changed_at = ? WHERE board_id = ?",
                (request.public_key, now, request.board_id),
            )
            return "re-enrolled"
        other = self.conn.execute(
            "SELECT board_id FROM boards WHERE public_key = ?", (request.public_key,)
        ).fetchone()
        if other is not None:
            raise RegistryError(f"this key already belongs to board {other[0]}")
        self._refuse_revoked(request)
        self.conn.execute(
            "INSERT INTO boards VALUES (?, ?, 'pending', NULL, ?, ?)",
            (request.board_id, request.public_key, now, now),
        )
        return "added"

    def _refuse_revoked(self, request: EnrollmentRequest, revoked: bool = False) -> None:
        """``revoked``: the registry's row says so; revoked-keys is asked too (a row lost or
        regressed with a damaged registry)."""
        if revoked or is_revoked(self.config.state_dir, request.public_key):
            raise RegistryError(
                f"board {request.board_id}: this key was revoked; the board needs a new key"
            )

    def revoke(self, board_id: str) -> None:
        row = self.conn.execute(
            "SELECT status, public_key FROM boards WHERE board_id = ?", (board_id,)
        ).fetchone()
        if row is None:
            raise RegistryError(f"no board {board_id}")
        if row[0] in ("revoked", "revoke-pending"):
            return
        # on the disk in revoked-keys first: a registry damaged from here on still knows
        record_revoked(self.config.state_dir, [(board_id, str(row[1]))])
        status = "revoked" if row[0] == "pending" else "revoke-pending"
        self.conn.execute(
            "UPDATE boards SET status = ?, changed_at = ? WHERE board_id = ?",
            (status, time.time(), board_id),
        )

    # -- the SuperLink follows the registry ----------------------------------------------
    def forget_superlink(self) -> list[str]:
        """A new SuperLink whose state is in memory knows no node: every registered board is
        pending again (registered by the next sync, with its new node id) and a revocation
        still pending is done (its key is never registered again); returns those revoked."""
        now = time.time()
        self.conn.execute(
            "UPDATE boards SET status = 'pending', node_id = NULL, changed_at = ? "
            "WHERE status = 'registered'",
            (now,),
        )
        revoked = [
            str(row[0])
            for row in self.conn.execute(
                "SELECT board_id FROM boards WHERE status = 'revoke-pending' ORDER BY board_id"
            )
        ]
        self.conn.execute(
            "UPDATE boards SET status = 'revoked', changed_at = ? WHERE status = 'revoke-pending'",
            (now,),
        )
        return [f"revoked {board} (never registered with this SuperLink)" for board in revoked]

    def sync(self) -> list[str]:
        """Apply pending registrations and revocations to the running SuperLink.

        Each board is applied on its own: one that fails (the SuperLink refuses the key, the
        Control API request fails) is logged, counted in ``sync_failures`` and tried again at
        the next sync, and does not hold up the boards after it."""
        done = []
        self.sync_failures = 0
        revoked = revoked_keys(self.config.state_dir)
        for board in self.boards():
            board_id, status = str(board["board_id"]), board["status"]
            try:
                if status in ("pending", "registered") and key_id(str(board["public_key"])) in (
                    revoked
                ):
                    done.append(self._enforce_revocation(board_id, board["node_id"]))
                elif status == "pending":
                    done.append(self._register(board_id, str(board["public_key"])))
                elif status == "revoke-pending":
                    done.append(self._unregister(board_id, str(board["node_id"])))
            except (RegistryError, ControlApiError) as error:
                self.sync_failures += 1
                log.error("board %s (%s) not applied to the SuperLink: %s", board_id, status, error)
        return done

    def _register(self, board_id: str, public_key: str) -> str:
        node_id = self.control.register(public_key, board_id)
        updated = self.conn.execute(
            "UPDATE boards SET status = 'registered', node_id = ?, changed_at = ? "
            "WHERE board_id = ? AND status = 'pending'",
            (str(node_id), time.time(), board_id),
        ).rowcount
        if not updated:  # revoked while its registration was under way
            self.control.unregister(node_id)
            return f"revoked {board_id} during its registration (node {node_id} unregistered)"
        return f"registered {board_id} (node {node_id})"

    def _enforce_revocation(self, board_id: str, node_id: object) -> str:
        """A board whose key revoked-keys lists, yet whose row would let it in: the row is
        older than the revocation (restored, or a page the disk served stale)."""
        log.error(
            "board %s: its key was revoked, yet the registry lists it as enrolled: kept out",
            board_id,
        )
        if (
            node_id is not None
            and self.conn.execute(
                "SELECT 1 FROM boards WHERE board_id = ? AND status = 'registered'", (board_id,)
            ).fetchone()
        ):
            return self._unregister(board_id, str(node_id))
        self.conn.execute(
            "UPDATE boards SET status = 'revoked', changed_at = ? WHERE board_id = ?",
            (time.time(), board_id),
        )
        return f"revoked {board_id} again (its key is in revoked-keys)"

    def _unregister(self, board_id: str, node_id: str) -> str:
        self.control.unregister(int(node_id))
        self.conn.execute(
            "UPDATE boards SET status = 'revoked', changed_at = ? WHERE board_id = ?",
            (time.time(), board_id),
        )
        return f"revoked {board_id} (node {node_id})"
