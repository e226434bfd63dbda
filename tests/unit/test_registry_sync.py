"""The registry's sync with a SuperLink that is not there: each board fails on its own, is
counted and logged, stays pending for the next sync, and the sync does not hang."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sleepfed.provisioning.request import EnrollmentRequest
from sleepfed.server.fleet.boards import Registry
from sleepfed.server.ops.config import load_config
from tests.support.federation_helpers import free_port, pki


def _public_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def test_a_sync_without_a_superlink_leaves_every_board_pending_and_counts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = pki(tmp_path)
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = {free_port()}\n'
        f"superlink_port = {free_port()}\n"  # nothing listens there
        f'certfile = "{certs["cert"]}"\nkeyfile = "{certs["key"]}"\n'
        f'ca_certfile = "{certs["ca"]}"\n'
    )
    registry = Registry(load_config(config))
    try:
        for board_id in ("board-a", "board-b"):
            registry.add(EnrollmentRequest(board_id, _public_key()))
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="sleepfed.server"):
            done = registry.sync()
        seconds = time.monotonic() - started
        statuses = {b["board_id"]: (b["status"], b["node_id"]) for b in registry.boards()}
        failures = registry.sync_failures
    finally:
        registry.close()
    assert done == []
    assert failures == 2
    assert statuses == {"board-a": ("pending", None), "board-b": ("pending", None)}
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 2 and all("not applied to the SuperLink" in e for e in errors), errors
    assert all("ConnectError" in e for e in errors), errors
    assert seconds < 30, f"a sync against no SuperLink took {seconds:.0f} s"
