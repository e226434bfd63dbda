"""Flower mods around the board's ClientApp: secure aggregation and DP clipping.

(Outside them all, ``sleepfed.common.packed_arrays.packed_arrays_mod`` unpacks the model's
arrays from the message's config and packs the reply's.)

They do nothing unless the server asks for them, so one ClientApp serves every server
configuration:

* ``secure_aggregation_mod``: Flower's ``secaggplus_mod`` for a train message that carries
  the SecAgg+ protocol's records (``SecAggPlusWorkflow`` on the server); the board's update
  then leaves it only masked, and the server learns nothing but the sum.
* ``legacy_records_mod``: ``SecAggPlusWorkflow`` is a legacy-API workflow whose messages
  carry ``fitins.*``/``evaluateins.*`` records and expect ``fitres.*``/``evaluateres.*``
  ones back; this mod translates them to and from the Message API records the ClientApp
  speaks (``arrays``, ``config``, ``metrics``).
* ``dp_clipping_mod``: Flower's ``fixedclipping_mod`` (clip the update to the norm the
  server's ``DifferentialPrivacyClientSideFixedClipping`` sends) for a train message that
  carries a clipping norm.
* ``withhold_scalars_mod`` (outermost): under DP or SecAgg+ the board's scalars
  (num-examples, good-share, train-loss, train-accuracy, train-seconds, eval-loss,
  eval-accuracy) do not leave the board: its arrays are protected (clipped and noised, or
  masked) and they would not be. Applies to a train message that carries a clipping norm or
  SecAgg+ records, and to any message whose config carries ``withhold-metrics`` (the server
  sets it in train and evaluate configs under DP and SecAgg+). Under SecAgg+ the
  num-examples still weights the update inside the masked vector (``secaggplus_mod`` reads it
  before this mod empties the clear copy).
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, get_norm

from sleepfed.common.packed_arrays import packed_arrays_mod

LEGACY_NUM_EXAMPLES_KEY = "num-examples"
# Train/evaluate config key: the server runs DP or SecAgg+, the board sends no scalar.
WITHHOLD_METRICS_KEY = "withhold-metrics"

log = logging.getLogger("sleepfed.privacy")


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and RECORD_KEY_CONFIGS in msg.content.config_records
    ):
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def dp_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type == MessageType.TRAIN and any(
        KEY_CLIPPING_NORM in record for record in msg.content.config_records.values()
    ):
        replies: list[Message] = []

        def train(inner: Message, inner_context: Context) -> Message:
            replies.append(call_next(inner, inner_context))
            return replies[-1]

        try:
            return fixedclipping_mod(msg, ctxt, train)
        except ZeroDivisionError:
            # Flower divides the clipping norm by the update's norm. A board whose training
            # windows hold one class returns the global model unchanged: its update's norm is
            # 0, within any clipping norm, so its reply goes out as it is (Flower raises
            # before it changes the arrays).
            if replies and _update_norm(msg, replies[-1]) == 0.0:
                log.info("DP clipping: the update is zero, nothing to clip")
                return replies[-1]
            raise
    return call_next(msg, ctxt)


def _update_norm(sent: Message, reply: Message) -> float:
    before = next(iter(sent.content.array_records.values())).to_numpy_ndarrays()
    after = next(iter(reply.content.array_records.values())).to_numpy_ndarrays()
    return get_norm([a - b for a, b in zip(after, before, strict=True)])


def _status() -> ConfigRecord:
    return ConfigRecord({"code": 0, "message": "Success"})


def _split_metrics(reply: Message) -> tuple[MetricRecord, float]:
    metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
    return metrics, float(metrics.get(LEGACY_NUM_EXAMPLES_KEY, 0))


def legacy_records_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    records = msg.content
    for kind in ("fitins", "evaluateins"):
        if f"{kind}.parameters" in records.array_records:
            break
    else:
        return call_next(msg, ctxt)
    original = msg.content
    msg.content = RecordDict(
        {
            "arrays": records.array_records[f"{kind}.parameters"],
            "config": records.config_records.get(f"{kind}.config", ConfigRecord()),
        }
    )
    try:
        reply = call_next(msg, ctxt)
    finally:
        msg.content = original
    if reply.has_error():
        return reply
    metrics, num_examples = _split_metrics(reply)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    if kind == "fitins":
        arrays = next(iter(reply.content.array_records.values()), ArrayRecord())
        reply.content = RecordDict(
            {
                "fitres.parameters": arrays,
                "fitres.num_examples": MetricRecord({"num_examples": int(num_examples)}),
                "fitres.metrics": ConfigRecord(scalars),  # type: ignore[arg-type]
                "fitres.status": _status(),
            }
        )
    else:
        loss = float(metrics.get("eval-loss", 0.0))  # type: ignore[arg-type]
        reply.content = RecordDict(
            {
                "evaluateres.loss": MetricRecord({"loss": loss}),
                "evaluateres.num_examples": MetricRecord({"num_examples": int(num_examples)}),
                "evaluateres.metrics": ConfigRecord(scalars),  # type: ignore[arg-type]
                "evaluateres.status": _status(),
            }
        )
    return reply


def withholds_scalars(msg: Message) -> bool:
    """Whether the message's reply leaves without the board's scalars (see the module)."""
    configs = msg.content.config_records
    if msg.metadata.message_type == MessageType.TRAIN and (
        RECORD_KEY_CONFIGS in configs
        or any(KEY_CLIPPING_NORM in record for record in configs.values())
    ):
        return True
    return any(record.get(WITHHOLD_METRICS_KEY) is True for record in configs.values())


# What the legacy (SecAgg+) records keep once the scalars are withheld: the keys Flower's
# compat layer reads, with nothing in them.
_LEGACY_EMPTY = {
    "fitres.num_examples": {"num_examples": 0},
    "evaluateres.num_examples": {"num_examples": 0},
    "evaluateres.loss": {"loss": 0.0},
}


def withhold_scalars(content: RecordDict) -> None:
    """Empty every metric record of a reply (and the legacy ``*res.metrics`` config records),
    keeping the records themselves: the server's protocol code still finds them."""
    for name in list(content.metric_records):
        content[name] = MetricRecord(_LEGACY_EMPTY.get(name, {}))  # type: ignore[arg-type]
    for name in ("fitres.metrics", "evaluateres.metrics"):
        if name in content.config_records:
            content[name] = ConfigRecord()


def withhold_scalars_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    withhold = withholds_scalars(msg)
    reply = call_next(msg, ctxt)
    if withhold and not reply.has_error():
        withhold_scalars(reply.content)
    return reply


# Outermost first: the model's arrays are unpacked before any other mod sees the message
# (sleepfed.common.packed_arrays); the scalars are withheld from what secure aggregation
# sends (it has read the num-examples it masks by then), which masks what the translated,
# clipped update becomes.
CLIENT_MODS = [
    packed_arrays_mod,
    withhold_scalars_mod,
    secure_aggregation_mod,
    legacy_records_mod,
    dp_clipping_mod,
]
