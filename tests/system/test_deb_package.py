"""The board's Debian package (packaging/deb, issue 13) as a user meets it: built with
``packaging/deb/build.sh`` (amd64, the cached build root reused), then in a FRESH Debian 12
root (tests/support/fresh_root.py) booted under a real systemd with ``systemd-nspawn -b``:
``apt-get install ./sleepfed-agent_…_amd64.deb``, ``sleepfed-enroll`` against a federation
server this test runs on the host (127.0.0.1), ``systemctl start sleepfed-agent``, a Walch
night replayed over a pseudo-terminal, a federated round, an upgrade to a rebuilt package,
``apt-get remove`` and ``apt-get purge``.

The booted machine runs RUNNER as a oneshot unit. It hands the board's enrollment request to
the host through /results and waits there for the operator's registration (the test
registers it with ``sleepfed-server boards register`` and starts the server), as the runbook
has it. Everything it finds goes to /results; the assertions are here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sleepfed_tools.replay import walch_readings

from sleepfed.board.sources.protocol import Kind, format_reading
from sleepfed.provisioning.pki import fingerprint_sha256
from sleepfed.server.app.history import History
from tests.support.deb_machine import (
    RUNNER_PRELUDE,
    boot,
    build,
    check_package_contents,
    halt,
    install_runner,
    machine_root,
    phase_times,
    props,
)
from tests.support.federation_helpers import free_port, pki, start_server, stop, write_server_config
from tests.support.helpers import REPO, run_server

SUBJECT = "4426783"  # the board's night
HELD_OUT = ["1066528", "2638030"]  # the server's evaluation
NIGHT_START = 1_700_000_000.0  # 2023-11-14: long finished on any board's clock

RUNNER = (
    RUNNER_PRELUDE
    + r"""show() { systemctl show -p ActiveState,SubState,Result,NRestarts,MainPID,StatusText \
           -p UnitFileState -p FragmentPath sleepfed-agent >"/results/$1"; }
status() { sleepfed-agent status --json --config /etc/sleepfed/agent.toml >"/results/$1.json"; }
value() {  # value FILE.json dotted.key
  python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "/results/$1.json" "$2"; }
wait_status() {  # wait_status NAME SECONDS PYTHON-CONDITION-ON-s
  for _ in $(seq $(( $2 * 2 ))); do
    status "$1" 2>/dev/null && python3 -c "import json, sys
s = json.load(open('/results/$1.json'))
sys.exit(0 if ($3) else 1)" && return 0
    sleep 0.5
  done
  return 1; }
finish() { journalctl -u sleepfed-agent -o short-monotonic >/results/journal.txt
           journalctl -b -o short-monotonic >/results/journal-all.txt
           touch /run/sfpty/stop; systemctl poweroff; exit 0; }
trap finish EXIT

# -- 1. install: apt-get install ./sleepfed-agent_…deb ------------------------------------
cd /opt/payload
stamp install
apt-get install -y ./@DEB1@ >/results/install.log 2>&1
fact "install=$?"
stamp installed
show after-install
getent passwd sleepfed >/results/user && fact "user=yes"
id -nG sleepfed >>/results/user
systemctl is-enabled sleepfed-agent >/results/enabled-after-install 2>&1
dpkg-query -W -f='${Version}\n' sleepfed-agent >/results/version1

# -- 2. enroll, the operator registers the key, start ---------------------------------------
stamp enroll
sleepfed-enroll --board-id deb-board --server 127.0.0.1:@PORT@ --ca-file /opt/payload/ca.pem \
    --ca-fingerprint '@FINGERPRINT@' --window always >/results/enroll.log 2>&1
fact "enroll=$?"
systemctl is-enabled sleepfed-agent >/results/enabled-after-enroll 2>&1
ls /etc/systemd/system/ >/results/etc-units
cp /etc/sleepfed/enrollment-request.txt /results/request.txt
for _ in $(seq 600); do [ -e /results/registered ] && break; sleep 0.5; done
stamp registered
# The board's sensor (a serial port: the test's PTY), and a test's pace: a night is finished
# 2 s after its last reading, the node uses a port free on the shared host network.
python3 - <<'EOF'
path = "/etc/sleepfed/agent.toml"
pace = ("supernode_port = @SUPERNODE_PORT@\nretry_initial_seconds = 0.5\n"
        "retry_max_seconds = 4.0\nactivation_patience_seconds = 8.0\n")
text = open(path).read().replace("[federation]\n", "[federation]\n" + pace, 1)
open(path, "w").write(text)
EOF
cat >>/etc/sleepfed/agent.toml <<'EOF'

[nights]
settle_seconds = 2.0

[[sources]]
type = "serial"
name = "wrist"
port = "/run/sfpty/agent"
EOF
# test only: a PTY stands in for the USB serial adapter (the unit allows ttyUSB/ACM/AMA/S)
mkdir -p /etc/systemd/system/sleepfed-agent.service.d
printf '[Service]\nDeviceAllow=char-pts rw\n' >/etc/systemd/system/sleepfed-agent.service.d/pty.conf
systemctl daemon-reload
python3 /opt/payload/sensor.py /run/sfpty/agent /opt/payload/night.sf1 >/results/sensor.log 2>&1 &
for _ in $(seq 100); do [ -e /run/sfpty/agent ] && break; sleep 0.1; done
stamp start
systemctl start sleepfed-agent
fact "start=$?"
stamp started
show started
for _ in $(seq 200); do
  systemctl show -p StatusText sleepfed-agent | grep -q "1/1 sources" && break; sleep 0.1
done
touch /run/sfpty/go
wait_status ingested 300 's["buffer"]["readings"] + s["buffer"]["stage_labels"] >= @LINES@'
fact "ingested=$?"
stamp ingested
wait_status trained 600 's["rounds"]["joined"] >= 1'
fact "trained=$?"
stamp trained
show trained

# -- 3. upgrade to the rebuilt package -----------------------------------------------------
show before-upgrade
stamp upgrade
apt-get install -y ./@DEB2@ >/results/upgrade.log 2>&1
fact "upgrade=$?"
stamp upgraded
for _ in $(seq 200); do
  systemctl show -p StatusText sleepfed-agent | grep -q "1/1 sources" && break; sleep 0.1
done
show after-upgrade
dpkg-query -W -f='${Version}\n' sleepfed-agent >/results/version2
status after-upgrade

# -- 4. remove, then purge -----------------------------------------------------------------
stamp remove
apt-get remove -y sleepfed-agent >/results/remove.log 2>&1
fact "remove=$?"
stamp removed
show after-remove
systemctl is-enabled sleepfed-agent >/results/enabled-after-remove 2>&1
for d in /proc/[0-9]*; do  # no procps in a minimal root
  tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q '[/]opt/sleepfed/venv' && echo "${d#/proc/}"
done >/results/pids-after-remove
for path in /var/lib/sleepfed/buffer.db /etc/sleepfed/node.key /etc/sleepfed/agent.toml \
            /opt/sleepfed/venv /lib/systemd/system/sleepfed-agent.service /usr/bin/sleepfed-agent \
            /etc/systemd/system/multi-user.target.wants/sleepfed-agent.service; do
  [ -e "$path" ] && echo "$path" >>/results/exists-after-remove
done
stamp purge
apt-get purge -y sleepfed-agent >/results/purge.log 2>&1
fact "purge=$?"
stamp purged
for path in /var/lib/sleepfed /etc/sleepfed /opt/sleepfed; do
  [ -e "$path" ] && echo "$path" >>/results/exists-after-purge
done
getent passwd sleepfed >/results/user-after-purge
"""
)

# The sensor: a pseudo-terminal whose far end the agent opens like a USB serial adapter
# (group dialout, 0660); on /run/sfpty/go it writes the night's SF1 lines, reading the
# agent's ACK lines as they come, then holds the line open until /run/sfpty/stop.
SENSOR = r"""import os, pty, select, sys, time, tty
link, night = sys.argv[1], sys.argv[2]
folder = os.path.dirname(link)
master, slave = pty.openpty()
tty.setraw(master)
tty.setraw(slave)
device = os.ttyname(slave)
os.chown(device, -1, 20)  # dialout
os.chmod(device, 0o660)
os.makedirs(folder, exist_ok=True)
os.symlink(device, link)
print("pty", device, flush=True)
acks = 0
def drain(wait):
    global acks
    while select.select([master], [], [], wait)[0]:
        acks += os.read(master, 65536).count(b"\n")
        wait = 0
while not os.path.exists(os.path.join(folder, "go")):
    drain(0.1)
data = open(night, "rb").read()
sent = 0
while sent < len(data):
    _, writable, _ = select.select([], [master], [], 0.1)
    if writable:
        sent += os.write(master, data[sent:sent + 4096])
    drain(0)
print("sent", data.count(b"\n"), "lines", flush=True)
while not os.path.exists(os.path.join(folder, "stop")):
    drain(0.5)
print("acks", acks, flush=True)
"""


def night_lines(walch_dir: Path) -> tuple[bytes, int, int]:
    """The night as SF1 lines; and how many readings and stage labels it holds."""
    readings = list(walch_readings(walch_dir, SUBJECT, NIGHT_START))
    labels = sum(1 for r in readings if r.kind is Kind.LBL)
    return b"".join(format_reading(r) for r in readings), len(readings) - labels, labels


# Parts 1-2 of RUNNER, timed by its stamps (first, last).
BOARD_PHASES = {
    "apt-get install": ("install", "installed"),
    "enroll + registration": ("enroll", "registered"),
    "systemctl start (READY=1)": ("start", "started"),
    "night ingested": ("started", "ingested"),
    "federated round joined": ("ingested", "trained"),
}


def operate(machine: subprocess.Popen[str], results: Path, server_config: Path) -> int | None:
    """The operator while the machine runs: once the board's request is in /results, it goes
    into the registry (``sleepfed-server boards register``) and the server starts. Returns
    the server's exit status (None if it never started); the machine is halted if still up."""
    server: subprocess.Popen[bytes] | None = None
    try:
        while machine.poll() is None:
            if server is None and (results / "request.txt").exists():
                registered = run_server(
                    "boards", "register", "--config", str(server_config),
                    str(results / "request.txt"),
                )  # fmt: skip
                assert registered.returncode == 0, registered.stderr
                assert "deb-board: added" in registered.stdout
                server = start_server(server_config)
                (results / "registered").touch()
            time.sleep(0.5)
        return server.wait(120) if server is not None else None
    finally:
        halt(machine)
        if server is not None:
            stop([server])


def machine_context(tmp_path: Path, results: Path) -> str:
    """The end of the boot log and of the runner's log, for a failed assertion."""
    runner_log = results / "runner.log"
    runner = runner_log.read_text()[-6000:] if runner_log.exists() else ""
    return (tmp_path / "nspawn.log").read_text()[-2000:] + "\n" + runner


def check_installed_and_trained(
    tmp_path: Path, results: Path, server_rc: int | None, readings: int, labels: int
) -> dict[str, Any]:
    """Parts 1-2 of RUNNER: installed (the unit there, disabled, inactive; the user in
    dialout), enrolled (the package's unit enabled), started (READY=1 with a status line),
    the whole night in the buffer, round 1 trained with this one board. Returns the board's
    status after the round."""
    facts = props(results / "facts")
    context = machine_context(tmp_path, results)
    server_log = tmp_path / "server" / "server.log"
    # 1. installed: the unit is there, not enabled, not active; the user exists.
    assert facts.get("install") == "0", (results / "install.log").read_text()[-3000:]
    installed = props(results / "after-install")
    assert installed["FragmentPath"] in (
        "/lib/systemd/system/sleepfed-agent.service",
        "/usr/lib/systemd/system/sleepfed-agent.service",
    ), installed
    assert installed["UnitFileState"] == "disabled", installed
    assert installed["ActiveState"] == "inactive", installed
    user = (results / "user").read_text().splitlines()
    assert user[0].startswith("sleepfed:") and user[0].endswith(":/usr/sbin/nologin"), user
    assert "dialout" in user[1].split(), user
    assert (results / "version1").read_text().strip() == "0.1.0"

    # 2. enrolled (the package's unit enabled, not copied), started, ingesting, trained.
    assert facts.get("enroll") == "0", (results / "enroll.log").read_text()
    assert (results / "enabled-after-enroll").read_text().strip() == "enabled"
    assert facts.get("start") == "0", context
    started_props = props(results / "started")
    assert (started_props["ActiveState"], started_props["SubState"]) == ("active", "running")
    # Type=notify: `systemctl start` returned after READY=1, which came with a status line
    assert re.match(r"(starting|ok|degraded): \d/1 sources", started_props["StatusText"]), (
        started_props
    )
    assert facts.get("ingested") == "0", context
    ingested = json.loads((results / "ingested.json").read_text())
    assert ingested["buffer"]["readings"] == readings, ingested["buffer"]
    assert ingested["buffer"]["stage_labels"] == labels, ingested["buffer"]
    assert facts.get("trained") == "0", server_log.read_text()[-3000:]
    trained = json.loads((results / "trained.json").read_text())
    assert trained["rounds"]["joined"] >= 1, trained["rounds"]
    assert server_rc == 0, server_log.read_text()[-3000:]
    history = History(tmp_path / "server" / "state" / "history.db")
    assert [(r.global_round, r.train_nodes) for r in history.rounds()] == [(1, 1)]
    return trained


@dataclass(frozen=True)
class BoardRun:
    results: Path  # what the runner found
    server_rc: int | None
    took: float  # seconds from boot to power-off
    readings: int  # in the night replayed
    labels: int


def run_board_machine(
    tmp_path: Path,
    root: Path,
    walch_dir: Path,
    runner: str,
    debs: list[Path],
    name: str,
    round_timeout: float = 120.0,
) -> BoardRun:
    """Boot ``root`` with ``runner`` (RUNNER or a part of it; @DEB1@/@DEB2@ are ``debs``),
    the night and the PTY sensor in its payload, while this host is the operator and the
    federation server (127.0.0.1) with the board's CA."""
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=1, min_nodes=1, walch_dir=walch_dir, held_out=HELD_OUT,
        round_timeout=round_timeout,
    )  # fmt: skip
    night, readings, labels = night_lines(walch_dir)
    script = (
        runner.replace("@DEB1@", debs[0].name)
        .replace("@DEB2@", debs[-1].name)
        .replace("@PORT@", str(port))
        .replace("@FINGERPRINT@", fingerprint_sha256(certs["ca"]))
        .replace("@SUPERNODE_PORT@", str(free_port()))
        .replace("@LINES@", str(readings + labels))
    )
    assert not re.findall(r"@[A-Z0-9_]+@", script), script
    payload = install_runner(root, script)
    for deb in debs:
        shutil.copy(deb, payload / deb.name)
    shutil.copy(certs["ca"], payload / "ca.pem")
    (payload / "night.sf1").write_bytes(night)
    (payload / "sensor.py").write_text(SENSOR)
    results = root / "results"
    started = time.monotonic()
    machine = boot(root, tmp_path / "nspawn.log", name)
    server_rc = operate(machine, results, server_config)
    took = time.monotonic() - started
    assert machine.returncode == 0, machine_context(tmp_path, results)
    return BoardRun(results, server_rc, took, readings, labels)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and systemd-nspawn need root")
@pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-container missing")
@pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap missing")
def test_deb_package_installs_enrolls_trains_upgrades_and_purges(
    tmp_path: Path, walch_dir: Path
) -> None:
    times: dict[str, float] = {}
    out = tmp_path / "debs"
    first = build(out)  # as shipped (zstd)
    second = build(out, "--build", "2")  # the upgrade
    print(
        f"\nbuild {first.deb.name}: {first.took:.0f} s "
        f"({'cached build root' if first.cached_root else 'cold: no cached build root'}); "
        f"rebuild {second.deb.name}: {second.took:.0f} s (cached build root)"
    )
    assert second.deb.name == first.deb.name.replace("_amd64", "+2_amd64")
    check_package_contents(
        first.deb,
        [
            "./opt/sleepfed/venv/bin/sleepfed-agent",
            "./lib/systemd/system/sleepfed-agent.service",
            "./opt/sleepfed/systemd/README.md",
            "./usr/bin/sleepfed-enroll",
        ],
    )
    shipped = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(first.deb)], capture_output=True, check=True
    ).stdout
    assert (REPO / "systemd/sleepfed-agent.service").read_bytes() in shipped

    # A fresh bookworm, made a machine that boots: what any board has (systemd, dbus).
    started = time.monotonic()
    root = machine_root(tmp_path / "root", ["systemd", "systemd-sysv", "dbus"])
    times["fresh root + systemd"] = time.monotonic() - started

    run = run_board_machine(
        tmp_path, root, walch_dir, RUNNER, [first.deb, second.deb], "sleepfeddeb"
    )
    results, server_rc, readings, labels = run.results, run.server_rc, run.readings, run.labels
    times["booted machine (install to purge)"] = run.took
    facts = props(results / "facts")
    times |= phase_times(
        facts,
        BOARD_PHASES
        | {
            "upgrade": ("upgrade", "upgraded"),
            "apt-get remove": ("remove", "removed"),
            "apt-get purge": ("purge", "purged"),
        },
    )
    print("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))

    trained = check_installed_and_trained(tmp_path, results, server_rc, readings, labels)
    assert (results / "enabled-after-install").read_text().strip() == "disabled"
    assert "sleepfed-agent.service" not in (results / "etc-units").read_text().split()

    # 3. upgraded: every reading still there, the running agent restarted with the new code.
    assert facts.get("upgrade") == "0", (results / "upgrade.log").read_text()[-3000:]
    assert (results / "version2").read_text().strip() == "0.1.0+2"
    before, after = props(results / "before-upgrade"), props(results / "after-upgrade")
    assert after["ActiveState"] == "active", after
    assert after["MainPID"] != before["MainPID"], (before, after)
    upgraded = json.loads((results / "after-upgrade.json").read_text())
    assert upgraded["buffer"]["readings"] == readings
    assert upgraded["buffer"]["stage_labels"] == labels
    assert upgraded["rounds"]["joined"] == trained["rounds"]["joined"]

    # 4. removed: stopped and disabled, buffer and keys kept; purged: the line, both gone.
    assert facts.get("remove") == "0", (results / "remove.log").read_text()[-3000:]
    removed = props(results / "after-remove")
    assert removed["ActiveState"] in ("inactive", "failed") and removed["MainPID"] == "0"
    remove_log = (results / "remove.log").read_text()
    assert "not empty so not removed" not in remove_log, remove_log
    kept = (results / "exists-after-remove").read_text().split()
    assert kept == ["/var/lib/sleepfed/buffer.db", "/etc/sleepfed/node.key",
                    "/etc/sleepfed/agent.toml"], kept  # fmt: skip
    assert (results / "pids-after-remove").read_text() == ""
    assert facts.get("purge") == "0", (results / "purge.log").read_text()[-3000:]
    purge_log = (results / "purge.log").read_text()
    assert (
        "sleepfed-agent: purge deletes the buffer /var/lib/sleepfed and the node key and "
        "config /etc/sleepfed" in purge_log
    ), purge_log
    assert not (results / "exists-after-purge").exists(), (
        results / "exists-after-purge"
    ).read_text()
    assert (results / "user-after-purge").read_text().startswith("sleepfed:")  # policy: kept
