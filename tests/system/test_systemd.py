"""The systemd side: unit files (verify, exposure), sd_notify from the real daemon process,
journald fields, and (slow) the real units under a real systemd booted with systemd-nspawn."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sleepfed_tools.replay import PtyLink

from sleepfed.board.service.notify import Notifier
from sleepfed.board.sources.protocol import Kind, Reading, format_reading
from tests.support.deb_machine import RUNNER_UNIT
from tests.support.helpers import REPO, wait_for, write_agent_config
from tests.support.notify_listener import NotifyListener

UNITS = REPO / "systemd"
VENV_BIN = Path(sys.executable).parent
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def unit_for_host(name: str, folder: Path) -> Path:
    """A copy of ``systemd/<name>`` whose ExecStart points at this venv's real binary
    (``systemd-analyze verify`` checks that the binary exists)."""
    text = (UNITS / name).read_text()
    assert "/opt/sleepfed/venv/bin/" in text
    copy = folder / name
    copy.write_text(text.replace("/opt/sleepfed/venv/bin/", f"{VENV_BIN}/"))
    return copy


# -- a. systemd-analyze verify -------------------------------------------------------------------
@needs_analyze
@pytest.mark.parametrize("name", ["sleepfed-agent.service", "sleepfed-server.service"])
def test_unit_verifies_cleanly(tmp_path: Path, name: str) -> None:
    unit = unit_for_host(name, tmp_path)
    assert Path(VENV_BIN / name.split(".")[0]).exists()
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even on "..., ignoring." warnings: any stderr is a failure.
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# -- b. exposure --------------------------------------------------------------------------------
@needs_analyze
@pytest.mark.parametrize("name", ["sleepfed-agent.service", "sleepfed-server.service"])
def test_unit_exposure(tmp_path: Path, name: str) -> None:
    unit = unit_for_host(name, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"{name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_units_comment_every_directive() -> None:
    """Every directive carries its reason on the line above."""
    for unit in UNITS.glob("*.service"):
        lines = unit.read_text().splitlines()
        for number, line in enumerate(lines):
            if "=" in line and not line.startswith("#"):
                assert lines[number - 1].startswith("#"), f"{unit.name}:{number + 1}: {line}"


# -- c. sd_notify from the real daemon ---------------------------------------------------------
# the service manager's socket: tests/support/notify_listener.py


def _agent_env(notify_socket: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID"):
        env.pop(key, None)
    env.update(NOTIFY_SOCKET=str(notify_socket), WATCHDOG_USEC="2000000")
    return env


HIDE_SYSTEMD_PYTHON = (
    "import sys; sys.modules['systemd'] = None; "
    "from sleepfed.board.service.cli import main; sys.exit(main())"
)


@pytest.mark.parametrize("backend", ["systemd-python", "fallback"])
def test_sd_notify_protocol(tmp_path: Path, backend: str) -> None:
    if backend == "systemd-python":
        pytest.importorskip("systemd.daemon")
        prefix = [sys.executable, "-m", "sleepfed.board.service.cli"]
    else:
        prefix = [sys.executable, "-c", HIDE_SYSTEMD_PYTHON]
    listener = NotifyListener(tmp_path / "notify.sock")
    link = PtyLink()
    config = write_agent_config(
        tmp_path / "agent.toml", buffer=tmp_path / "buffer.db", ports={"wrist": link.device_path}
    )
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*prefix, "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=_agent_env(listener.path),
        )
    try:
        wait_for(lambda: listener.lines("READY=1"), 20, 0.05, "READY=1", between=link.wait)
        # Readings arrive; the status line counts them and shows the source connected.
        for i in range(50):
            link.write(format_reading(Reading(1_764_000_000.0 + i, Kind.HR, 60.0)))
        wait_for(
            lambda: [m for _, m in listener.lines("STATUS=ok: 1/1 sources, 50 readings")],
            15,
            0.1,
            "STATUS with 1/1 sources and 50 readings",
            between=link.wait,
        )
        start = time.monotonic()
        link.wait(3.6)
        pings = [t for t, _ in listener.lines("WATCHDOG=1") if t >= start]
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        link.close()
        listener.close()
    log_text = log_path.read_text()
    assert f"via {backend}" in log_text, log_text
    messages = [m for _, m in listener.lines()]
    assert messages.index("READY=1") < messages.index("STOPPING=1")
    assert messages.count("READY=1") == 1
    assert messages.count("STOPPING=1") == 1
    status = [m for m in messages if m.startswith("STATUS=ok: ")]
    assert status[-1] == "STATUS=ok: 1/1 sources, 50 readings, no model yet, last session none"
    # WATCHDOG_USEC=2 s: a ping about every second (never more often than every second).
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 3, pings
    assert all(0.9 <= gap <= 1.6 for gap in gaps), gaps


def test_notifier_fallback_abstract_socket_and_watchdog_pid() -> None:
    name = f"sleepfed-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"}
        notifier = Notifier(env)
        assert notifier.backend == "fallback"
        assert notifier.watchdog_interval() == 15.0
        assert notifier.ready("starting")
        assert sock.recv(100) == b"READY=1\nSTATUS=starting"
        assert notifier.status("two\nlines")
        assert sock.recv(100) == b"STATUS=two lines"
        assert notifier.stopping() and not notifier.stopping()
        assert sock.recv(100) == b"STOPPING=1"
    finally:
        sock.close()
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval() is None
    silent = Notifier({})
    assert not silent.enabled and silent.watchdog_interval() is None and not silent.ready()


def test_journal_handler_sends_structured_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("systemd.journal")
    from sleepfed.board.service.logging_setup import journal_handler

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert journal_handler("sleepfed-agent") is None  # not under systemd: stderr stays
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    handler = journal_handler("sleepfed-agent")
    assert handler is not None
    sent: list[dict[str, object]] = []
    # record attributes (msg, args, message, ...) come along as lower-case keys, which journald
    # drops; only upper-case names are fields.
    handler.send = lambda text, **fields: sent.append({"MESSAGE_TEXT": text, **fields})  # type: ignore[attr-defined]
    logger = logging.getLogger("sleepfed.test-journal")
    logger.addHandler(handler)
    try:
        logger.warning(
            "source=%s reason=%s rejected: %s",
            "wrist",
            "checksum",
            "bad",
            extra={"SOURCE": "wrist", "ERROR_CLASS": "checksum"},
        )
    finally:
        logger.removeHandler(handler)
    (entry,) = sent
    assert entry["SOURCE"] == "wrist" and entry["ERROR_CLASS"] == "checksum"
    assert entry["SYSLOG_IDENTIFIER"] == "sleepfed-agent"
    assert entry["PRIORITY"] == "4"


# -- d. the real unit under a real systemd (systemd-nspawn) ------------------------------------
RUNNER = r"""#!/bin/bash
# Runs inside the container as a oneshot unit; writes its findings to /results.
exec >/results/runner.log 2>&1
set -x
show() { systemctl show -p ActiveState,SubState,Result,NRestarts,MainPID,StatusText "$@"; }
finish() { journalctl -u sleepfed-agent -o json >/results/journal.json
           journalctl -u sleepfed-agent -o short-monotonic >/results/journal.txt
           systemctl poweroff; exit 0; }
trap finish EXIT

useradd --system --no-create-home --user-group --shell /usr/sbin/nologin sleepfed
# A serial "sensor": two linked PTYs; the agent's end is made dialout-only like a USB adapter.
mkdir -p /run/sfpty
socat pty,raw,echo=0,link=/run/sfpty/sensor pty,raw,echo=0,link=/run/sfpty/agent &
for i in $(seq 50); do [ -e /run/sfpty/agent ] && break; sleep 0.1; done
chgrp dialout "$(readlink -f /run/sfpty/agent)"; chmod 0660 "$(readlink -f /run/sfpty/agent)"
exec 7<>/run/sfpty/sensor

install -d -m 0755 /etc/sleepfed
cat >/etc/sleepfed/agent.toml <<'EOF'
[board]
id = "nspawn-board"
timezone = "UTC"
[buffer]
path = "/var/lib/sleepfed/buffer.db"
[[sources]]
type = "serial"
name = "wrist"
port = "/run/sfpty/agent"
EOF
chgrp sleepfed /etc/sleepfed/agent.toml; chmod 0640 /etc/sleepfed/agent.toml

cp /opt/payload/sleepfed-agent.service /etc/systemd/system/
mkdir -p /etc/systemd/system/sleepfed-agent.service.d
cat >/etc/systemd/system/sleepfed-agent.service.d/test.conf <<'EOF'
[Service]
# test only: the project's code is bound at /opt/sleepfed/src (not pip-installed there)
Environment=PYTHONPATH=/opt/sleepfed/src
# test only: a PTY stands in for the USB serial adapter
DeviceAllow=char-pts rw
# test only: a short watchdog and restart pause keep the test short
WatchdogSec=3
RestartSec=1
EOF
systemctl daemon-reload
systemctl start sleepfed-agent
echo "start=$?" >>/results/facts
show sleepfed-agent >/results/started
for i in $(seq 100); do
  systemctl show -p StatusText sleepfed-agent | grep -q "1/1 sources" && break; sleep 0.1
done
printf 'SF1,HR,1764000000.000,61\nSF1,HR,1764000001.000,62\nSF1,HR,1764000000.500,60*00\n' >&7
for i in $(seq 50); do
  systemctl show -p StatusText sleepfed-agent | grep -q "2 readings" && break; sleep 0.1
done
show sleepfed-agent >/results/running

old=$(systemctl show -p MainPID --value sleepfed-agent)
[ "$old" -gt 1 ] || exit 1  # not running: nothing to wedge (kill -STOP 0 would stop us)
kill -STOP "$old"
for i in $(seq 200); do
  s=$(show sleepfed-agent)
  echo "$s" | grep -q '^Result=watchdog' && echo "saw Result=watchdog" >>/results/facts
  pid=$(echo "$s" | sed -n 's/^MainPID=//p')
  if [ "$pid" != "$old" ] && [ "$pid" != 0 ] && echo "$s" | grep -q '^SubState=running'; then
    break
  fi
  sleep 0.1
done
for i in $(seq 100); do
  systemctl show -p StatusText sleepfed-agent | grep -q "1/1 sources" && break; sleep 0.1
done
show sleepfed-agent >/results/restarted

# The agent's whole sandbox (MemoryDenyWriteExecute, ProcSubset=pid, the syscall filter, ...)
# around the heavy libraries: a oneshot copy of the unit with another ExecStart.
systemctl stop sleepfed-agent
smoke="/opt/sleepfed/venv/bin/python3 /opt/payload/smoke.py"
sed -e 's/^Type=notify/Type=oneshot/' -e '/^NotifyAccess/d' -e '/^WatchdogSec/d' \
    -e '/^Restart/d' -e "s#^ExecStart=.*#ExecStart=$smoke#" \
    /opt/payload/sleepfed-agent.service >/etc/systemd/system/sleepfed-smoke.service
mkdir -p /etc/systemd/system/sleepfed-smoke.service.d
printf '[Service]\nEnvironment=PYTHONPATH=/opt/sleepfed/src\n' \
    >/etc/systemd/system/sleepfed-smoke.service.d/test.conf
systemctl daemon-reload
systemctl start sleepfed-smoke
echo "smoke=$?" >>/results/facts
journalctl -u sleepfed-smoke -o cat >/results/smoke.txt
"""

SMOKE = """import os, sqlite3
import numpy as np
import bleak, flwr, grpc, serial
from cryptography.hazmat.primitives.asymmetric import ec
from sklearn.linear_model import LogisticRegression
import sleepfed.board.training.client_app, sleepfed.board.service.daemon
import sleepfed.board.federation.session, sleepfed.model.logistic
x = np.random.default_rng(0).normal(size=(200, 4))
print("fit", LogisticRegression().fit(x, x[:, 0] > 0).score(x, x[:, 0] > 0))
db = sqlite3.connect("/var/lib/sleepfed/smoke.db")
db.execute("CREATE TABLE t (x)")
db.commit()
ec.generate_private_key(ec.SECP256R1())
grpc.insecure_channel("127.0.0.1:9").close()
print("SMOKE OK", os.cpu_count())
"""


SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")


def venv_shim(folder: Path) -> Path:
    """A venv for /opt/sleepfed/venv inside the container: the system Python of the same
    minor version, this venv's ``lib`` (bound over ``lib/``) and this venv's console scripts
    (``sleepfed-agent``, ``sleepfed-server``, ``flower-superlink``, ``flwr``, ...) with their
    shebang pointing at it.

    This venv's own interpreter may live under /root (pyenv): the unit's ProtectHome=yes and
    /root's mode 0700 make that 203/EXEC "Permission denied" for the sleepfed user.
    """
    shim = folder / "venv"
    (shim / "bin").mkdir(parents=True)
    (shim / "lib").mkdir()
    (shim / "lib64").symlink_to("lib")
    (shim / "bin" / "python3").symlink_to(SYSTEM_PYTHON)
    (shim / "bin" / "python").symlink_to("python3")
    (shim / "pyvenv.cfg").write_text(
        f"home = {SYSTEM_PYTHON.parent}\ninclude-system-site-packages = false\n"
    )
    for source in sorted(VENV_BIN.iterdir()):
        if source.is_symlink() or not source.is_file():
            continue
        with source.open("rb") as handle:
            first = handle.readline().decode(errors="replace").strip()
        # Console scripts: "#!<this venv>/bin/python" (the server starts flower-superlink,
        # flwr, and through them flower-superexec and flwr-serverapp, from the venv's bin).
        if not (first.startswith("#!") and Path(first[2:]).parent == VENV_BIN):
            continue
        script = shim / "bin" / source.name
        body = source.read_text().split("\n", 1)[1]
        script.write_text("#!/opt/sleepfed/venv/bin/python3\n" + body)
        script.chmod(0o755)
    assert (shim / "bin" / "sleepfed-server").exists(), sorted(VENV_BIN.iterdir())
    return shim


def _props(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split("=", 1) for line in lines if "=" in line)


@dataclass(frozen=True)
class Boot:
    results: Path  # what the runner wrote to /results
    took: float  # seconds from nspawn's start to the container's poweroff
    context: str  # nspawn's status and stderr tail, runner.log: for assertion messages


@contextlib.contextmanager
def nspawn_work(name: str) -> Iterator[Path]:
    """The test's folder under /opt (ProtectHome and PrivateTmp hide /root and /tmp): kept on
    failure (runner.log, journal.txt, ...) for a post-mortem, removed on success."""
    work = Path(f"/opt/sleepfed-systemd-test-{name}-{os.getpid()}")
    work.mkdir()
    try:
        yield work
    except BaseException:
        print(f"kept for a post-mortem: {work}")
        raise
    shutil.rmtree(work, ignore_errors=True)


def boot_runner(
    work: Path,
    runner: str,
    files: dict[str, str],
    *,
    nspawn_args: tuple[str, ...] = (),
    boot_args: tuple[str, ...] = (),
    timeout: int = 120,
) -> Boot:
    """Boot this machine's own ``/`` (``--volatile=yes``: a tmpfs root, /usr from the host)
    under a real systemd with ``runner`` as a oneshot unit started at boot, ``files`` in
    /opt/payload, the venv shim at /opt/sleepfed/venv and the project at /opt/sleepfed/src.
    The runner writes its findings to /results and powers the container off."""
    venv = VENV_BIN.parent
    payload, results = work / "payload", work / "results"
    payload.mkdir()
    results.mkdir()
    files = {**files, "runner.sh": runner, "sleepfed-runner.service": RUNNER_UNIT}
    for name, text in files.items():
        (payload / name).write_text(text)
    (payload / "runner.sh").chmod(0o755)
    shim = venv_shim(work)
    nspawn = [
        "timeout", str(timeout), "systemd-nspawn", "--console=pipe", "--register=no",
        "--keep-unit", "--volatile=yes", "-D", "/", "-M", "sleepfedtest", *nspawn_args,
        f"--bind-ro={payload}:/opt/payload", f"--bind={results}:/results",
        # A venv where the unit expects it, with this venv's packages.
        f"--bind-ro={shim}:/opt/sleepfed/venv", f"--bind-ro={venv}/lib:/opt/sleepfed/venv/lib",
        # The project's code where the units' PYTHONPATH (test drop-ins) finds it: an
        # editable install may point under /tmp or /root, hidden by PrivateTmp/ProtectHome.
        f"--bind-ro={REPO / 'src'}:/opt/sleepfed/src",
        f"--bind-ro={payload}/sleepfed-runner.service:"
        "/etc/systemd/system/sleepfed-runner.service",
        "-b", "--", "systemd.firstboot=off", "systemd.wants=sleepfed-runner.service",
        "systemd.show_status=0", *boot_args,
    ]  # fmt: skip
    script = "mount -t tmpfs tmpfs /run/systemd && exec " + " ".join(nspawn)
    started = time.monotonic()
    boot = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    took = time.monotonic() - started
    runner_log = (results / "runner.log").read_text() if (results / "runner.log").exists() else ""
    context = f"nspawn rc={boot.returncode} in {took:.1f}s\n{boot.stderr[-2000:]}\n{runner_log}"
    assert boot.returncode == 0, context
    return Boot(results, took, context)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root")
@pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-container missing")
@pytest.mark.skipif(shutil.which("socat") is None, reason="socat missing")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason=f"{SYSTEM_PYTHON} missing")
def test_real_unit_under_systemd_nspawn() -> None:
    unit = (UNITS / "sleepfed-agent.service").read_text()
    with nspawn_work("agent") as work:
        boot = boot_runner(work, RUNNER, {"sleepfed-agent.service": unit, "smoke.py": SMOKE})
        results, context = boot.results, boot.context
        facts = (results / "facts").read_text()
        assert "start=0" in facts, context

        running = _props(results / "running")
        assert (running["ActiveState"], running["SubState"]) == ("active", "running"), context
        assert running["StatusText"].startswith("ok: 1/1 sources, 2 readings"), running
        assert running["NRestarts"] == "0"

        # kill -STOP: no more pings, the watchdog aborts it, Restart=on-failure brings it back.
        restarted = _props(results / "restarted")
        journal_text = (results / "journal.txt").read_text()
        assert "Watchdog timeout" in journal_text, journal_text[-3000:]
        assert "saw Result=watchdog" in facts or "Failed with result 'watchdog'" in journal_text
        assert restarted["NRestarts"] == "1", restarted
        assert restarted["MainPID"] != running["MainPID"]
        assert (restarted["ActiveState"], restarted["SubState"]) == ("active", "running")
        assert restarted["StatusText"].startswith("ok: 1/1 sources"), restarted

        entries = [json.loads(line) for line in (results / "journal.json").read_text().splitlines()]
        ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "sleepfed-agent"]
        rejected = [e for e in ours if e.get("ERROR_CLASS") == "checksum"]
        assert rejected and rejected[0]["SOURCE"] == "wrist", ours[-5:]
        assert rejected[0]["PRIORITY"] == "4" and rejected[0]["LOGGER"] == "sleepfed.agent"
        connected = [e for e in ours if "connected" in e.get("MESSAGE", "") and "DEVICE" in e]
        assert connected and connected[0]["DEVICE"] == "/run/sfpty/agent"
        assert "smoke=0" in facts, (results / "smoke.txt").read_text()
        assert "SMOKE OK" in (results / "smoke.txt").read_text()
        print(f"nspawn test: {boot.took:.1f}s; status {running['StatusText']!r}")


# -- e. the real server unit and its fleet proxy (nginx) under a real systemd ------------------
SERVER_PORT, SUPERLINK_PORT = 9093, 9099
STATE = "/var/lib/sleepfed-server"

SERVER_RUNNER = r"""#!/bin/bash
# Runs inside the container as a oneshot unit; writes its findings to /results.
exec >/results/runner.log 2>&1
set -x
PORT=@PORT@ STATE=@STATE@
show() { systemctl show -p ActiveState,SubState,Result,NRestarts,MainPID,ExecMainStatus \
           -p ControlGroup sleepfed-server; }
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
           --cacert /etc/sleepfed/pki/ca.pem "$@"; }
processes() {  # every process: pid ppid user cgroup args
  for d in /proc/[0-9]*; do
    args=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) && [ -n "$args" ] || continue
    pu=$(ps -o ppid=,user= -p "${d#/proc/}" | xargs) && [ -n "$pu" ] || continue
    echo "${d#/proc/} $pu $(grep '^0::' "$d/cgroup") $args"  # the unified hierarchy's
  done; }
finish() { journalctl -u sleepfed-server -o short-monotonic >/results/journal.txt
           cp "$STATE/fleet-proxy/error.log" /results/nginx-error.log
           cp "$STATE/fleet-proxy/nginx.out" /results/nginx.out
           cp "$STATE/superlink.log" /results/superlink.log
           systemctl poweroff; exit 0; }
trap finish EXIT

useradd --system --no-create-home --user-group --shell /usr/sbin/nologin sleepfed
install -d -m 0755 /etc/sleepfed
PYTHONPATH=/opt/sleepfed/src /opt/sleepfed/venv/bin/sleepfed-server certs \
    --out /etc/sleepfed/pki --host 127.0.0.1 --host localhost
# The server reads its certificate and key; the CA's key stays root's.
chgrp sleepfed /etc/sleepfed/pki /etc/sleepfed/pki/server.key
chmod 0750 /etc/sleepfed/pki; chmod 0640 /etc/sleepfed/pki/server.key
cat >/etc/sleepfed/server.toml <<TOML
[server]
state_dir = "$STATE"
host = "127.0.0.1"
port = $PORT
superlink_port = @SUPERLINK_PORT@
certfile = "/etc/sleepfed/pki/server.pem"
keyfile = "/etc/sleepfed/pki/server.key"
ca_certfile = "/etc/sleepfed/pki/ca.pem"
[federation]
rounds = 1
min_nodes = 1
TOML
chgrp sleepfed /etc/sleepfed/server.toml; chmod 0640 /etc/sleepfed/server.toml

cp /opt/payload/sleepfed-server.service /etc/systemd/system/
mkdir -p /etc/systemd/system/sleepfed-server.service.d
cat >/etc/systemd/system/sleepfed-server.service.d/test.conf <<'CONF'
[Service]
# test only: the project's code is bound at /opt/sleepfed/src (not pip-installed there)
Environment=PYTHONPATH=/opt/sleepfed/src
CONF
systemctl daemon-reload
systemctl start sleepfed-server
echo "start=$?" >>/results/facts
# Up to 60 s for the boards' port, then for the run (submitted over the SuperLink's loopback
# side with flwr run); a unit that failed or waits for its restart ends the wait at once.
for i in $(seq 600); do
  systemctl is-active -q sleepfed-server || break
  [ "$(code https://127.0.0.1:$PORT/health)" = 200 ] && break; sleep 0.1
done
for i in $(seq 600); do
  systemctl is-active -q sleepfed-server || break
  journalctl -u sleepfed-server -o cat | grep -q ' submitted: ' && break; sleep 0.1
done
echo "health=$(code https://127.0.0.1:$PORT/health)" >>/results/facts
echo "control=$(code -X POST https://127.0.0.1:$PORT/v1/control/list-runs)" >>/results/facts
ss -ltnpH >/results/listening
show >/results/running
processes >/results/processes
find "$STATE" -printf '%m %u %g %y %p\n' >/results/modes

# nginx's master dies: the server (not systemd) starts a new one within its check interval.
old=$(cat "$STATE/fleet-proxy/nginx.pid")
old_workers=$(pgrep -P "$old" | xargs)
echo "old_master=$old" >>/results/facts
echo "old_workers=$old_workers" >>/results/facts
killed=$(date +%s%N)
kill -KILL "$old"
for i in $(seq 100); do
  new=$(cat "$STATE/fleet-proxy/nginx.pid")
  if [ "$new" != "$old" ] && kill -0 "$new" && [ "$(code https://127.0.0.1:$PORT/health)" = 200 ]
  then break; fi
  sleep 0.1
done
echo "restart_ms=$(( ($(date +%s%N) - killed) / 1000000 ))" >>/results/facts
echo "new_master=$new" >>/results/facts
echo "health_after_kill=$(code https://127.0.0.1:$PORT/health)" >>/results/facts
left=""; for pid in $old $old_workers; do [ -d "/proc/$pid" ] && left="$left $pid"; done
echo "old_left=$left" >>/results/facts
show >/results/restarted
processes >/results/processes-restarted

systemctl stop sleepfed-server
echo "stop=$?" >>/results/facts
show >/results/stopped
processes >/results/processes-stopped
ss -ltnH >/results/listening-stopped
echo "health_stopped=$(code https://127.0.0.1:$PORT/health)" >>/results/facts
"""
SERVER_RUNNER = (
    SERVER_RUNNER.replace("@PORT@", str(SERVER_PORT))
    .replace("@SUPERLINK_PORT@", str(SUPERLINK_PORT))
    .replace("@STATE@", STATE)
)
# What the server starts (nginx's title is "nginx: master process ..." / "nginx: worker ...").
FLEET_PROGRAMS = ("/flower-superlink ", "/flower-superexec ", "/flwr-serverapp ", "/flwr ")


def _processes(path: Path) -> list[dict[str, str]]:
    """The runner's process table: pid, ppid, user, cgroup, args."""
    keys = ("pid", "ppid", "user", "cgroup", "args")
    return [dict(zip(keys, line.split(" ", 4), strict=True)) for line in _lines(path)]


def _listening(path: Path) -> dict[str, list[str]]:
    """``ss -ltnpH``: local address -> the pids listening there."""
    found: dict[str, list[str]] = {}
    for line in _lines(path):
        fields = line.split()
        found.setdefault(fields[3], []).extend(re.findall(r"pid=(\d+)", " ".join(fields[5:])))
    return found


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root")
@pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-container missing")
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx missing")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason=f"{SYSTEM_PYTHON} missing")
def test_real_server_unit_under_systemd_nspawn() -> None:
    """sleepfed-server.service as shipped, with nginx inside it: the boards' port answers
    /health and nothing else, the SuperLink is on loopback only, nginx runs as sleepfed in
    the unit's cgroup, a killed nginx comes back, and a stop leaves nothing behind."""
    assert shutil.which("curl"), "curl missing (apt-get install -y curl)"
    unit = (UNITS / "sleepfed-server.service").read_text()
    with nspawn_work("server") as work:
        # --private-network: only a loopback interface, so the fixed ports cannot clash with
        # the host's, and "closed after stop" is about this server's ports.
        boot = boot_runner(
            work,
            SERVER_RUNNER,
            {"sleepfed-server.service": unit},
            nspawn_args=("--private-network",),
            # Nothing but lo to wait for: systemd-networkd-wait-online would hold
            # network-online.target (the unit's After=) for its 2-minute timeout.
            boot_args=("systemd.mask=systemd-networkd-wait-online.service",),
        )
        results = boot.results
        journal = (results / "journal.txt").read_text()
        context = f"{boot.context}\n{journal[-4000:]}"
        facts = _props(results / "facts")
        assert facts.get("start") == "0", context
        running = _props(results / "running")
        assert (running["ActiveState"], running["SubState"]) == ("active", "running"), context
        assert running["NRestarts"] == "0", context
        assert " submitted: 1 rounds, min 1 nodes" in journal, context

        # The boards' address: /health through nginx to the SuperLink; the Control API: 404.
        assert facts["health"] == "200", context
        assert facts["control"] == "404", context

        # The SuperLink on loopback only; nginx, and nothing else, on the boards' port.
        table = _processes(results / "processes")
        by_pid = {row["pid"]: row for row in table}
        listening = _listening(results / "listening")
        superlink = {r["pid"] for r in table if "/flower-superlink " in r["args"]}
        assert superlink, table
        superlink_sockets = [a for a, pids in listening.items() if superlink & set(pids)]
        assert f"127.0.0.1:{SUPERLINK_PORT}" in superlink_sockets, listening
        assert all(a.startswith("127.0.0.1:") for a in superlink_sockets), listening
        on_superlink_port = [a for a in listening if _port(a) == SUPERLINK_PORT]
        assert on_superlink_port == [f"127.0.0.1:{SUPERLINK_PORT}"], listening
        boards = f"127.0.0.1:{SERVER_PORT}"
        assert [a for a in listening if _port(a) == SERVER_PORT] == [boards], listening
        assert listening[boards], listening
        assert all(by_pid[p]["args"].startswith("nginx: ") for p in listening[boards]), table

        # nginx: one master (a child of the server's main process) and its worker, both as
        # sleepfed in the unit's cgroup, like the SuperLink.
        cgroup = "0::" + running["ControlGroup"]
        nginx = [r for r in table if r["args"].startswith("nginx: ")]
        masters = [r for r in nginx if r["args"].startswith("nginx: master process")]
        assert len(masters) == 1 and len(nginx) == 2, nginx
        assert masters[0]["ppid"] == running["MainPID"], (nginx, running)
        for row in nginx + [by_pid[p] for p in superlink]:
            assert (row["user"], row["cgroup"]) == ("sleepfed", cgroup), row

        # The state directory: the service user's and private; only certificates readable.
        modes = [line.split(" ", 4) for line in _lines(results / "modes")]
        assert modes[0] == ["700", "sleepfed", "sleepfed", "d", STATE], modes[0]
        for mode, user, group, kind, path in modes:
            assert (user, group) == ("sleepfed", "sleepfed"), path
            if kind == "d":
                assert mode == "700", (mode, path)
            elif path.endswith(".pem"):
                assert int(mode, 8) & 0o133 == 0, (mode, path)  # at most 0644
            else:
                assert int(mode, 8) & 0o077 == 0, (mode, path)
        assert f"{STATE}/fleet-proxy/nginx.conf" in {m[4] for m in modes}, modes

        # kill -KILL nginx's master: the server starts a new nginx; systemd restarts nothing.
        assert facts["old_master"] == masters[0]["pid"], facts
        assert facts["new_master"] not in ("", facts["old_master"]), facts
        assert facts["health_after_kill"] == "200", context
        assert facts["old_left"].strip() == "", facts  # the old worker went with its master
        assert int(facts["restart_ms"]) < 5000, facts
        assert "fleet_proxy exited (status -9): restarting it" in journal, context
        restarted = _props(results / "restarted")
        assert (restarted["MainPID"], restarted["NRestarts"]) == (running["MainPID"], "0")
        new = {r["pid"]: r for r in _processes(results / "processes-restarted")}
        assert new[facts["new_master"]]["args"].startswith("nginx: master process")
        assert new[facts["new_master"]]["ppid"] == running["MainPID"]
        assert (new[facts["new_master"]]["user"], new[facts["new_master"]]["cgroup"]) == (
            "sleepfed",
            cgroup,
        )

        # systemctl stop: a clean exit, nothing left behind, the ports closed.
        assert facts["stop"] == "0", context
        stopped = _props(results / "stopped")
        assert (stopped["ActiveState"], stopped["Result"]) == ("inactive", "success"), stopped
        assert stopped["ExecMainStatus"] == "0", stopped
        left = [
            r
            for r in _processes(results / "processes-stopped")
            if r["args"].startswith("nginx") or any(p in r["args"] for p in FLEET_PROGRAMS)
        ]
        assert left == [], left
        closed = _listening(results / "listening-stopped")
        assert not [a for a in closed if _port(a) in (SERVER_PORT, SUPERLINK_PORT)], closed
        assert facts["health_stopped"] == "000", facts
        assert "SIGKILL" not in journal, context
        # Nothing in the sandbox bothered nginx: no warning in its error log or on its stderr.
        for log in ("nginx-error.log", "nginx.out"):
            text = (results / log).read_text()
            assert not re.search(r"\[(warn|error|crit|alert|emerg)\]", text), text
        print(f"nspawn server test: {boot.took:.1f}s; nginx back in {facts['restart_ms']} ms")
