"""A server.toml whose paths or host would add directives to nginx's configuration (a value
with a semicolon, a brace, a `$` or a newline): ``sleepfed-server run`` refuses it with exit 2
and a line naming the field, and starts nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.federation_helpers import free_port, pki, write_server_config

Attack = Callable[[str, str, str, bool], None]
INJECTED = "/tmp/x.pem;\\n        location /v1/control/ { proxy_pass https://127.0.0.1:9099; }"


@pytest.mark.parametrize(
    ("field", "old", "new"),
    [
        ("server.certfile", 'certfile = "', f'certfile = "{INJECTED}'),
        ("server.keyfile", 'keyfile = "', 'keyfile = "$ssl_server_name'),
        ("server.host", 'host = "127.0.0.1"', 'host = "127.0.0.1:1 ssl; listen 127.0.0.1"'),
    ],
)
def test_a_value_that_would_add_nginx_directives_is_refused(
    tmp_path: Path, walch_dir: Path, attack: Attack, field: str, old: str, new: str
) -> None:
    certs = pki(tmp_path)
    port = free_port()
    config = write_server_config(
        tmp_path, port, certs, rounds=1, min_nodes=1, walch_dir=walch_dir, held_out=[]
    )
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    result = subprocess.run(
        [sys.executable, "-m", "sleepfed.server.ops.cli", "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    state = tmp_path / "server" / "state"
    nginx_conf = state / "fleet-proxy" / "nginx.conf"
    started = (state / "superlink.log").exists() or nginx_conf.exists()
    held = result.returncode == 2 and field in result.stderr and not started
    attack(f"{field} with nginx syntax in server.toml", "exit 2 naming it, nothing started",
           f"exit {result.returncode}, started: {started}", held)  # fmt: skip
    assert held, (result.returncode, result.stderr[-1500:])
    assert "Traceback" not in result.stderr
