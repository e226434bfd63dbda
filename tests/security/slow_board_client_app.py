"""Test-only ClientApp: the board's real one, but its training in chosen rounds takes
``SLEEPFED_TEST_TRAIN_DELAY`` seconds longer (``"1:20"``: round 1, 20 s). It holds a round
open for a known time, so that a test can act "between two rounds" without racing the
ServerApp. Loaded as ``adversarial_client_app`` is (``SLEEPFED_CLIENTAPP``)."""

from __future__ import annotations

import os
import time

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from sleepfed.board.training import client_app as real
from sleepfed.board.training.privacy_mods import CLIENT_MODS

DELAY_ENV = "SLEEPFED_TEST_TRAIN_DELAY"


def slow_train_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type == MessageType.TRAIN:
        server_round = int(msg.content["config"].get("server-round", 0))
        for item in os.environ.get(DELAY_ENV, "").split(","):
            round_text, _, seconds = item.partition(":")
            if round_text.strip() and int(round_text) == server_round:
                time.sleep(float(seconds))
    return call_next(msg, ctxt)


app = ClientApp(mods=[*CLIENT_MODS, slow_train_mod])
app.train()(real.train)
app.evaluate()(real.evaluate)
