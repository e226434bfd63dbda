"""The demo's set-up: which subjects the boards replay, the server's and the boards'
configurations, enrolling the boards, and reading an agent's status."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sleepfed.model.walch import walch_subjects
from sleepfed_tools.replay.walch_polar import RATE as POLAR_RATE

PYTHON = sys.executable


def write_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def agent_status(config: Path) -> dict[str, Any] | None:
    result = subprocess.run(
        [PYTHON, "-m", "sleepfed.board.service.cli", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # 1 (daemon not running) and 3 (degraded) still print the status.
    return json.loads(result.stdout) if result.stdout.strip() else None


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def ble_address(index: int) -> str:
    return f"C0:FF:EE:00:00:{index + 1:02X}"


def choose_subjects(walch_dir: Path, boards: int) -> tuple[list[str], list[str]]:
    """Boards get the subjects with the longest nights; the rest are the held-out set."""
    subjects = walch_subjects(walch_dir)
    lengths = {s: sum(1 for _ in (walch_dir / f"{s}_psg_labels.out").open()) for s in subjects}
    ranked = sorted(subjects, key=lambda s: (-lengths[s], s))
    return ranked[:boards], [s for s in subjects if s not in ranked[:boards]]


def server_toml(
    workdir: Path,
    pki: dict[str, Path],
    args: argparse.Namespace,
    walch_dir: Path,
    held_out: list[str],
) -> str:
    """The server's configuration: TLS on 127.0.0.1, every board in every round, the
    held-out subjects scored after each round."""
    return f"""[server]
state_dir = "{workdir / "server" / "state"}"
host = "127.0.0.1"
port = {args.port}
certfile = "{pki["cert"]}"
keyfile = "{pki["key"]}"
ca_certfile = "{pki["ca"]}"

[federation]
rounds = {args.rounds}
min_nodes = {args.boards}
local_iterations = 20
round_timeout_seconds = 300

[evaluation]
data = "{walch_dir}"
subjects = {json.dumps(held_out)}
"""


def board_sources(ble: bool, port: str, address: str) -> list[dict[str, object]]:
    """The board's sources: a serial wearable, or a BLE wearable + a serial reference device."""
    if not ble:
        return [{"type": "serial", "name": "wrist", "port": port}]
    # a Polar-H10-like strap: heart rate, and movement from its accelerometer (PMD)
    strap = {"name": "strap", "address": address, "pmd_acc_hz": POLAR_RATE}
    return [
        {"type": "ble", "name": "wearable", "devices": [strap]},
        {"type": "serial", "name": "reference", "port": port},
    ]


def board_settings(
    index: int, board_dir: Path, sources: list[dict[str, object]], ca: Path, key: Path, port: int
) -> dict[str, Any]:
    """A board's ``agent.toml``: its buffer, its sources, and federating whenever it can."""
    return {
        "board": {"id": f"board{index + 1}", "timezone": "UTC"},
        "buffer": {
            "path": str(board_dir / "buffer.db"),
            "synchronous": "full",
            "max_mb": 256,
        },
        "sources": sources,
        "nights": {"settle_seconds": 3},
        "federation": {
            "server": f"127.0.0.1:{port}",
            "root_certificates": str(ca),
            "auth_private_key": str(key),
            "window": "always",
            "min_new_labelled_windows": 10,
            "retry_initial_seconds": 1,
            "retry_max_seconds": 10,
            "session_idle_seconds": 600,
            "refused_retry_minutes": 0.2,
            "supernode_port": 9200 + index,
        },
    }


def enroll_boards(
    workdir: Path, server_config: Path, pki: dict[str, Path], args: argparse.Namespace
) -> list[Path]:
    """Each board makes its own key pair (sleepfed-enroll, below a root of its own: the demo
    does not touch this machine's /etc), the operator registers the requests."""
    from sleepfed.provisioning.pki import fingerprint_sha256

    fingerprint = fingerprint_sha256(pki["ca"])
    requests, keys = [], []
    for index in range(args.boards):
        root = workdir / f"board{index + 1}" / "root"
        request = _enroll(f"board{index + 1}", root, args.port, pki["ca"], fingerprint)
        requests.append(str(request))
        keys.append(root / "etc" / "sleepfed" / "node.key")
    subprocess.run(
        [
            PYTHON,
            "-m",
            "sleepfed.server.ops.cli",
            "boards",
            "register",
            "--config",
            str(server_config),
            *requests,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    print(
        f"{args.boards} boards enrolled: each made its key pair, the server registered them "
        f"(node authentication on; CA fingerprint {fingerprint[:23]}...)"
    )
    return keys


def _enroll(board_id: str, root: Path, port: int, ca: Path, fingerprint: str) -> Path:
    """Run sleepfed-enroll for one board; returns its enrollment request file."""
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "sleepfed.provisioning.enroll",
            "--board-id",
            board_id,
            "--server",
            f"127.0.0.1:{port}",
            "--ca-file",
            str(ca),
            "--ca-fingerprint",
            fingerprint,
            "--root",
            str(root),
            "--no-system-user",
            "--no-unit",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    request = root / "etc" / "sleepfed" / "enrollment-request.txt"
    assert request.read_text().strip() == result.stdout.strip().splitlines()[-1]
    return request
