"""The boards' address: nginx in front of the SuperLink, serving the Fleet API and nothing else.

Flower 1.42 serves its Fleet API (boards), Control API (``flwr``: start-run, stop-run,
register-node, unregister-node, …) and Runtime API (ServerApp, SuperExec) from one HTTP app
on one ``--host/--port``, and this Flower distribution cannot authenticate the Control API.
So the SuperLink listens on loopback only, and nginx (Debian's ``nginx-light``) holds the
public ``[server] host:port``: it terminates TLS with the operator's server certificate and
forwards ``POST /v1/fleet/*`` and ``GET /health`` to the SuperLink over a second, loopback-only
TLS connection that it verifies against the server's own loopback CA (``loopback-tls/`` in the
state directory). Every other path and method is answered by nginx (404 / 405) before Flower
sees it. Node signatures travel in request headers, which nginx passes on unchanged.

nginx runs as a supervised child of ``sleepfed-server run`` with its own configuration, pid,
logs and temporary folders under ``state_dir/fleet-proxy`` (never the system's nginx), in the
foreground, with one worker. It buffers nothing to disk: the workers never need a writable
folder, whichever user they run as.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from cryptography import x509

from sleepfed.server.ops.config import ServerConfig

log = logging.getLogger("sleepfed.server")

# The largest request body a board may send (Flower pushes one object per request; our model
# is 26 floats and a SecAgg+ share a few KB). Larger bodies get 413 from nginx.
MAX_BODY = "4m"
LOOPBACK_NAME = "localhost"  # a DNS SAN of the loopback certificate (nginx checks names only)
ACCESS_LOG_FORMAT = '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent'
PR_SET_PDEATHSIG = 1


class ProxyError(RuntimeError):
    pass


def nginx_binary() -> str:
    """Debian installs nginx in /usr/sbin, which an ordinary user's PATH may lack."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ProxyError(
            "nginx is not installed: the boards' address is served by nginx in front of the "
            "SuperLink (Debian: apt-get install nginx-light)"
        )
    return found


def loopback_tls(config: ServerConfig) -> dict[str, Path]:
    """The SuperLink's loopback certificate and its CA, made once in the state directory.
    Separate from the operator's certificate so that the loopback side never depends on which
    names that certificate carries."""
    from sleepfed.provisioning.pki import ensure_demo_pki

    return ensure_demo_pki(config.state_dir / "loopback-tls", ["127.0.0.1", LOOPBACK_NAME])


def _check_certificate(certfile: Path) -> None:
    try:
        x509.load_pem_x509_certificate(certfile.read_bytes())
    except (OSError, ValueError) as error:
        raise ProxyError(f"server.certfile {certfile}: {error}") from error


# What a path or host may hold to be written into nginx's configuration as it is: no
# quote, semicolon, brace, `$` (nginx would read a variable) or white space, which could end a
# directive and start another.
_NGINX_SAFE = re.compile(r"^[A-Za-z0-9._/+@=,:%~\[\]-]+$")


def _safe(value: object, name: str) -> str:
    text = str(value)
    if not _NGINX_SAFE.match(text):
        raise ProxyError(
            f"{name} {text!r}: nginx cannot take it as it is (letters, digits and . _ / + @ = , "
            ": % ~ - only)"
        )
    return text


def _listen(host: str, port: int) -> str:
    host = _safe(host, "server.host")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _proxied(config: ServerConfig, tls: bool) -> str:
    """The directives of a proxied location: on to the SuperLink over loopback, its
    certificate checked against the loopback CA under TLS."""
    upstream = f"{'https' if tls else 'http'}://127.0.0.1:{config.superlink_port}"
    upstream_tls = ""
    if tls:
        loopback = loopback_tls(config)
        upstream_tls = f"""
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {_safe(loopback["ca"], "server.state_dir")};
            proxy_ssl_name {LOOPBACK_NAME};
            proxy_ssl_server_name on;"""
    return f"""
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;{upstream_tls}"""


def _server_tls(config: ServerConfig) -> str:
    """The directives that terminate the boards' TLS with the operator's certificate."""
    assert config.certfile is not None and config.keyfile is not None
    _check_certificate(config.certfile)
    return f"""
        ssl_certificate {_safe(config.certfile, "server.certfile")};
        ssl_certificate_key {_safe(config.keyfile, "server.keyfile")};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:fleet_tls:1m;"""


def render_config(config: ServerConfig, folder: Path) -> str:
    """nginx's configuration for this server (every path absolute; nothing from /etc/nginx)."""
    tls = not config.insecure
    proxied = _proxied(config, tls)
    listen = _listen(config.host, config.port) + (" ssl" if tls else "")
    server_tls = _server_tls(config) if tls else ""
    folder = Path(_safe(folder, "server.state_dir"))
    temp = folder / "tmp"
    return f"""# Written by sleepfed-server run (sleepfed.server.fleet.fleet_proxy) at every start.
daemon off;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    server_tokens off;
    log_format fleet '{ACCESS_LOG_FORMAT}';
    access_log {folder / "access.log"} fleet;
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    client_max_body_size {MAX_BODY};
    client_body_buffer_size {MAX_BODY};
    keepalive_timeout 65s;
    server {{
        listen {listen};{server_tls}
        location /v1/fleet/ {{
            limit_except POST {{ deny all; }}{proxied}
        }}
        location = /health {{
            limit_except GET {{ deny all; }}{proxied}
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when ``sleepfed-server`` dies, even by SIGKILL, so
    that no orphaned proxy keeps the boards' port (Linux only; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class FleetProxy:
    """nginx on the boards' address, started and restarted by ``sleepfed-server run``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.folder = config.state_dir / "fleet-proxy"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.folder / "nginx.conf"

    def check(self) -> str:
        """Write nginx's configuration and have nginx test it (certificate and key included),
        without binding anything; returns the nginx binary. ProxyError if anything is off."""
        binary = nginx_binary()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.folder / "tmp").mkdir(mode=0o700, exist_ok=True)
        self.config_path.write_text(render_config(self.config, self.folder))
        checked = subprocess.run(
            [binary, "-t", "-q", "-p", str(self.folder), "-e", str(self.folder / "error.log"),
             "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
        if checked.returncode != 0:
            raise ProxyError(f"nginx refused its configuration: {checked.stderr.strip()[-600:]}")
        return binary

    def start(self, ready_timeout: float = 30.0) -> None:
        binary = self.check()
        with (self.folder / "nginx.out").open("ab") as out:
            self.process = subprocess.Popen(
                [binary, "-p", str(self.folder), "-e", str(self.folder / "error.log"),
                 "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.time() + ready_timeout
        pid_file = self.folder / "nginx.pid"
        while time.time() < deadline:
            if self.process.poll() is not None:
                tail = (self.folder / "error.log").read_text(errors="replace")[-600:]
                raise ProxyError(f"nginx exited with {self.process.returncode}: {tail}")
            # nginx writes its pid once it holds the port; a connection alone could reach a
            # process left over from an earlier start
            if pid_file.exists() and pid_file.read_text().strip() == str(self.process.pid):
                log.info(
                    "fleet proxy (nginx, pid %d) serves the Fleet API only on %s",
                    self.process.pid,
                    self.config.address,
                )
                return
            time.sleep(0.1)
        self.stop()
        raise ProxyError(f"nginx did not listen on {self.config.address} in {ready_timeout:.0f}s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        from sleepfed.common.flower_process import stop_process_group

        process, self.process = self.process, None
        stop_process_group(process, 10.0)
