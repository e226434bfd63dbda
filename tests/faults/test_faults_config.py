"""Corrupt and hostile configuration files: a clear error naming the field, exit status 2
from ``sleepfed-agent run`` and ``sleepfed-server run``, no traceback, nothing created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sleepfed.board.service.config import load_config
from sleepfed.common.config_fields import MAX_CONFIG_BYTES, ConfigError
from sleepfed.server.ops.config import load_config as load_server_config
from tests.support.helpers import REPO, run_agent

GOOD = '[board]\nid = "b"\n[buffer]\npath = "b.db"\n'
SOURCE = '[[sources]]\ntype = "serial"\nport = "/dev/ttyACM0"\n'
STRAP = '[[sources]]\ntype = "ble"\n[[sources.devices]]\naddress = "AA:BB:CC:DD:EE:FF"\n'
HOSTILE_AGENT = [
    ('[board]\nid = "b"\n[bufer]\npath = "b.db"\n', "config.buffer: missing (unknown: bufer"),
    (GOOD + "max_mbb = 5\n", "buffer.max_mbb: unknown key"),
    (GOOD + SOURCE + "baud = 9600\n", "sources[0].baud: unknown key"),
    (GOOD + '[federation]\nserver = "h:1"\ninsecure = true\nwindoww = "always"\n',
     "federation.windoww: unknown key"),
    (GOOD + "max_mb = inf\n", "buffer.max_mb: must be a finite number"),
    (GOOD + "max_mb = nan\n", "buffer.max_mb: must be a finite number"),
    (GOOD + "max_mb = 1e308\n", "buffer.max_mb: must be within"),
    (GOOD + "batch_max_readings = 9223372036854775807\n", "buffer.batch_max_readings"),
    (GOOD + "batch_max_seconds = 1e9\n", "buffer.batch_max_seconds"),
    (GOOD + "min_free_mb = 0\n", "buffer.min_free_mb"),
    (GOOD + "unwritable_exit_seconds = -1\n", "buffer.unwritable_exit_seconds"),
    (GOOD + "[nights]\nsettle_seconds = 1e300\n", "nights.settle_seconds"),
    (GOOD + SOURCE + "baudrate = 99999999999\n", "sources[0].baudrate"),
    (GOOD + '[federation]\nserver = "h:1"\ninsecure = true\nsupernode_port = 70000\n',
     "federation.supernode_port"),
    ('[buffer]\npath = "../../../etc/sleepfed.db"\n', "buffer.path: a relative path must stay"),
    ('[buffer]\npath = "a\\u0000b"\n', "buffer.path: not a usable path"),
    (GOOD + '[federation]\nserver = "h:1"\nroot_certificates = "../ca.pem"\n',
     "federation.root_certificates"),
    ('[board]\nid = ["b"]\n[buffer]\npath = "b.db"\n', "board.id: expected str"),
    ('[board]\nid = "b"\ntimezone = "Europe"\n[buffer]\npath = "b.db"\n', "board.timezone"),
    ('buffer = 3\n[board]\nid = "b"\n', "config.buffer: expected dict"),
    ("sources = 7\n" + GOOD, "config.sources: expected list"),
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("\x00\x01\x02garbage = = =\n", "not valid TOML"),
    # a Polar strap's accelerometer at a rate or range the H10 lacks
    (GOOD + STRAP + "pmd_acc_hz = 30\n", "sources[0].devices[0]: ACC sample rate 30 Hz"),
    (GOOD + STRAP + "pmd_acc_hz = 50\npmd_acc_range_g = 16\n",
     "sources[0].devices[0]: ACC range 16 G"),
    (GOOD + STRAP + 'pmd_acc_hz = "50"\n', "sources[0].devices[0].pmd_acc_hz: expected int"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "needle"), HOSTILE_AGENT)
def test_hostile_agent_config_names_the_field(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert needle in str(caught.value)


def test_oversized_and_binary_config_files(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text(GOOD + "#" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00[buffer]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_a_good_config_still_loads(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(GOOD + "min_free_mb = 4\nunwritable_exit_seconds = 5\n" + SOURCE)
    loaded = load_config(config)
    assert loaded.buffer_path == tmp_path / "b.db"
    assert loaded.min_free_bytes == 4 << 20
    assert loaded.unwritable_exit_seconds == 5.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GOOD + "max_mbb = 5\n", "buffer.max_mbb: unknown key"),
        ('[buffer]\npath = "../../../etc/sleepfed.db"\n', "buffer.path"),
        (GOOD + "max_mb = 1e308\n", "buffer.max_mb"),
        (GOOD + STRAP + "pmd_acc_hz = 30\n", "ACC sample rate 30 Hz"),
    ],
)
def test_agent_run_exits_2(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    result = run_agent("run", "--config", str(config), timeout=30)
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b.db").exists()


SERVER = '[server]\nstate_dir = "state"\ninsecure = true\n'
HOSTILE_SERVER = [
    (SERVER + "prot = 9093\n", "server.prot: unknown key"),
    (SERVER + "[federation]\nrounds = 5\nmin_node = 2\n", "federation.min_node: unknown key"),
    (SERVER + "port = 70000\n", "server.port"),
    (SERVER + "[federation]\nround_timeout_seconds = inf\n", "federation.round_timeout_seconds"),
    ('[server]\nstate_dir = "../../var/x"\ninsecure = true\n', "server.state_dir"),
    (SERVER + "port = 9093\nsuperlink_port = 9093\n", "server.superlink_port"),
    (SERVER + "reconcile_seconds = 600\n", "server.reconcile_seconds"),
    ("[server\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "needle"), HOSTILE_SERVER)
def test_hostile_server_config_names_the_field(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "server.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_server_config(config)
    assert needle in str(caught.value)


@pytest.mark.parametrize(("text", "needle"), [HOSTILE_SERVER[0], HOSTILE_SERVER[4]])
def test_server_run_exits_2(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "server.toml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "sleepfed.server.ops.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()
