"""Update validation: the rules on constructed replies, and bad updates from a real board."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from sleepfed.board.training import client_app
from sleepfed.board.training.privacy_mods import (
    CLIENT_MODS,
    WITHHOLD_METRICS_KEY,
    withhold_scalars_mod,
)
from sleepfed.common.config_fields import ConfigError
from sleepfed.common.packed_arrays import packed_arrays_mod
from sleepfed.model import logistic as model
from sleepfed.server.app.canonical_replies import UNIFORM_WEIGHT_KEY
from sleepfed.server.app.history import History
from sleepfed.server.app.privacy import dp_rules
from sleepfed.server.app.recording_strategy import RecordingFedAvg
from sleepfed.server.app.secure_aggregation import RecordingSecAggFedAvg
from sleepfed.server.app.update_validation import (
    DEFAULT_MAX_NUM_EXAMPLES,
    GOOD_SHARE_KEY,
    ValidationRules,
    norm_limit,
    parse_validation,
    robust_good_share,
    rules_from_run_config,
    run_config_entries,
    validate_replies,
    weight_limit,
)
from tests.support.federation_helpers import (
    free_port,
    pki,
    start_agent,
    start_server,
    stop,
    write_board,
    write_server_config,
)
from tests.support.privacy_helpers import (
    board_update,
    fedavg,
    max_abs_difference,
    patient,
    start_adversarial_agent,
)

GLOBAL = model.initial_arrays()


def _reply(
    node: int,
    arrays: list[np.ndarray],
    weight: object = 100,
    metrics: dict[str, float] | None = None,
) -> Message:
    scalars = {"num-examples": weight} if weight is not None else {"train-loss": 0.5}
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({**scalars, **(metrics or {})})}
    )
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # for Message()
    instruction = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    return Message(content=content, reply_to=instruction)  # a reply from ``node``


def _honest(node: int, scale: float, weight: object = 100, **metrics: float) -> Message:
    arrays = model.from_parts(np.full(model.N_FEATURES, 0.1 * scale), 0.2 * scale)
    return _reply(node, arrays, weight, {k.replace("_", "-"): v for k, v in metrics.items()})


def _nodes(replies: list[Message]) -> list[int]:
    return [m.metadata.src_node_id for m in replies]


def test_each_rule_rejects_with_its_reason() -> None:
    bad_nan = model.from_parts(np.full(model.N_FEATURES, 0.1), np.inf)
    replies = [
        _honest(1, 1.0),
        _honest(2, 1.2),
        _honest(3, 0.9),
        _reply(4, bad_nan),
        _reply(5, [np.zeros((1, 6))]),
        _reply(6, [np.zeros(model.SHAPE, dtype=np.float32)]),
        _reply(7, [np.zeros((1, model.N_FEATURES)), np.zeros(1)]),  # the earlier two arrays
        _reply(8, [g + 0.1 for g in GLOBAL], weight=None),
        _reply(9, [g + 0.1 for g in GLOBAL], weight=-3),
        _honest(10, 1000.0),
        _reply(11, [np.zeros(model.ONE_HEAD_SHAPE)]),  # a board from before the second head
    ]
    accepted, rejections, norms = validate_replies(replies, GLOBAL, ValidationRules())
    assert [m.metadata.src_node_id for m in accepted] == [1, 2, 3]
    assert {r.node_id: r.reason for r in rejections} == {
        4: "non-finite",
        5: "shape",
        6: "dtype",
        7: "structure",
        8: "weight",
        9: "weight",
        10: "norm-outlier",
        11: "shape",
    }
    assert sorted(norms) == [1, 2, 3, 10]
    # both heads: all 12 coefficients and the intercept, then the 6 not of movement and it
    assert math.isclose(norms[1], math.sqrt((12 + 6) * 0.01 + 2 * 0.04))


def test_mad_rule_needs_three_updates_and_tolerates_honest_spread() -> None:
    assert norm_limit([1.0, 500.0], 3.5) is None  # two updates: no majority to lean on
    # median 2, MAD 1 → 2 + 3.5 * max(1.4826, 1.0)
    assert math.isclose(norm_limit([1.0, 2.0, 3.0], 3.5) or 0.0, 2 + 3.5 * 1.4826)
    # near-identical norms: the floor (half the median) keeps 2.5 acceptable
    assert (norm_limit([2.0, 2.01, 2.02, 2.5], 3.5) or 0.0) > 2.5
    capped = validate_replies(
        [_honest(1, 1.0), _honest(2, 50.0)], GLOBAL, ValidationRules(max_update_norm=1.0)
    )
    assert [r.reason for r in capped[1]] == ["norm-cap"]


def test_num_examples_is_bounded_by_a_cap_and_by_a_multiple_of_the_median() -> None:
    assert GOOD_SHARE_KEY == client_app.GOOD_SHARE_KEY
    rules = ValidationRules()
    assert (rules.max_num_examples, rules.max_examples_median_multiple) == (100_000, 10.0)
    # two replies: no median to lean on, only the cap (1e300 is far beyond any board)
    _, rejected, _ = validate_replies([_honest(1, 1.0, 40), _honest(2, 1.1, 1e300)], GLOBAL, rules)
    assert [(r.node_id, r.reason) for r in rejected] == [(2, "weight-cap")]
    two = validate_replies([_honest(1, 1.0, 40), _honest(2, 1.1, 4000)], GLOBAL, rules)
    assert _nodes(two[0]) == [1, 2] and not two[1]
    # three or more: above 10 x the median (50) is an outlier; 10 x exactly is not
    replies = [_honest(n, 1.0 + n / 50, 50) for n in range(1, 6)]
    replies += [
        _honest(6, 1.0, 500),
        _honest(7, 1.0, 501),
        _honest(8, 1.0, DEFAULT_MAX_NUM_EXAMPLES + 1),
    ]
    assert weight_limit([40, 50, 60], 10.0) == 500.0
    assert weight_limit([40, 50], 10.0) is None and weight_limit([40, 50, 60], 0.0) is None
    accepted, rejected, norms = validate_replies(replies, GLOBAL, rules)
    assert _nodes(accepted) == [1, 2, 3, 4, 5, 6]
    assert {r.node_id: r.reason for r in rejected} == {7: "weight-outlier", 8: "weight-cap"}
    assert "501 > 10 x median = 500" in rejected[0].detail
    assert len(norms) == 8  # every well-formed reply's norm is still reported
    off = validate_replies(replies[:7], GLOBAL, ValidationRules(max_examples_median_multiple=0))
    assert _nodes(off[0]) == [1, 2, 3, 4, 5, 6, 7]
    # under DP the weights are not used (equal weights): no rule on them, none required
    dp = validate_replies(
        [_honest(1, 1.0, 1e300), _reply(2, [g + 0.1 for g in GLOBAL], weight=None)],
        GLOBAL,
        rules,
        use_scalars=False,
    )
    assert _nodes(dp[0]) == [1, 2] and not dp[1]


def test_good_share_must_be_a_number_within_0_and_1() -> None:
    replies = [
        _honest(1, 1.0, good_share=0.0),
        _honest(2, 1.0, good_share=1.0),
        _honest(3, 1.0),  # none sent: fine, the board does not vote for π
        _honest(4, 1.0, good_share=float("nan")),
        _honest(5, 1.0, good_share=7.0),
        _honest(6, 1.0, good_share=-0.01),
        _honest(7, 1.0, good_share=float("inf")),
    ]
    accepted, rejected, _ = validate_replies(replies, GLOBAL, ValidationRules())
    assert _nodes(accepted) == [1, 2, 3]
    assert {r.node_id: r.reason for r in rejected} == dict.fromkeys([4, 5, 6, 7], "good-share")
    assert robust_good_share(accepted) == 0.5  # the median of 0 and 1; node 3 has no vote
    assert robust_good_share([_honest(3, 1.0)]) is None


def _recording(rules: ValidationRules | None = None, dp: bool = False) -> RecordingFedAvg:
    strategy = RecordingFedAvg(rules=rules, uniform_weights=dp)
    strategy.screening_arrays = [g.copy() for g in GLOBAL]
    return strategy


def test_pi_is_the_median_and_no_board_outweighs_the_rest() -> None:
    """Three honest boards; one reply claims 1e300 windows (rejected), one claims 9 x the
    median and a share of 0 (accepted: it moves the model by its weight, but π only by its
    vote, and the median stays within the honest boards' range)."""
    honest = [(1, 1.0, 40, 0.80), (2, 1.2, 50, 0.85), (3, 0.9, 60, 0.90)]
    replies = [_honest(n, s, w, good_share=g, train_loss=0.4) for n, s, w, g in honest]
    replies.append(_honest(4, 1.1, 1e300, good_share=1.0, train_loss=0.4))
    replies.append(_honest(5, 1.0, 450, good_share=0.0, train_loss=0.4))
    strategy = _recording()
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert [(r.node_id, r.reason) for r in strategy.rejections[1]] == [(4, "weight-cap")]
    weights = {1: 40, 2: 50, 3: 60, 5: 450}
    scales = {1: 1.0, 2: 1.2, 3: 0.9, 5: 1.0}
    expected = sum(weights[n] * scales[n] for n in weights) / sum(weights.values())
    got = arrays.to_numpy_ndarrays() if arrays is not None else []
    assert abs(got[0][0, 0] - 0.1 * expected) < 1e-12  # a coefficient
    assert abs(got[0][0, -1] - 0.2 * expected) < 1e-12  # the intercept
    # π: median of 0.80, 0.85, 0.90 and 0.0 = 0.825 (the weighted mean would be 0.21)
    assert strategy.train_metrics[1][GOOD_SHARE_KEY] == pytest.approx(0.825)
    assert 0.80 <= strategy.train_metrics[1][GOOD_SHARE_KEY] <= 0.90
    assert metrics is not None and metrics[GOOD_SHARE_KEY] == pytest.approx(0.825)
    assert strategy.train_metrics[1]["train-loss"] == pytest.approx(0.4)


def test_replies_with_other_records_or_keys_do_not_stop_the_round() -> None:
    """Flower's FedAvg raises when replies' metric keys differ (the ServerApp would fail):
    the accepted replies are rewritten to the keys they all carry with finite values."""
    odd = _honest(3, 0.9, 60, good_share=0.7, extra=1.0)
    odd.content["more"] = MetricRecord({"x": 1.0})  # a second MetricRecord: a bad reply
    replies = [
        _honest(1, 1.0, 40, good_share=0.8, train_loss=float("nan")),
        _honest(2, 1.2, 50, good_share=0.9, train_loss=0.5, extra=2.0),
        odd,
        _honest(4, 1.0, 45, train_loss=0.4),
    ]
    strategy = _recording()
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert [(r.node_id, r.reason) for r in strategy.rejections[1]] == [(3, "weight")]
    assert strategy.train_metrics[1] == {GOOD_SHARE_KEY: pytest.approx(0.85)}
    # evaluations too: weighted by num-examples, only the keys all carry
    evaluations = [
        _reply(1, GLOBAL, 10, {"eval-loss": 0.2, "eval-accuracy": 0.9}),
        _reply(2, GLOBAL, 30, {"eval-loss": 0.6}),
        _reply(3, GLOBAL, float("nan"), {"eval-loss": 9.0}),  # left out
    ]
    for reply in evaluations:
        del reply.content["arrays"]
    assert strategy.aggregate_evaluate(1, evaluations) == {"eval-loss": pytest.approx(0.5)}
    assert strategy.eval_nodes[1] == 2


def test_under_dp_no_scalar_is_used_and_unclipped_updates_are_rejected() -> None:
    rules = dp_rules(ValidationRules(), 0.5)
    assert rules.max_update_norm == pytest.approx(0.5 * (1 + 1e-6))
    assert dp_rules(ValidationRules(max_update_norm=0.1), 0.5).max_update_norm == 0.1
    assert dp_rules(ValidationRules(), 0.0) == ValidationRules()
    clipped = [np.full(model.SHAPE, 0.05)]
    scale = 0.5 / np.sqrt(2 * 13 * 0.05**2)
    replies = [
        _reply(1, [a * scale for a in clipped], weight=None),  # norm C: the board clipped
        _reply(2, clipped, weight=1e300, metrics={GOOD_SHARE_KEY: 7.0}),  # scalars: ignored
        _reply(3, [a * 10 for a in clipped], weight=None),  # norm 2.5 > C: did not clip
    ]
    replies[0].content["metrics"] = MetricRecord()  # what a board sends under DP
    strategy = _recording(rules, dp=True)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [(r.node_id, r.reason) for r in strategy.rejections[1]] == [(3, "norm-cap")]
    # equal weights, node 3 counts as a zero update: (clipped * scale + clipped + 0) / 3
    got = arrays.to_numpy_ndarrays() if arrays is not None else []
    assert got[0][0, -1] == pytest.approx(0.05 * (scale + 1) / 3)  # the intercept
    assert strategy.train_metrics[1] == {} and strategy.good_shares[1] is None
    for reply in replies:
        assert dict(reply.content["metrics"]) == {UNIFORM_WEIGHT_KEY: 1.0}
    # an evaluation reply's scalars (an older agent's) are not kept either
    evaluation = _reply(1, GLOBAL, 10, {"eval-loss": 0.2})
    del evaluation.content["arrays"]
    assert strategy.aggregate_evaluate(1, [evaluation]) == {}
    assert strategy.eval_metrics[1] == {} and strategy.eval_nodes[1] == 1


def _message(content: dict[str, object], kind: str = "train") -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    return Message(content=RecordDict(content), dst_node_id=1, message_type=kind)  # type: ignore[arg-type]


def test_boards_withhold_their_scalars_under_dp_and_secagg() -> None:
    # outermost but for the packing of arrays (it moves no scalar): SecAgg+ has masked by then
    assert CLIENT_MODS[:2] == [packed_arrays_mod, withhold_scalars_mod]
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    scalars = {"num-examples": 40, "train-loss": 0.3, GOOD_SHARE_KEY: 0.8}

    def app(msg: Message, ctxt: Context) -> Message:
        if "fitins.parameters" in msg.content:  # the legacy records SecAgg+ carries
            content = {
                "fitres.parameters": ArrayRecord(),
                "fitres.num_examples": MetricRecord({"num_examples": 40}),
                "fitres.metrics": ConfigRecord(scalars),  # type: ignore[arg-type]
                "fitres.status": ConfigRecord({"code": 0, "message": "Success"}),
            }
        elif "evaluateins.parameters" in msg.content:
            content = {
                "evaluateres.loss": MetricRecord({"loss": 0.3}),
                "evaluateres.num_examples": MetricRecord({"num_examples": 9}),
                "evaluateres.metrics": ConfigRecord({"eval-accuracy": 0.9}),
                "evaluateres.status": ConfigRecord({"code": 0, "message": "Success"}),
            }
        else:
            content = {"arrays": ArrayRecord(GLOBAL), "metrics": MetricRecord(scalars)}
        return Message(content=RecordDict(content), reply_to=msg)  # type: ignore[arg-type]

    def sent(content: dict[str, object], kind: str = "train") -> RecordDict:
        return withhold_scalars_mod(_message(content, kind), context, app).content

    arrays = ArrayRecord(GLOBAL)
    plain = sent({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    assert dict(plain["metrics"]) == scalars
    evaluate = sent({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}, "evaluate")
    assert dict(evaluate["metrics"]) == scalars
    dp = sent({"arrays": arrays, "config": ConfigRecord({"clipping_norm": 0.5})})
    assert dict(dp["metrics"]) == {} and "arrays" in dp
    flagged = ConfigRecord({WITHHOLD_METRICS_KEY: True})
    assert dict(sent({"arrays": arrays, "config": flagged}, "evaluate")["metrics"]) == {}
    legacy_fit = sent({"fitins.parameters": arrays, "fitins.config": flagged})
    assert dict(legacy_fit["fitres.num_examples"]) == {"num_examples": 0}
    assert dict(legacy_fit["fitres.metrics"]) == {}
    assert legacy_fit["fitres.status"]["code"] == 0
    legacy_eval = sent(
        {"evaluateins.parameters": arrays, "evaluateins.config": flagged}, "evaluate"
    )
    assert dict(legacy_eval["evaluateres.loss"]) == {"loss": 0.0}
    assert dict(legacy_eval["evaluateres.num_examples"]) == {"num_examples": 0}
    assert dict(legacy_eval["evaluateres.metrics"]) == {}


def test_secagg_strategy_takes_the_unmasked_sum_not_the_clear_counts() -> None:
    from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters

    done: list[int] = []
    strategy = RecordingSecAggFedAvg(on_round_done=lambda rnd, arrays: done.append(rnd))
    aggregate = ndarrays_to_parameters(model.from_parts(np.full(model.N_FEATURES, 0.3), 0.1))
    ok = Status(code=Code.OK, message="Success")
    results = [(object(), FitRes(ok, aggregate, 0, {})) for _ in range(3)]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert isinstance(parameters, Parameters) and metrics == {}
    assert strategy.round_arrays[1][0][0, 0] == 0.3 and strategy.train_metrics[1] == {}
    assert strategy.aggregate_evaluate(1, results, []) == (None, {})
    assert done == [1] and strategy.eval_metrics[1] == {}


def test_validation_settings() -> None:
    rules = parse_validation(
        {"validation": {"max_num_examples": 5000, "max_examples_median_multiple": 4}}
    )
    assert (rules.max_num_examples, rules.max_examples_median_multiple) == (5000, 4.0)
    assert rules_from_run_config(run_config_entries(rules)) == rules
    assert rules_from_run_config({}) == ValidationRules()
    for table, field in [
        ({"max_num_examples": 0}, "validation.max_num_examples"),
        ({"max_num_examples": 1.5}, "validation.max_num_examples"),
        ({"max_examples_median_multiple": 0.5}, "validation.max_examples_median_multiple"),
    ]:
        with pytest.raises(ConfigError, match=field):
            parse_validation({"validation": table})
    assert (
        parse_validation(
            {"validation": {"max_examples_median_multiple": 0}}
        ).max_examples_median_multiple
        == 0
    )


BOARD_SUBJECTS = ["4426783", "8258170", "9106476"]
HELD_OUT = ["1066528", "2638030"]


@pytest.mark.slow
def test_bad_updates_from_a_real_board_are_rejected(tmp_path: Path, walch_dir: Path) -> None:
    """Board 2 sends NaN in round 1 and a 1000x update in round 2; both rounds aggregate
    exactly the two honest boards' FedAvg, and the history keeps the rejections."""
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=2, min_nodes=3, walch_dir=walch_dir, held_out=HELD_OUT
    )
    boards = [
        patient(
            write_board(tmp_path, f"board{i}", port, certs["ca"], walch_dir=walch_dir, subject=s)
        )
        for i, s in enumerate(BOARD_SUBJECTS)
    ]
    server = start_server(server_config)
    agents = [start_agent(boards[0]), start_agent(boards[1])]
    agents.append(start_adversarial_agent(boards[2], "1:nan,2:scale"))
    try:
        assert server.wait(480) == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
        history = History(tmp_path / "server" / "state" / "history.db")
        rounds = history.rounds()
        assert [r.global_round for r in rounds] == [1, 2]
        assert [r.train_nodes for r in rounds] == [2, 2]
        # round 1's model is scored with round 2's updates: the scores of a board whose update
        # is rejected are not used (round 2's 1000x update); the last model by all three
        assert [r.eval_nodes for r in rounds] == [2, 3]
        assert [[x["reason"] for x in r.rejected] for r in rounds] == [
            ["non-finite"],
            ["norm-outlier"],
        ]
        bad_node = rounds[0].rejected[0]["node"]
        assert rounds[1].rejected[0]["node"] == bad_node
        previous = model.initial_arrays()
        for record in rounds:
            expected = fedavg([board_update(b, previous) for b in boards[:2]])
            got = model.arrays_from_bytes(record.arrays)
            assert max_abs_difference(got, expected) < 1e-9
            previous = got
        assert history.runs()[-1]["status"] == "finished"
    finally:
        stop([*agents, server])
