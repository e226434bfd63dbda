"""Test-only ClientApp: the board's real one (sleepfed.board.training.client_app), misbehaving on
request.

A board runs it when its daemon is started with ``SLEEPFED_CLIENTAPP=
adversarial_client_app:app`` and this folder on PYTHONPATH (sleepfed.board.training.code_guard
loads the
installed ClientApp that variable names). ``SLEEPFED_TEST_ATTACK`` says what to do in which
server round, e.g. ``"1:nan,2:scale"``:

* ``nan``: one coefficient of the trained update becomes NaN;
* ``scale``: the update (trained minus global arrays) is multiplied by 1000;
* ``shape``: the coefficient array loses half its columns;
* ``die``: the board's whole SuperNode process group is SIGKILLed while it trains (under
  SecAgg+ this is the masked-vector stage, after the keys were shared);
* ``metric=VALUE``: an ordinary update whose scalar ``metric`` is VALUE (any float Python
  reads: ``1e300``, ``nan``, ``7``), e.g. ``"1:num-examples=1e300,2:good-share=nan"``.

Without the variable it behaves exactly like the real ClientApp.
"""

from __future__ import annotations

import os
import signal

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from sleepfed.board.training import client_app as real
from sleepfed.board.training.privacy_mods import CLIENT_MODS

ATTACK_ENV = "SLEEPFED_TEST_ATTACK"


def _plan() -> dict[int, str]:
    plan: dict[int, str] = {}
    for item in os.environ.get(ATTACK_ENV, "").split(","):
        if item.strip():
            round_text, _, kind = item.partition(":")
            plan[int(round_text)] = kind.strip()
    return plan


def attack_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    server_round = int(msg.content["config"].get("server-round", 0))
    kind = _plan().get(server_round)
    if kind == "die":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    global_arrays = msg.content["arrays"].to_numpy_ndarrays()
    reply = call_next(msg, ctxt)
    if kind is None or reply.has_error():
        return reply
    if "=" in kind:
        name, _, value = kind.partition("=")
        reply.content["metrics"][name.strip()] = float(value)
        return reply
    arrays = reply.content["arrays"].to_numpy_ndarrays()
    if kind == "nan":
        arrays[0][0, 0] = np.nan
    elif kind == "scale":
        arrays = [g + 1000.0 * (a - g) for a, g in zip(arrays, global_arrays, strict=True)]
    elif kind == "shape":
        arrays[0] = arrays[0][:, : arrays[0].shape[1] // 2].copy()
    else:
        raise ValueError(f"{ATTACK_ENV}: unknown attack {kind!r}")
    reply.content["arrays"] = ArrayRecord(arrays)
    return reply


app = ClientApp(mods=[*CLIENT_MODS, attack_mod])
app.train()(real.train)
app.evaluate()(real.evaluate)
