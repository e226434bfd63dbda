"""The model's arrays packed into a ConfigRecord on the wire (sleepfed.common.packed_arrays):
what a message costs in Flower objects (each one an HTTP request), both ends' round trip, and
packed arrays written by an attacker (a malicious enrolled board, the server's end)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st

from sleepfed.common.packed_arrays import (
    DATA_PREFIX,
    NAMES_PREFIX,
    PACKED_RECORD,
    PackedArraysError,
    pack,
    packed_arrays_mod,
    unpack,
)
from sleepfed.model import logistic as model
from sleepfed.server.app.round_loop import unpacked_reply
from sleepfed.server.app.update_validation import ValidationRules, validate_replies

GLOBAL = model.initial_arrays()


def _train_content() -> RecordDict:
    config = ConfigRecord({"local-iterations": 5, "learning-rate": 0.1, "model-round": 3})
    return RecordDict({"arrays": ArrayRecord(GLOBAL), "config": config})


def _update_content(arrays: list[np.ndarray] | None = None) -> RecordDict:
    metrics = MetricRecord({"num-examples": 120, "train-loss": 0.4})
    return RecordDict({"arrays": ArrayRecord(arrays or GLOBAL), "metrics": metrics})


def _message(content: RecordDict, node: int = 7) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # for Message()
    return Message(content=content, dst_node_id=node, message_type="train")


def _reply(content: RecordDict, node: int = 7) -> Message:
    return Message(content=content, reply_to=_message(RecordDict(), node))


def _objects(message: Message) -> list[str]:
    """The Flower objects a message is sent as, one request each, by type."""
    return sorted(type(o).__name__ for o in get_all_nested_objects(message).values())


def test_a_packed_train_message_is_three_objects_and_unpacks_to_the_same() -> None:
    plain = _train_content()
    packed = pack(_train_content())
    assert _objects(_message(plain)) == sorted(
        ["Message", "RecordDict", "ArrayRecord", "Array", "ArrayChunk", "ConfigRecord"]
    )
    assert _objects(_message(packed)) == ["ConfigRecord", "Message", "RecordDict"]
    assert set(packed) == {"config"}
    assert packed["config"][NAMES_PREFIX + "arrays"] == ["0"]
    back = unpack(packed)
    assert set(back) == {"arrays", "config"}
    assert dict(back["config"]) == dict(plain["config"])
    [array] = back["arrays"].to_numpy_ndarrays()
    assert array.shape == model.SHAPE and np.array_equal(array, GLOBAL[0])
    assert bytes(back["arrays"]["0"].data) == bytes(plain["arrays"]["0"].data)


def test_a_packed_update_is_four_objects_and_keeps_its_metrics_record() -> None:
    packed = pack(_update_content())
    assert set(packed) == {"metrics", PACKED_RECORD}
    assert _objects(_reply(packed)) == ["ConfigRecord", "Message", "MetricRecord", "RecordDict"]
    assert _objects(_reply(_update_content())) == sorted(
        ["Message", "RecordDict", "ArrayRecord", "Array", "ArrayChunk", "MetricRecord"]
    )
    back = unpack(packed)
    assert set(back) == {"arrays", "metrics"}
    assert dict(back["metrics"]) == {"num-examples": 120, "train-loss": 0.4}


def test_content_without_arrays_passes_through_both_ways() -> None:
    metrics_only = RecordDict({"metrics": MetricRecord({"num-examples": 3})})
    assert pack(metrics_only) is metrics_only
    assert set(unpack(metrics_only)) == {"metrics"}


def test_the_board_mod_unpacks_for_the_app_and_packs_its_reply() -> None:
    seen: list[set[str]] = []

    def client(msg: Message, ctxt: Context) -> Message:
        seen.append(set(msg.content))
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        return Message(content=_update_content([a + 1 for a in arrays]), reply_to=msg)

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = packed_arrays_mod(_message(pack(_train_content())), context, client)
    assert seen == [{"arrays", "config"}]
    assert set(reply.content) == {"metrics", PACKED_RECORD}
    [array] = unpack(reply.content)["arrays"].to_numpy_ndarrays()
    assert np.array_equal(array, GLOBAL[0] + 1)
    # a message that is not packed (SecAgg+'s legacy workflow, the simulation) is left as is
    reply = packed_arrays_mod(_message(_train_content()), context, client)
    assert set(reply.content) == {"arrays", "metrics"}


def _npy(value: np.ndarray, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, value, allow_pickle=allow_pickle)
    return out.getvalue()


GOOD = _npy(GLOBAL[0])
ATTACKS: dict[str, dict[str, object]] = {
    "pickled objects": {
        DATA_PREFIX + "arrays": [_npy(np.array([{"x": 1}], dtype=object), True)],
        NAMES_PREFIX + "arrays": ["0"],
    },
    "no .npy": {DATA_PREFIX + "arrays": [b"\x93NUMPY junk"], NAMES_PREFIX + "arrays": ["0"]},
    "trailing bytes": {DATA_PREFIX + "arrays": [GOOD + b"\0" * 64], NAMES_PREFIX + "arrays": ["0"]},
    "text, not bytes": {DATA_PREFIX + "arrays": ["0.1"], NAMES_PREFIX + "arrays": ["0"]},
    "names missing": {DATA_PREFIX + "arrays": [GOOD]},
    "fewer names": {DATA_PREFIX + "arrays": [GOOD, GOOD], NAMES_PREFIX + "arrays": ["0"]},
    "a name twice": {DATA_PREFIX + "arrays": [GOOD, GOOD], NAMES_PREFIX + "arrays": ["0", "0"]},
    "names alone": {NAMES_PREFIX + "arrays": ["0"]},
    "a record's name taken": {DATA_PREFIX + "metrics": [GOOD], NAMES_PREFIX + "metrics": ["0"]},
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_malicious_boards_packed_arrays_are_rejected_for_their_structure(attack: str) -> None:
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 100}),
            PACKED_RECORD: ConfigRecord(ATTACKS[attack]),  # type: ignore[arg-type]
        }
    )
    with pytest.raises(PackedArraysError):
        unpack(content)
    reply = unpacked_reply(_reply(content, node=9))  # the ServerApp's end
    assert not reply.content.array_records
    accepted, rejections, _ = validate_replies([reply], GLOBAL, ValidationRules())
    assert accepted == []
    assert [(r.node_id, r.reason) for r in rejections] == [(9, "structure")]


def test_an_honest_packed_update_is_accepted_by_the_servers_end() -> None:
    update = [GLOBAL[0] + 0.01]
    reply = unpacked_reply(_reply(pack(_update_content(update))))
    accepted, rejections, _ = validate_replies([reply], GLOBAL, ValidationRules())
    assert rejections == [] and len(accepted) == 1


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.binary(max_size=300), min_size=1, max_size=3))
def test_arbitrary_bytes_unpack_or_raise_the_named_error(data: list[bytes]) -> None:
    names = [str(i) for i in range(len(data))]
    content = RecordDict(
        {
            PACKED_RECORD: ConfigRecord(
                {DATA_PREFIX + "arrays": data, NAMES_PREFIX + "arrays": names}
            )
        }
    )
    try:
        arrays = unpack(content)["arrays"]
    except PackedArraysError:
        return
    assert [bytes(a.data) for a in arrays.values()] == data  # only canonical .npy unpacks
