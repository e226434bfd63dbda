"""A restarted SuperLink does not believe the previous process's nodes are still online.

Flower's own link state (its real SQLite schema) is written and read back here: a node that
was online when the SuperLink stopped is offline after ``mark_leftover_nodes_offline``, so the
next round does not pick it and the returning board can activate at once.
"""

from __future__ import annotations

from pathlib import Path

from flwr.server.superlink.linkstate import LinkState, LinkStateFactory
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager

from sleepfed.server.fleet.superlink import mark_leftover_nodes_offline


def _link_state(database: Path) -> LinkState:
    factory = LinkStateFactory(str(database), NoOpFederationManager(), ObjectStoreFactory())
    return factory.state()


def _statuses(state: LinkState) -> dict[int, str]:
    return {info.node_id: info.status for info in state.get_node_info()}


def test_nodes_left_online_are_offline_after_a_restart(tmp_path: Path) -> None:
    database = tmp_path / "superlink.db"
    before = _link_state(database)
    left_online = before.create_node("owner", "owner", b"board-a key", 30.0)
    never_active = before.create_node("owner", "owner", b"board-b key", 30.0)
    assert before.activate_node(left_online, 30.0)
    # the board's new node, a few seconds later, is refused: the old one still counts
    assert not before.activate_node(left_online, 30.0)

    assert mark_leftover_nodes_offline(database) == 1

    after = _link_state(database)
    assert _statuses(after) == {left_online: "offline", never_active: "registered"}
    assert after.activate_node(left_online, 30.0)  # the returning board gets in at once
    assert mark_leftover_nodes_offline(database) == 1  # and is reset again by the next start


def test_no_database_or_no_node_table_is_not_an_error(tmp_path: Path) -> None:
    assert mark_leftover_nodes_offline(tmp_path / "absent.db") == 0
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert mark_leftover_nodes_offline(empty) == 0
