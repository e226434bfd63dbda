"""Entry points of the compose fleet (docker/compose.yaml): one server and N boards, each
board an agent fed by one replayed real Walch 2019 subject, all on 127.0.0.1 (host network).

    python /fleet/fleet.py server   # server image: CA + certificate, config, register boards, run
    python /fleet/fleet.py board    # agent image: enroll, replay --pty, run the agent on it

Volumes (owned by uid 10001, see the compose file's "volumes-init" service). No board
container mounts a volume that holds a private key other than its own:
    /pki              server only: the demo CA (ca.key, ca.pem) and server certificate
                      (server.key, server.pem)
    /ca               the public CA: the server copies ca.pem alone here; boards mount it
                      read-only
    /request          (board) the board's own request volume, written by that board only
    /requests/<id>    (server) every board's request volume, read-only
Environment: see compose.yaml. The flow is tools/sleepfed_tools/demo.py's, split over containers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sleepfed.provisioning import agent_toml
from sleepfed.provisioning.request import RequestError, parse_request

PKI = Path(os.environ.get("FLEET_PKI", "/pki"))
CA = Path(os.environ.get("FLEET_CA", "/ca"))
REQUESTS = Path(os.environ.get("FLEET_REQUESTS", "/requests"))  # server: one folder per board
REQUEST = Path(os.environ.get("FLEET_REQUEST", "/request"))  # board: its own folder
DATA = Path(os.environ.get("FLEET_DATA", "/data")) / "walch2019"
PORT = int(os.environ.get("FLEET_PORT", "9093"))  # the public TLS proxy (nginx)
SUPERLINK_PORT = int(os.environ.get("FLEET_SUPERLINK_PORT", str(PORT + 1)))  # on 127.0.0.1


def say(text: str) -> None:
    print(f"[fleet {os.environ.get('BOARD_ID', 'server')}] {text}", flush=True)


def wait_for(check, what: str, timeout: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise SystemExit(f"fleet: timed out waiting for {what}")
        time.sleep(1)


def writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def write_atomically(path: Path, text: str) -> None:
    """Readers in other containers see the whole file or none (write, then rename)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def request_of(board_id: str) -> Path:
    """Where the server reads board_id's request: that board's own volume, read-only."""
    return REQUESTS / board_id / f"{board_id}.txt"


def check_request(board_id: str, path: Path) -> None:
    """A board's volume may only hand in a request for that board: board1 cannot enroll a
    key as board2 by writing a request that names board2 into its own volume."""
    try:
        request = parse_request(path.read_text())
    except RequestError as error:
        raise SystemExit(f"fleet: {path}: {error}") from None
    if request.board_id != board_id:
        raise SystemExit(
            f"fleet: the request in {board_id}'s volume names board {request.board_id!r}; refused"
        )


def server() -> int:
    from sleepfed.model.walch import walch_subjects

    boards = os.environ["FLEET_BOARDS"].split(",")
    board_subjects = set(os.environ.get("FLEET_BOARD_SUBJECTS", "").split(","))
    state = Path(os.environ.get("FLEET_STATE", "/var/lib/sleepfed-server"))
    wait_for(
        lambda: writable(PKI) and writable(CA) and writable(state),
        "writable /pki, /ca and state volumes",
    )
    if not (PKI / "ca.pem").exists():
        subprocess.run(
            [
                "sleepfed-server",
                "certs",
                "--out",
                str(PKI),
                "--host",
                "127.0.0.1",
                "--host",
                "localhost",
            ],
            check=True,
        )
    # the boards' copy: the CA certificate alone (never ca.key or server.key)
    ca_pem = (PKI / "ca.pem").read_text()
    if not (CA / "ca.pem").exists() or (CA / "ca.pem").read_text() != ca_pem:
        write_atomically(CA / "ca.pem", ca_pem)
    held_out = [s for s in walch_subjects(DATA) if s not in board_subjects]
    config = state / "server.toml"
    config.write_text(
        f"""[server]
state_dir = "{state / "state"}"
host = "127.0.0.1"
port = {PORT}
superlink_port = {SUPERLINK_PORT}
certfile = "{PKI / "server.pem"}"
keyfile = "{PKI / "server.key"}"
ca_certfile = "{PKI / "ca.pem"}"

[federation]
rounds = {int(os.environ.get("FLEET_ROUNDS", "3"))}
min_nodes = {len(boards)}
local_iterations = 20
round_timeout_seconds = {float(os.environ.get("FLEET_ROUND_TIMEOUT", "900"))}

[evaluation]
data = "{DATA}"
subjects = {json.dumps(held_out)}
"""
    )
    say(f"waiting for the enrollment requests of {', '.join(boards)}")
    requests = [request_of(b) for b in boards]
    wait_for(lambda: all(r.exists() for r in requests), "every board's enrollment request", 1800)
    for board_id, request in zip(boards, requests, strict=True):
        check_request(board_id, request)
    subprocess.run(
        ["sleepfed-server", "boards", "register", "--config", str(config), *map(str, requests)],
        check=True,
    )
    once = ["--once"] if os.environ.get("FLEET_ONCE", "1") == "1" else []
    os.execvp("sleepfed-server", ["sleepfed-server", "run", *once, "--config", str(config)])
    return 1


def board() -> int:
    from sleepfed.provisioning.pki import fingerprint_sha256

    board_id = os.environ["BOARD_ID"]
    subject = os.environ["SUBJECT"]
    state = Path(os.environ.get("FLEET_STATE", "/var/lib/sleepfed"))
    wait_for(lambda: writable(REQUEST) and writable(state), "writable /request and state")
    wait_for(lambda: (CA / "ca.pem").exists(), "the server's CA certificate in /ca")
    root = state / "root"
    subprocess.run(
        [
            "sleepfed-enroll",
            "--board-id",
            board_id,
            "--server",
            f"127.0.0.1:{PORT}",
            "--ca-file",
            str(CA / "ca.pem"),
            "--ca-fingerprint",
            fingerprint_sha256(CA / "ca.pem"),
            "--root",
            str(root),
            "--no-system-user",
            "--no-unit",
        ],
        check=True,
    )
    request = (root / "etc" / "sleepfed" / "enrollment-request.txt").read_text()
    write_atomically(REQUEST / f"{board_id}.txt", request)

    sources: list[dict[str, object]] = []
    marker = state / "replayed"
    replay = None
    if not marker.exists():
        # the replayed night's sensor: a PTY in this container (sleepfed_tools.replay, at /tools)
        replay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sleepfed_tools.replay",
                "--data",
                str(DATA),
                "--subject",
                subject,
                "--pty",
                "--wait-open",
                os.environ.get("REPLAY_WAIT_OPEN", "30"),
                "--rate",
                os.environ.get("REPLAY_RATE", "0"),
                "--linger",
                "30",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert replay.stdout is not None
        first = replay.stdout.readline().split()
        if len(first) != 2 or first[0] != "PTY":
            raise SystemExit(f"fleet: replay did not print its PTY: {first}")
        sources = [{"type": "serial", "name": "wrist", "port": first[1]}]
        say(f"replaying Walch subject {subject} through {first[1]}")
    config = agent_toml.write(
        state / "agent.toml",
        {
            "board": {"id": board_id, "timezone": "UTC"},
            "buffer": {"path": str(state / "buffer.db"), "synchronous": "full", "max_mb": 256},
            "sources": sources,
            "nights": {"settle_seconds": 3},
            "federation": {
                "server": f"127.0.0.1:{PORT}",
                "root_certificates": str(CA / "ca.pem"),
                "auth_private_key": str(root / "etc" / "sleepfed" / "node.key"),
                "window": "always",
                "min_new_labelled_windows": 10,
                "retry_initial_seconds": 1,
                "retry_max_seconds": 10,
                "session_idle_seconds": 600,
                "refused_retry_minutes": 0.2,
                "supernode_port": int(os.environ.get("SUPERNODE_PORT", "9201")),
            },
        },
    )
    agent = subprocess.Popen(["sleepfed-agent", "run", "--config", str(config)])
    if replay is not None:
        assert replay.stdout is not None
        for line in replay.stdout:
            say(f"replay | {line.rstrip()}")
        if replay.wait() == 0:
            marker.write_text(subject + "\n")

    def forward(signum, frame):  # type: ignore[no-untyped-def]
        if agent.poll() is None:
            agent.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return agent.wait()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("server", "board"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(server() if sys.argv[1] == "server" else board())
