"""A malicious *enrolled* board against the aggregation: a real agent, with its own key and in
the server's registry, whose installed ClientApp lies about the scalars it reports
(tests/support/adversarial_client_app.py). Its arrays are an ordinary update each time: only its
``num-examples`` and ``good-share`` are forged, the two scalars that weigh in the aggregation
(FedAvg's weights, and π, the prior of every board's night estimates). One real federation
of three boards and three rounds, one attack per round.

And a curious server under SecAgg+: everything two real boards send is captured after TLS
(``wire_capture.CaptureProxy``) and decoded; none of their scalars is in it, yet the model
is their FedAvg weighted by their window counts (the weights travel inside the masks)."""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.proto import fleet_pb2, message_pb2
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from sleepfed.board.buffer.store import Buffer
from sleepfed.board.nights.labelled_windows import labelled_windows
from sleepfed.board.training import client_app
from sleepfed.model import logistic as model
from sleepfed.server.app.history import History
from sleepfed.server.ops.config import load_config
from sleepfed.server.ops.metrics import ServerCollector
from tests.support.federation_helpers import (
    free_port,
    pki,
    start_agent,
    start_server,
    stop,
    wait_for,
    write_board,
    write_server_config,
)
from tests.support.privacy_helpers import (
    append_to,
    board_update,
    fedavg,
    max_abs_difference,
    patient,
    start_adversarial_agent,
)
from tests.support.wire_capture import CaptureProxy, http_exchanges

Attack = Callable[[str, str, str, bool], None]
BOARD_SUBJECTS = ["4426783", "8258170", "9106476"]  # the last one is the attacker's
HELD_OUT = ["1066528", "2638030"]
# (server round, what the board sends, the attack's name, the reason it must be rejected for)
ATTACKS = [
    (1, "num-examples=1e300", "num-examples = 1e300", "weight-cap"),
    (2, "good-share=nan", "good-share = NaN", "good-share"),
    (3, "good-share=7", "good-share = 7", "good-share"),
]


def _good_share(board_config: Path) -> float:
    """The board's own share of Good training windows (what its ClientApp reports)."""
    buffer = Buffer(board_config.parent / "buffer.db", readonly=True)
    try:
        _, labels, held_out, _ = labelled_windows(buffer)
    finally:
        buffer.close()
    return float(labels[~held_out].mean())


def _rejections_by_reason(server_config: Path) -> dict[str, float]:
    """The server's Prometheus counter of rejected updates, by reason (as scraped)."""
    collector = ServerCollector(load_config(server_config), lambda: False)
    return {
        sample.labels["reason"]: sample.value
        for family in collector.collect()
        if family.name == "sleepfed_server_rejected_updates_by_reason"
        for sample in family.samples
    }


@pytest.mark.slow
def test_a_board_forging_its_scalars_outweighs_no_one(
    tmp_path: Path, walch_dir: Path, attack: Attack
) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=3, min_nodes=3, walch_dir=walch_dir, held_out=HELD_OUT
    )
    boards = [
        patient(
            write_board(tmp_path, f"board{i}", port, certs["ca"], walch_dir=walch_dir, subject=s)
        )
        for i, s in enumerate(BOARD_SUBJECTS)
    ]
    honest = boards[:2]
    plan = ",".join(f"{rnd}:{sent}" for rnd, sent, _, _ in ATTACKS)
    server = start_server(server_config)
    agents = [start_agent(b) for b in honest]
    agents.append(start_adversarial_agent(boards[2], plan))
    try:
        status = server.wait(720)
        log = (tmp_path / "server" / "server.log").read_text()
        if status != 0:
            for _, _, name, reason in ATTACKS:
                attack(name, f"rejected {reason}", "the run failed", False)
            raise AssertionError(log[-3000:])
        history = History(tmp_path / "server" / "state" / "history.db")
        rounds = history.rounds()
        assert [r.global_round for r in rounds] == [1, 2, 3]
        shares = [_good_share(b) for b in honest]
        low, high = min(shares), max(shares)
        previous = model.initial_arrays()
        bad_nodes = set()
        outcomes = []
        for (_, _, name, reason), rnd in zip(ATTACKS, rounds, strict=True):
            expected = fedavg([board_update(b, previous) for b in honest])
            got = model.arrays_from_bytes(rnd.arrays)
            difference = max_abs_difference(got, expected)
            reasons = [str(r["reason"]) for r in rnd.rejected]
            bad_nodes.update(r["node"] for r in rnd.rejected)
            pi = rnd.train_metrics.get(client_app.GOOD_SHARE_KEY, math.nan)
            held = reasons == [reason] and difference < 1e-9 and low <= pi <= high
            attack(
                name,
                f"rejected {reason}; model = honest FedAvg; π in [{low:.3f}, {high:.3f}]",
                f"rejected {','.join(reasons) or 'none'}; max diff {difference:.1e}; π {pi:.3f}",
                held,
            )
            outcomes.append((reasons, reason, difference, pi))
            previous = got
        for reasons, reason, difference, pi in outcomes:
            assert reasons == [reason]
            assert difference < 1e-9
            assert low <= pi <= high
        assert len(bad_nodes) == 1  # the same node every round: the attacker
        assert [r.train_nodes for r in rounds] == [2, 2, 2]
        # a round's model is scored with the next round's updates, and the attacker's scores
        # go with its rejected update; the last model is scored by all three
        assert [r.eval_nodes for r in rounds] == [2, 2, 3]
        # π reached every board (the attacker's too) within the honest boards' range
        for config in boards:
            buffer = Buffer(config.parent / "buffer.db", readonly=True)
            try:
                received = buffer.state().get("population_good_share")
            finally:
                buffer.close()
            assert isinstance(received, float) and low <= received <= high
            assert received == pytest.approx(float(np.median(shares)))
        # printed on the round's line by `sleepfed-server run`, counted by reason in the
        # server's Prometheus metrics
        assert ":weight-cap)" in log and log.count(":good-share)") == 2
        assert _rejections_by_reason(server_config) == {"good-share": 2.0, "weight-cap": 1.0}
        assert history.runs()[-1]["status"] == "finished"
        history.close()
    finally:
        stop([*agents, server])


# Two boards with different window counts, so that a weighted and an equal-weight mean differ
SECAGG_SUBJECTS = ["4426783", "4018081"]  # 37 and 18 training windows
# SecAgg+ quantisation: about 1e-4 on a coefficient (tests/system/test_secure_aggregation.py)
QUANTISATION_TOLERANCE = 1e-3
# The SecAgg+ protocol's own records (keys, shares, masked vector) and the reply status
PROTOCOL_RECORDS = {RECORD_KEY_CONFIGS, "fitres.status", "evaluateres.status"}


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _scalars_sent(proxy: CaptureProxy) -> tuple[list[str], list[tuple[str, str, object]]]:
    """The message types the boards pushed, and every (record, key, value) of the metric and
    config records in them other than the SecAgg+ protocol's own."""
    pushed: dict[str, bytes] = {}
    roots: list[tuple[str, str]] = []
    for request, _ in http_exchanges(proxy.snapshot()):
        if request.path == "/v1/fleet/push-object":
            body = message_pb2.PushObjectRequest.FromString(request.body)
            pushed[body.object_id] = body.object_content
        elif request.path == "/v1/fleet/push-messages":
            batch = fleet_pb2.PushMessagesRequest.FromString(request.body)
            for message, tree in zip(batch.messages_list, batch.message_object_trees, strict=True):
                roots.append((message.metadata.message_type, tree.object_id))
    scalars: list[tuple[str, str, object]] = []
    for _, root in roots:
        message = inflate_object_from_contents(root, pushed, keep_object_contents=True)
        assert isinstance(message, Message)
        records = {**message.content.metric_records, **message.content.config_records}
        for name, record in records.items():
            if name not in PROTOCOL_RECORDS:
                scalars += [(name, key, value) for key, value in record.items()]
    return [t for t, _ in roots], scalars


@pytest.mark.slow
def test_a_curious_server_reads_no_board_scalar_under_secagg(
    tmp_path: Path, walch_dir: Path, attack: Attack
) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=1, min_nodes=2, walch_dir=walch_dir, held_out=HELD_OUT
    )
    append_to(server_config, "[privacy]\nsecure_aggregation = true\nsecagg_timeout_seconds = 120\n")
    proxy = CaptureProxy(certs["cert"], certs["key"], certs["ca"], port).start()
    boards = [
        patient(
            write_board(
                tmp_path, f"board{i}", proxy.port, certs["ca"], walch_dir=walch_dir, subject=s
            )
        )
        for i, s in enumerate(SECAGG_SUBJECTS)
    ]
    server = start_server(server_config)
    agents = []
    try:
        # the agents' reachability probe would only reach the proxy: start them once the
        # server listens, as boards meeting a live server do
        wait_for(lambda: _port_open(port) or server.poll() is not None, 60, "the server")
        agents = [start_agent(b) for b in boards]
        status = server.wait(480)
    finally:
        stop([*agents, server])
        proxy.close()
    log = (tmp_path / "server" / "server.log").read_text()
    name = "curious server reads board scalars (SecAgg+)"
    if status != 0:
        attack(name, "no scalar on the wire", "the run failed", False)
        raise AssertionError(log[-3000:])
    (record,) = History(tmp_path / "server" / "state" / "history.db").rounds()
    types, scalars = _scalars_sent(proxy)
    # what a board still has to send: counts of 0 where Flower's legacy records need one
    revealed = [(r, k, v) for r, k, v in scalars if v not in (0, 0.0)]
    updates = [board_update(b, model.initial_arrays()) for b in boards]
    got = model.arrays_from_bytes(record.arrays)
    weighted = max_abs_difference(got, fedavg(updates))
    equal = max_abs_difference(got, fedavg([(arrays, 1) for arrays, _ in updates]))
    held = (
        "train" in types
        and "evaluate" in types
        and not revealed
        and weighted < QUANTISATION_TOLERANCE < equal
    )
    attack(
        name,
        "no scalar on the wire; model = window-weighted FedAvg",
        f"{len(scalars)} scalars sent, {len(revealed)} non-zero; "
        f"diff {weighted:.0e} (equal weights {equal:.2f})",
        held,
    )
    assert {"train", "evaluate"} <= set(types)
    assert not revealed, revealed
    assert {k for _, k, _ in scalars} <= {"num_examples", "loss"}
    assert [n for _, n in updates] == [37, 18]
    assert weighted < QUANTISATION_TOLERANCE < equal
    assert record.train_metrics == {} and record.eval_metrics == {}
    for config in boards:  # no good-share from the boards, so no π to them
        buffer = Buffer(config.parent / "buffer.db", readonly=True)
        try:
            state = buffer.state()
        finally:
            buffer.close()
        assert "population_good_share" not in state and state.get("model_round") == 1
