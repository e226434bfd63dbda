"""The FedBuff loop on a Flower Grid (sleepfed.server.app.fedbuff_loop), with the boards' real
ClientApp over prepared buffers in this process: a slow board's update arrives stale and is
discounted, a malicious board's updates are rejected, and no board ever has two tasks."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.training import client_app
from sleepfed.common.packed_arrays import pack, unpack
from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset, walch_subjects
from sleepfed.server.app.fedbuff import Contribution, FedBuffBuffer
from sleepfed.server.app.fedbuff_loop import run_fedbuff_loop
from sleepfed.server.app.fedbuff_run import run_fedbuff
from sleepfed.server.app.privacy import PrivacySettings, dp_rules
from sleepfed.server.app.strategies import StrategySettings
from sleepfed.server.app.update_validation import Rejection, ValidationRules
from sleepfed.server.research.simulation import InProcessGrid, prepare_buffers

SLOW, MALICIOUS = 3, 4


class FleetGrid(InProcessGrid):
    """Node SLOW's replies come only after 3 pulls; node MALICIOUS sends NaN updates. Every
    push is checked: a node's previous message must have been answered."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.held: dict[str, int] = {}
        self.last_sent: dict[int, str] = {}
        self.delivered: set[str] = set()
        self.overlaps: list[int] = []  # nodes sent a task while their last one was open

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:
            node = message.metadata.dst_node_id
            previous = self.last_sent.get(node)
            if previous is not None and previous not in self.delivered:
                self.overlaps.append(node)
        ids = list(super().push_messages(messages))
        for message, message_id in zip(messages, ids, strict=True):
            node = message.metadata.dst_node_id
            self.last_sent[node] = message_id
            if node == SLOW:
                self.held[message_id] = 3
            if node == MALICIOUS:
                reply = self._replies[message_id]
                content = unpack(reply.content)
                content["arrays"] = type(content["arrays"])([np.full(model.SHAPE, np.nan)])
                reply.content = pack(content)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ready = []
        for message_id in message_ids:
            if self.held.get(message_id, 0) > 0:
                self.held[message_id] -= 1
            else:
                ready.append(message_id)
        replies = list(super().pull_messages(ready))
        self.delivered |= {r.metadata.reply_to_message_id for r in replies}
        return replies


def _boards(tmp_path: Path, walch_dir: Path, count: int) -> tuple[list[Path], dict[str, str]]:
    """``count`` prepared buffers of real people's nights, and the run config naming them."""
    subjects = walch_subjects(walch_dir)[:count]
    nights = walch_dataset(walch_dir, subjects)
    paths = prepare_buffers(tmp_path / "boards", [nights[s] for s in subjects])
    return paths, {client_app.SIM_BUFFER_DIR_KEY: str(tmp_path / "boards")}


def test_versions_from_updates_as_they_arrive(tmp_path: Path, walch_dir: Path) -> None:
    paths, run_config = _boards(tmp_path, walch_dir, 4)
    grid = FleetGrid(client_app.app, 4, run_config)
    buffer = FedBuffBuffer(model.initial_arrays(), buffer_size=2, max_staleness=3)
    made: list[tuple[int, list[Contribution]]] = []
    counts = run_fedbuff_loop(
        grid,
        buffer,
        versions=6,
        train_config={"local-iterations": 20, "learning-rate": 0.5},
        rules=ValidationRules(),
        task_timeout=600.0,
        on_version=lambda version, used: made.append((version, list(used))),
        poll_seconds=0.0,
    )
    assert [v for v, _ in made] == [1, 2, 3, 4, 5, 6]
    contributors = [c.node_id for _, used in made for c in used]
    assert MALICIOUS not in contributors and counts.rejected >= 3
    assert set(contributors) == {1, 2, SLOW}
    slow = [c for _, used in made for c in used if c.node_id == SLOW]
    assert slow and all(c.staleness >= 1 for c in slow)  # discounted by 1/sqrt(1 + staleness)
    assert grid.overlaps == []  # never two tasks in flight on one board
    # every message sent was answered and counted once, but the last one of each board
    answered = counts.taken + counts.rejected + counts.stale + counts.errors + counts.expired
    assert 0 <= counts.sent - answered <= 4 and counts.expired == 0
    assert np.isfinite(buffer.model[0]).all()
    # a board keeps the version its train message carried (model-round) and scores it
    kept = Buffer(paths[0], readonly=True)
    try:
        assert {r[1] for r in kept.model_receipts()} >= {1, 2}
    finally:
        kept.close()


class SilentNodeGrid(FleetGrid):
    """Node SLOW never answers (its node went away)."""

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        silent = {i for n, i in self.last_sent.items() if n == SLOW}
        return super().pull_messages([i for i in message_ids if i not in silent])


def test_a_board_that_never_answers_is_freed_and_a_run_ends_in_its_time(
    tmp_path: Path, walch_dir: Path
) -> None:
    _, run_config = _boards(tmp_path, walch_dir, 4)
    grid = SilentNodeGrid(client_app.app, 4, run_config)
    buffer = FedBuffBuffer(model.initial_arrays(), buffer_size=2, max_staleness=3)
    counts = run_fedbuff_loop(
        grid,
        buffer,
        versions=10_000,  # more than it can make before its deadline
        train_config={"local-iterations": 5},
        rules=ValidationRules(),
        task_timeout=0.2,
        on_version=lambda version, used: None,
        deadline=time.monotonic() + 1.5,
        poll_seconds=0.05,
    )
    assert counts.expired >= 2  # the silent board's tasks, each freed after 0.2 s
    # only the silent board got a task while its last was unanswered: once freed
    assert set(grid.overlaps) == {SLOW}
    assert counts.expired - 1 <= len(grid.overlaps) <= counts.expired
    assert 1 <= buffer.version < 10_000  # the others made versions; the deadline ended it


class LoudBoardsGrid(FleetGrid):
    """As a malicious enrolled board would: node SLOW answers in time but scales its update
    1000 times (finite, well formed); node MALICIOUS claims 50 000 training windows (under the
    100 000 cap)."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        sent = {m.metadata.dst_node_id: unpack(m.content)["arrays"] for m in messages}
        ids = list(InProcessGrid.push_messages(self, messages))
        for message, message_id in zip(messages, ids, strict=True):
            node = message.metadata.dst_node_id
            reply = self._replies[message_id]
            content = unpack(reply.content)
            if node == SLOW:
                base = sent[node].to_numpy_ndarrays()[0]
                update = content["arrays"].to_numpy_ndarrays()[0]
                content["arrays"] = type(content["arrays"])([base + 1000.0 * (update - base)])
            if node == MALICIOUS:
                content["metrics"]["num-examples"] = 50_000
            reply.content = pack(content)
        return ids


def test_an_outsized_update_or_claim_is_rejected_without_a_round_beside_it(
    tmp_path: Path, walch_dir: Path
) -> None:
    _, run_config = _boards(tmp_path, walch_dir, 5)
    grid = LoudBoardsGrid(client_app.app, 5, run_config)
    buffer = FedBuffBuffer(model.initial_arrays(), buffer_size=3, max_staleness=3)
    made: list[list[Contribution]] = []
    counts = run_fedbuff_loop(
        grid,
        buffer,
        versions=6,
        train_config={"local-iterations": 20, "learning-rate": 0.5},
        rules=ValidationRules(),
        task_timeout=600.0,
        on_version=lambda version, used: made.append(list(used)),
        poll_seconds=0.0,
    )
    contributors = {c.node_id for used in made for c in used}
    # the honest boards 1, 2 and 5 made every version; the loud ones, once three updates
    # had been accepted to compare them with, never counted
    assert contributors == {1, 2, 5}, contributors
    assert counts.rejected >= 8  # each of the two, in each of the later versions' time
    assert np.abs(buffer.model[0]).max() < 50  # a 1000x update would have thrown it far


class UnclippedBoardGrid(FleetGrid):
    """Records every train config and each reply's update norm; node MALICIOUS does not clip
    (it sends its clipped update 10 times over), node SLOW answers after 3 pulls."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.configs: list[dict[str, object]] = []
        self.honest: list[tuple[float, dict[str, object]]] = []  # norm, metrics

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        sent = {m.metadata.dst_node_id: unpack(m.content) for m in messages}
        ids = list(InProcessGrid.push_messages(self, messages))
        for message, message_id in zip(messages, ids, strict=True):
            node = message.metadata.dst_node_id
            if message.metadata.message_type != "train":
                continue
            if node == SLOW:
                self.held[message_id] = 3
            self.configs.append(dict(sent[node]["config"]))
            reply = self._replies[message_id]
            content = unpack(reply.content)
            base = sent[node]["arrays"].to_numpy_ndarrays()[0]
            update = content["arrays"].to_numpy_ndarrays()[0] - base
            if node == MALICIOUS:
                content["arrays"] = type(content["arrays"])([base + 10.0 * update])
            else:
                self.honest.append((float(np.linalg.norm(update)), dict(content["metrics"])))
            reply.content = pack(content)
        return ids


def test_under_dp_boards_clip_send_no_scalar_and_count_once_a_version(
    tmp_path: Path, walch_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, run_config = _boards(tmp_path, walch_dir, 5)
    grid = UnclippedBoardGrid(client_app.app, 5, run_config)
    clip = 0.05  # well under a trained update's norm: every honest board clips
    privacy = PrivacySettings(dp=True, clipping_norm=clip, noise_multiplier=0.5)
    made: list[list[Contribution]] = []
    rejections: list[Rejection] = []

    def persist(version: int, arrays: object, used: list[Contribution], *rest: object) -> None:
        made.append(list(used))
        rejections.extend(rest[-1])  # type: ignore[call-overload]  # rejected in its time

    with caplog.at_level(logging.WARNING, logger="sleepfed.server"):
        buffer = run_fedbuff(
            grid,
            initial=model.initial_arrays(),
            rounds=(0, 4),
            settings=StrategySettings(name="fedbuff", buffer_size=4, max_staleness=3),
            rules=dp_rules(ValidationRules(), clip),
            training={"local-iterations": 20, "learning-rate": 0.5},
            round_timeout=15.0,  # the run's deadline: 4 x 15 s
            persist=persist,
            privacy=privacy,
        )
    assert buffer.version == 4 and len(made) == 4
    assert all(c[KEY_CLIPPING_NORM] == clip for c in grid.configs)  # every board asked to clip
    # each honest update clipped to C, and no scalar of the board left it
    assert grid.honest and all(n <= clip * (1 + 1e-6) for n, _ in grid.honest)
    assert all(not any(metrics.values()) for _, metrics in grid.honest)
    # one update per board a version, each weighing 1: the four honest boards, the fast ones
    # waiting for the slow one
    for used in made:
        assert sorted(c.node_id for c in used) == [1, 2, SLOW, 5]
        assert all(c.weight == 1.0 for c in used) and MALICIOUS not in {c.node_id for c in used}
    assert f"rejected the update of node {MALICIOUS} (norm-cap" in caplog.text
    # and each version's row names the updates rejected in its time
    assert rejections and {(r.node_id, r.reason) for r in rejections} == {(MALICIOUS, "norm-cap")}
