"""A stranger on the network against the boards' address of a server set up as the runbook
says (``sleepfed-server certs``, TLS, node authentication on by default, ``sleepfed-server
run``). Every attack uses what such a stranger has: the public CA certificate, ``curl``,
``flwr``, a bare ``flower-supernode``, and Flower's own signing code."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from flwr.proto.fleet_pb2 import ActivateNodeRequest
from flwr.supercore.date import now
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

from sleepfed.common.flower_process import flower_bin, flower_environment
from sleepfed.server.fleet.boards import Registry
from sleepfed.server.ops.config import ServerConfig, load_config
from tests.support.federation_helpers import (
    free_port,
    node_key,
    pki,
    register,
    start_server,
    stop,
    wait_for,
    write_server_config,
)

Attack = Callable[[str, str, str, bool], None]
HELD_OUT = ["1066528"]
RECONCILE_SECONDS = 2


@dataclass
class Server:
    root: Path
    config: ServerConfig
    certs: dict[str, Path]
    enrolled_key: Path
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.config.port}"

    def nodes(self) -> list[tuple[str, str]]:
        """(node id, status) of every node the SuperLink knows, unregistered ones too, asked
        over its Control API as the operator's ``flwr`` asks (its state is in memory)."""
        result = subprocess.run(
            [flower_bin("flwr"), "supernode", "list", "sleepfed", "--format", "json", "-v"],
            capture_output=True,
            text=True,
            timeout=60,
            env=flower_environment(self.config.state_dir / "flwr"),
        )
        payload = json.loads(result.stdout[result.stdout.index("{") :])
        assert payload["success"], result.stdout + result.stderr
        return sorted((str(n["node-id"]), str(n["status"])) for n in payload["nodes"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, walch_dir: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hostile")
    certs = pki(root)
    config_path = write_server_config(
        root, free_port(), certs, rounds=1, min_nodes=1, walch_dir=walch_dir, held_out=HELD_OUT
    )
    config_path.write_text(
        config_path.read_text().replace(
            "[server]\n", f"[server]\nreconcile_seconds = {RECONCILE_SECONDS}\n", 1
        )
    )
    enrolled_key = root / "board-1.key"
    register(config_path, "board-1", node_key(enrolled_key))
    process = start_server(config_path)
    log = root / "server" / "server.log"
    wait_for(
        lambda: "submitted" in log.read_text(errors="replace") or process.poll() is not None,
        120,
        "the server to start and submit its run",
    )
    assert process.poll() is None, log.read_text()[-3000:]
    try:
        yield Server(root, load_config(config_path), certs, enrolled_key, log)
    finally:
        stop([process])


def curl(server: Server, method: str, path: str, ca: Path | None = None) -> tuple[int, str]:
    """curl's exit code and the HTTP status (``--path-as-is``: the path exactly as given)."""
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is", "-X", method,
         "-H", "Content-Type: application/protobuf", "--data-binary", "",
         "--cacert", str(ca or server.certs["ca"]), f"https://{server.address}{path}"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    return result.returncode, result.stdout.strip()


def bare_supernode(server: Server, folder: Path, *extra: str) -> tuple[int, str]:
    """A stock ``flower-supernode`` pointed at the boards' address; (exit code, its log).
    Its helper process (flower-superexec) outlives it, so the node is waited for by itself and
    its process group is ended afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "supernode.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [flower_bin("flower-supernode"), "--superlink", server.address,
             "--port", str(free_port()), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=flower_environment(folder / "flwr"),
            cwd=folder,
            start_new_session=True,
        )  # fmt: skip
    try:
        code = process.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return code, log.read_text(errors="replace")


def test_a_node_without_an_enrolled_key_is_refused(
    server: Server, tmp_path: Path, attack: Attack
) -> None:
    before = server.nodes()
    code, log = bare_supernode(
        server, tmp_path / "keyless", "--root-certificates", str(server.certs["ca"])
    )
    held = "Exit Code: 305" in log and "Received" not in log
    attack("keyless flower-supernode", "refused (305), no node, no message",
           f"exit {code}, {'refused 305' if '305' in log else 'not refused'}", held)  # fmt: skip
    assert held, log[-2000:]

    stranger_key = tmp_path / "stranger.key"
    node_key(stranger_key)
    code, log = bare_supernode(
        server,
        tmp_path / "stranger",
        "--root-certificates", str(server.certs["ca"]),
        "--auth-supernode-private-key", str(stranger_key),
    )  # fmt: skip
    held = "Exit Code: 305" in log and "Received" not in log
    attack("unregistered key on flower-supernode", "refused (305), no node, no message",
           f"exit {code}, {'refused 305' if '305' in log else 'not refused'}", held)  # fmt: skip
    assert held, log[-2000:]
    after = server.nodes()
    assert after == before, "a stranger became a node"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/control/list-runs"),
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/stop-run"),
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/control/unregister-node"),
        ("POST", "/v1/runtime/get-nodes"),
        ("POST", "/v1/runtime/push-messages"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/fleet/../control/list-runs"),
        ("POST", "/v1/fleet/%2e%2e/control/list-runs"),
        ("POST", "//v1/control/list-runs"),
        ("GET", "/v1/fleet/get-run"),
    ],
)
def test_only_the_fleet_api_is_served_on_the_boards_address(
    server: Server, method: str, path: str, attack: Attack
) -> None:
    code, status = curl(server, method, path)
    # nginx answers 403 to a method that `limit_except` denies, 404 to any other path
    expected = "403" if method == "GET" and path.startswith("/v1/fleet/") else "404"
    held = code == 0 and status == expected
    attack(f"{method} {path} on the boards' address", f"{expected} from the proxy",
           f"HTTP {status}", held)  # fmt: skip
    assert held, (code, status)


def test_the_fleet_api_and_health_still_pass(server: Server) -> None:
    """The allowed paths reach Flower (its answers, not the proxy's): the test above could
    otherwise pass with a proxy that refuses everything."""
    assert curl(server, "GET", "/health") == (0, "200")
    # Flower's own answer to an empty protobuf body without node signature headers
    code, status = curl(server, "POST", "/v1/fleet/get-run")
    assert code == 0 and status in ("400", "401", "415", "422"), status


def _outsider_home(server: Server, folder: Path, ca: Path) -> dict[str, str]:
    home = folder / "flwr-home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "target"\n\n[superlink.target]\n'
        f'address = "{server.address}"\nroot-certificates = "{ca}"\n'
    )
    return flower_environment(home)


def test_an_outsider_cannot_use_the_control_api(
    server: Server, tmp_path: Path, attack: Attack
) -> None:
    env = _outsider_home(server, tmp_path, server.certs["ca"])
    listed = subprocess.run(
        [flower_bin("flwr"), "ls", "target", "--format", "json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    held = '"success": false' in listed.stdout and "404" in listed.stdout
    attack("outsider `flwr ls` on the boards' address", "404 from the proxy, no run listed",
           "404, nothing listed" if held else listed.stdout[:60], held)  # fmt: skip
    assert held, listed.stdout + listed.stderr
    assert "run-id" not in listed.stdout

    submitted = subprocess.run(
        [flower_bin("flwr"), "run", str(server.config.state_dir / "app"), "target",
         "--format", "json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    held = '"success": false' in submitted.stdout and "404" in submitted.stdout
    attack("outsider `flwr run` (a ServerApp of its own)", "404 from the proxy, no run",
           "404, no run" if held else submitted.stdout[:60], held)  # fmt: skip
    assert held, submitted.stdout + submitted.stderr


def test_a_client_pinning_another_ca_gets_nowhere(
    server: Server, tmp_path: Path, attack: Attack
) -> None:
    other = pki(tmp_path / "other")
    code, status = curl(server, "GET", "/health", ca=other["ca"])
    held = code == 60  # curl: the peer certificate cannot be authenticated
    attack("client pinning another CA (curl)", "TLS verification fails", f"curl exit {code}",
           held)  # fmt: skip
    assert held, (code, status)
    before = server.nodes()
    code, log = bare_supernode(
        server, tmp_path / "other-ca", "--root-certificates", str(other["ca"])
    )
    held = code != 0 and "CERTIFICATE_VERIFY_FAILED" in log and server.nodes() == before
    attack("flower-supernode pinning another CA", "TLS fails, no node",
           f"exit {code}, {'verify failed' if 'VERIFY_FAILED' in log else '?'}", held)  # fmt: skip
    assert held, log[-2000:]


def _signed_activate(server: Server, signed_at_offset: timedelta) -> int:
    """An activate-node request signed with the enrolled board's real key, over a timestamp
    ``signed_at_offset`` from now (what a replayed capture of a real request looks like)."""
    key = serialization.load_ssh_private_key(server.enrolled_key.read_bytes(), password=None)
    public = public_key_to_bytes(key.public_key())  # type: ignore[arg-type]
    timestamp = (now() + signed_at_offset).isoformat()
    signature = sign_message(key, timestamp.encode("ascii"))  # type: ignore[arg-type]
    body = ActivateNodeRequest(public_key=public, heartbeat_interval=30).SerializeToString()
    response = httpx.post(
        f"https://{server.address}/v1/fleet/activate-node",
        content=body,
        headers={
            "content-type": "application/protobuf",
            "flwr-public-key": b64encode(public).decode(),
            "flwr-timestamp": timestamp,
            "flwr-signature": b64encode(signature).decode(),
        },
        verify=ssl.create_default_context(cafile=str(server.certs["ca"])),
        timeout=30,
    )
    return response.status_code


def test_a_signature_outside_its_time_window_is_refused(server: Server, attack: Attack) -> None:
    stale = _signed_activate(server, timedelta(seconds=-400))
    held = stale == 401
    attack("enrolled board's request signed 400 s ago (replay)", "401 at the SuperLink",
           f"HTTP {stale}", held)  # fmt: skip
    assert held, stale
    # The same request signed now passes the proxy and Flower: the window is what refused it.
    assert _signed_activate(server, timedelta(0)) == 200


def test_the_run_loop_applies_the_registry_and_one_bad_entry_blocks_nothing(
    server: Server, tmp_path: Path
) -> None:
    """Registry changes the CLI could not apply (its SuperLink call failed) are applied by
    ``sleepfed-server run`` within ``reconcile_seconds``; a board whose key the SuperLink
    refuses is logged and retried without holding up the boards after it."""
    registry = Registry(server.config)
    try:
        registry.conn.execute(  # a key that looks right to us but that Flower cannot parse
            "INSERT INTO boards VALUES ('aaa-broken', 'ecdsa-sha2-nistp384 AAAAbroken', "
            "'pending', NULL, ?, ?)",
            (time.time(), time.time()),
        )
        late = node_key(tmp_path / "late.key")
        from sleepfed.provisioning.request import EnrollmentRequest

        registry.add(EnrollmentRequest("zzz-late", late))
    finally:
        registry.close()

    def status_of(board_id: str) -> str:
        registry = Registry(server.config)
        try:
            return next(str(b["status"]) for b in registry.boards() if b["board_id"] == board_id)
        finally:
            registry.close()

    wait_for(lambda: status_of("zzz-late") == "registered", 6 * RECONCILE_SECONDS + 60,
             "the run loop to register the late board")  # fmt: skip
    assert status_of("aaa-broken") == "pending"
    assert "board aaa-broken (pending) not applied" in server.log.read_text(errors="replace")

    registry = Registry(server.config)
    try:
        registry.revoke("zzz-late")  # the CLI's own sync is skipped: as if it had failed
    finally:
        registry.close()
    assert status_of("zzz-late") == "revoke-pending"
    wait_for(lambda: status_of("zzz-late") == "revoked", 6 * RECONCILE_SECONDS + 60,
             "the run loop to apply the revocation")  # fmt: skip
    assert status_of("aaa-broken") == "pending"
