"""Boards do not run code the server sends: a real board meets a server whose app bundle
carries its own ClientApp (a module only the server has). The board's guard refuses the
bundle before anything in it is installed or imported; the server gets an error reply
naming the reason, and the bundle's ClientApp never runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sleepfed.common.flower_process import flower_bin, flower_environment
from sleepfed.server.fleet.superlink import CONNECTION_NAME
from sleepfed.server.fleet.supervision import ServerProcesses
from sleepfed.server.ops.config import load_config
from tests.support.federation_helpers import (
    free_port,
    pki,
    start_agent,
    stop,
    wait_for,
    write_board,
    write_server_config,
)

SERVER_APP = """
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    nodes = []
    deadline = time.time() + 240
    while not nodes and time.time() < deadline:
        nodes = list(grid.get_node_ids())
        time.sleep(1)
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.zeros((2, 13))]),
            "config": ConfigRecord({"server-round": 1, "local-iterations": 1}),
        }
    )
    replies = grid.send_and_receive(
        [Message(content, dst_node_id=nodes[0], message_type="train")], timeout=240
    )
    result = [{"error": r.has_error(), "reason": r.error.reason if r.has_error() else ""}
              for r in replies]
    Path(str(context.run_config["out"])).write_text(json.dumps(result))
"""

CLIENT_APP = """
from pathlib import Path

from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg, context):
    Path(str(context.run_config["marker"])).write_text("the server's code ran on the board")
    raise SystemExit(0)
"""

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "not-sleepfed"
version = "0.1.0"
dependencies = []

[tool.flwr.app]
publisher = "elsewhere"

[tool.flwr.app.components]
serverapp = "server_only.server_app:app"
clientapp = "server_only.client_app:app"

[tool.flwr.app.config]
out = ""
marker = ""
"""


@pytest.mark.slow
def test_board_refuses_a_bundle_with_code(tmp_path: Path, walch_dir: Path) -> None:
    certs = pki(tmp_path)
    port = free_port()
    config = load_config(
        write_server_config(
            tmp_path, port, certs, rounds=1, min_nodes=1, walch_dir=walch_dir, held_out=[]
        )
    )
    app_dir = tmp_path / "evil-app"
    (app_dir / "server_only").mkdir(parents=True)
    (app_dir / "pyproject.toml").write_text(PYPROJECT)
    (app_dir / "server_only" / "__init__.py").write_text("")
    (app_dir / "server_only" / "server_app.py").write_text(SERVER_APP)
    (app_dir / "server_only" / "client_app.py").write_text(CLIENT_APP)
    out, marker = tmp_path / "replies.json", tmp_path / "board-ran-server-code"
    (tmp_path / "run.toml").write_text(f'out = "{out}"\nmarker = "{marker}"\n')
    board = write_board(
        tmp_path, "board", port, certs["ca"], walch_dir=walch_dir, subject="4426783"
    )
    # The SuperLink, its fleet proxy and the registry (the board enrolled), as `run` has them.
    server = ServerProcesses(config)
    server.start()
    agent = start_agent(board)
    try:
        submitted = subprocess.run(
            [
                flower_bin("flwr"),
                "run",
                str(app_dir),
                CONNECTION_NAME,
                "--run-config",
                str(tmp_path / "run.toml"),
            ],
            capture_output=True,
            text=True,
            env=flower_environment(config.state_dir / "flwr"),
            timeout=180,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        wait_for(out.exists, 300, "the server's app to get the board's reply")
        (reply,) = json.loads(out.read_text())
        assert reply["error"] is True
        assert "sleepfed board refused the app bundle" in reply["reason"]
        assert "server_only/client_app.py" in reply["reason"]
        assert not marker.exists(), "the bundle's ClientApp ran on the board"
        apps = board.parent / "flwr" / "apps"
        assert not any(apps.glob("**/client_app.py")), "the bundle was installed on the board"
    finally:
        stop([agent])
        server.stop()
