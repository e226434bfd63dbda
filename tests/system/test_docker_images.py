"""The container images (issue D): docker/build-local.sh builds them, then an arm64 board
under QEMU completes a federated round against an amd64 server, both on the host network,
TLS + node authentication as in the demo.

Skipped unless SLEEPFED_DOCKER_TESTS=1 (root, network to Debian and PyPI; ~2 min with the
images cached, ~25 min on a fresh 2-core machine, docker/README.md#measured; base images and
BuildKit's cache are kept under /var/lib/sleepfed-docker between runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.docker_helpers import DOCKER_TESTS, UID, docker, images  # noqa: F401  (the fixture)

pytestmark = DOCKER_TESTS

# Modules a board image must not hold: package installers, uvicorn's compiled speed-ups,
# the developer tools and the test extra's packages (pyproject.toml [test]).
ABSENT_FROM_BOARDS = (
    "uv", "pip", "uvloop", "httptools",
    "sleepfed_tools", "dbus", "dbusmock", "pytest", "hypothesis", "ruff", "psutil",
)  # fmt: skip

BOARD_SUBJECT = "4426783"
HELD_OUT = ["1066528", "2638030", "8000685", "8692923"]
PREFIX = f"sleepfed-test-{os.getpid()}"


def _chown_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, UID, UID, follow_symlinks=False)


@pytest.mark.usefixtures("images")
def test_arm64_board_trains_a_round_with_an_amd64_server(tmp_path: Path, walch_dir: Path) -> None:
    from sleepfed.provisioning.pki import fingerprint_sha256
    from tests.support.federation_helpers import free_port, write_board

    work = tmp_path / "work"
    work.mkdir()
    _chown_tree(work)
    mounts = ["-v", f"{work}:/work", "-v", f"{walch_dir}:/data/walch2019:ro"]
    host = ["--network", "host"]
    port = free_port()  # the server's TLS proxy (nginx), what the board connects to
    superlink_port = free_port()  # the SuperLink behind it, on 127.0.0.1

    # the server image makes the demo CA and server certificate
    docker(
        "run", "--rm", *host, *mounts, "sleepfed-server:amd64",
        "certs", "--out", "/work/pki", "--host", "127.0.0.1", "--host", "localhost",
    )  # fmt: skip
    (work / "server").mkdir()
    (work / "server" / "server.toml").write_text(
        f"""[server]
state_dir = "/work/server/state"
host = "127.0.0.1"
port = {port}
superlink_port = {superlink_port}
certfile = "/work/pki/server.pem"
keyfile = "/work/pki/server.key"
ca_certfile = "/work/pki/ca.pem"

[federation]
rounds = 1
min_nodes = 1
local_iterations = 5
round_timeout_seconds = 900

[evaluation]
data = "/data/walch2019"
subjects = {json.dumps(HELD_OUT)}
"""
    )
    # a board whose buffer already holds one extracted Walch night (as tests/federation_helpers);
    # enrol=False: the board makes its own key below, inside its image (and write_board would
    # otherwise open the registry at the config's container paths, /work/…, on the host)
    write_board(work, "board1", port, work / "pki" / "ca.pem", walch_dir=walch_dir,
                subject=BOARD_SUBJECT, enrol=False)  # fmt: skip
    _chown_tree(work)

    # the board enrolls itself (its own key pair, the pinned CA), inside the arm64 image
    fingerprint = fingerprint_sha256(work / "pki" / "ca.pem")
    docker(
        "run", "--rm", *host, "--platform", "linux/arm64", *mounts,
        "--entrypoint", "sleepfed-enroll", "sleepfed-agent:arm64",
        "--board-id", "board1", "--server", f"127.0.0.1:{port}",
        "--ca-file", "/work/pki/ca.pem", "--ca-fingerprint", fingerprint,
        "--root", "/work/board1/root", "--no-system-user", "--no-unit",
        timeout=900,
    )  # fmt: skip
    request = "/work/board1/root/etc/sleepfed/enrollment-request.txt"
    docker(
        "run", "--rm", *host, *mounts, "sleepfed-server:amd64",
        "boards", "register", "--config", "/work/server/server.toml", request,
    )  # fmt: skip
    (work / "board1" / "agent.toml").write_text(
        f"""[board]
id = "board1"

[buffer]
path = "/work/board1/buffer.db"

[federation]
server = "127.0.0.1:{port}"
root_certificates = "/work/pki/ca.pem"
auth_private_key = "/work/board1/root/etc/sleepfed/node.key"
window = "always"
min_new_labelled_windows = 1
retry_initial_seconds = 1
retry_max_seconds = 10
session_idle_seconds = 900
refused_retry_minutes = 0.1
activation_patience_seconds = 120
supernode_port = {free_port()}
"""
    )
    _chown_tree(work)

    server, board = f"{PREFIX}-server", f"{PREFIX}-board1"
    try:
        docker(
            "run", "-d", "--name", server, *host, *mounts, "sleepfed-server:amd64",
            "run", "--once", "--config", "/work/server/server.toml",
        )  # fmt: skip
        docker(
            "run", "-d", "--name", board, *host, "--platform", "linux/arm64", *mounts,
            "sleepfed-agent:arm64", "run", "--config", "/work/board1/agent.toml",
        )  # fmt: skip
        assert docker("exec", board, "uname", "-m").stdout.strip() == "aarch64"
        code = docker("wait", server, timeout=1800).stdout.strip()
        server_log = docker("logs", server, check=False).stdout
        board_log = docker("logs", "--tail", "80", board, check=False)
        assert code == "0", (
            f"server exited {code}\n{server_log[-3000:]}\n--- board ---\n"
            f"{board_log.stdout[-3000:]}{board_log.stderr[-3000:]}"
        )
        listed = docker(
            "run", "--rm", *host, *mounts, "sleepfed-server:amd64",
            "history", "--json", "--config", "/work/server/server.toml",
        )  # fmt: skip
        history = json.loads(listed.stdout)
        assert [r["global_round"] for r in history] == [1]
        (record,) = history
        assert record["train_nodes"] == 1 and record["eval_nodes"] == 1
        assert 0.0 < record["train_metrics"]["train-loss"] < 0.7
        assert 0.6 <= record["server_metrics"]["auc"] <= 1.0
        # A board cannot install what a server's app asks for: no uv, no pip in its image
        # (nor uvicorn's compiled speed-ups, dropped for size); no developer tool
        # (tools/sleepfed_tools: demo, replay, BlueZ stand-in) and no test-only dependency;
        # its modules are precompiled.
        absent = docker(
            "run", "--rm", "--network", "none", "--platform", "linux/arm64",
            "--entrypoint", "python", "sleepfed-agent:arm64", "-c",
            "import importlib.util as u, pathlib, sklearn;"
            f"print([m for m in {ABSENT_FROM_BOARDS!r} if u.find_spec(m)]);"
            "print(len(list(pathlib.Path(sklearn.__file__).parent.rglob('*.pyc'))) > 100)",
            timeout=600,
        )  # fmt: skip
        assert absent.stdout.split() == ["[]", "True"], absent.stdout + absent.stderr
        arch = docker("image", "inspect", "-f", "{{.Architecture}}", "sleepfed-agent:arm64")
        assert arch.stdout.strip() == "arm64"
        assert (
            docker(
                "image", "inspect", "-f", "{{.Config.User}}", "sleepfed-agent:arm64"
            ).stdout.strip()
            == "sleepfed"
        )
    finally:
        docker("rm", "-f", "-v", server, board, check=False)  # -v: their VOLUMEs too


# Inside the server image, as its user: the server's own fleet proxy
# (sleepfed.server.fleet.fleet_proxy, the nginx that `sleepfed-server run` starts) on
# 127.0.0.1:9393 in front of a stand-in SuperLink on 127.0.0.1:9394 (TLS with the loopback
# certificate, as the SuperLink's), and the image's HEALTHCHECK before and after that
# SuperLink is up. Prints one JSON object.
PROXY_PROBE = r"""
import http.server, json, os, ssl, subprocess, sys, threading
from pathlib import Path
from sleepfed.server.ops.config import load_config
from sleepfed.server.fleet.fleet_proxy import FleetProxy, loopback_tls

s = Path("/tmp/s")
subprocess.run(["sleepfed-server", "certs", "--out", str(s / "pki"), "--host", "127.0.0.1"],
               check=True, capture_output=True)
(s / "server.toml").write_text(f'''[server]
state_dir = "{s}/state"
host = "127.0.0.1"
port = 9393
superlink_port = 9394
certfile = "{s}/pki/server.pem"
keyfile = "{s}/pki/server.key"
ca_certfile = "{s}/pki/ca.pem"
''')
config = load_config(s / "server.toml")
config.state_dir.mkdir(mode=0o700)
out = {"uid": os.getuid()}
health = [sys.executable, "/opt/sleepfed/healthcheck.py", "server", str(s / "server.toml")]
proxy = FleetProxy(config)
proxy.start()
out["nginx_uids"] = sorted(
    int((d / "status").read_text().split("Uid:")[1].split()[0])
    for d in Path("/proc").iterdir()
    if d.name.isdigit() and b"nginx" in (d / "cmdline").read_bytes()
)
out["health_down"] = subprocess.run(health, capture_output=True, text=True).returncode


class SuperLink(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


tls = loopback_tls(config)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(tls["cert"], tls["key"])
superlink = http.server.ThreadingHTTPServer(("127.0.0.1", 9394), SuperLink)
superlink.socket = context.wrap_socket(superlink.socket, server_side=True)
threading.Thread(target=superlink.serve_forever, daemon=True).start()
out["health_up"] = subprocess.run(health, capture_output=True, text=True).returncode
proxy.stop()
folder = config.state_dir / "fleet-proxy"
out["logs"] = "".join(
    (folder / name).read_text(errors="replace") for name in ("error.log", "nginx.out")
    if (folder / name).exists()
)
print(json.dumps(out))
"""


@pytest.mark.usefixtures("images")
def test_server_image_runs_the_fleet_proxy_as_its_user() -> None:
    """nginx is in the server image (not the agent image) and runs as user sleepfed with
    everything under the state dir; the HEALTHCHECK goes through it."""
    for arch in ("amd64", "arm64"):
        version = docker(
            "run", "--rm", "--network", "none", "--platform", f"linux/{arch}",
            "--entrypoint", "nginx", f"sleepfed-server:{arch}", "-V",
        )  # fmt: skip
        assert "nginx version: nginx/1.22" in version.stderr, version.stderr
        for flag in ("--with-http_ssl_module", "--with-http_v2_module", "--error-log-path=stderr"):
            assert flag in version.stderr, version.stderr
        absent = docker(
            "run", "--rm", "--network", "none", "--platform", f"linux/{arch}",
            "--entrypoint", "sh", f"sleepfed-agent:{arch}", "-c",
            "command -v nginx || ls /usr/sbin/nginx || echo none",
        )  # fmt: skip
        assert absent.stdout.strip() == "none", absent.stdout
    # no system nginx: no enabled site, no service scripts
    leftovers = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", "sleepfed-server:amd64", "-c",
        "ls -A /etc/nginx/sites-enabled; for f in /etc/init.d/nginx "
        "/lib/systemd/system/nginx.service; do test ! -e $f || echo $f; done",
    )  # fmt: skip
    assert leftovers.stdout.strip() == "", leftovers.stdout
    probe = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python", "sleepfed-server:amd64",
        "-c", PROXY_PROBE,
    )  # fmt: skip
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["uid"] == UID
    assert seen["nginx_uids"] and set(seen["nginx_uids"]) == {UID}, seen
    assert seen["health_down"] == 1, seen  # nginx up, SuperLink down: 502, unhealthy
    assert seen["health_up"] == 0, seen
    assert "Permission denied" not in seen["logs"] and "[emerg]" not in seen["logs"], seen["logs"]
