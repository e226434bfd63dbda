"""The server's Debian package and the docs' server quickstart, as an operator meets them.

``packaging/deb/build.sh --package server`` builds ``sleepfed-server_…_amd64.deb`` (and a
rebuild for the upgrade). A FRESH Debian 12 root, with what a server has besides (systemd,
dbus, sudo, curl), boots under its own systemd with ``systemd-nspawn -b`` in a network
namespace this test made (tests/support/network_namespaces.py: a veth pair, 10.200.x.2 on
the machine's side, no route anywhere else). Its runner executes the ```sh block after
``<!-- server-quickstart`` in docs/operations.md line by line, as it is written, with only
``fl.example.org`` replaced by the machine's address: ``sudo apt install ./…deb``, ``sudo
sleepfed-server certs``, ``server.toml``, ``systemctl enable --now``, ``curl …/health``,
``sleepfed-server boards register``, ``status``. Two boards on this host (real agents, each
with its own key and a Walch night in its buffer) join through the veth pair and train
rounds; then the package is upgraded (the run goes on), removed and purged.

The machine has no route out, so the packages ``apt install`` needs (nginx and what it
depends on) are fetched into its apt cache beforehand, while it is still an unbooted root on
the host's network; answering apt's question is set to yes, as the operator would type it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sleepfed.provisioning.request import EnrollmentRequest
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
from tests.support.federation_helpers import start_agent, stop, write_board
from tests.support.fresh_root import run_in
from tests.support.helpers import REPO
from tests.support.network_namespaces import NetworkLab, skip_unless_possible

DOCS = REPO / "docs" / "operations.md"
MARK = "<!-- server-quickstart"
BOARDS = {"board-a": "4426783", "board-b": "1066528"}  # board id: its Walch subject
PORT = 9093  # the quickstart's

RUNNER = (
    RUNNER_PRELUDE
    + r"""
show() { systemctl show -p ActiveState,SubState,Result,NRestarts,MainPID -p UnitFileState \
           -p FragmentPath sleepfed-server >"/results/$1"; }
CONFIG=/etc/sleepfed/server.toml
rounds() {  # how many rounds the history holds (sudo: the state folder is the service's)
  sudo sleepfed-server history --config $CONFIG --json >/results/history.json 2>/dev/null \
    && python3 -c 'import json; print(len(json.load(open("/results/history.json"))))'; }
wait_rounds() {  # wait_rounds N SECONDS
  for _ in $(seq "$2"); do [ "$(rounds || echo 0)" -ge "$1" ] && return 0; sleep 1; done
  return 1; }
finish() { journalctl -u sleepfed-server -o short-monotonic >/results/journal.txt
           journalctl -b -o short-monotonic >/results/journal-all.txt
           systemctl poweroff; exit 0; }
trap finish EXIT
venv_pids() {  # the package's processes and nginx's; no procps in a minimal root
  for d in /proc/[0-9]*; do
    tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q '[/]opt/sleepfed/venv\|[n]ginx' \
      && echo "${d#/proc/}"
  done; }

# -- 1. the docs' quickstart, line by line (requests/ holds the boards' requests) -------------
cd /opt/payload
stamp quickstart
bash -e -x ./quickstart.sh >/results/quickstart.log 2>&1
fact "quickstart=$?"
stamp quickstart_done
show after-quickstart
stat -c '%a %U %G %n' /etc/sleepfed/tls /etc/sleepfed/tls/* >/results/tls-modes
systemctl is-active nginx >/results/system-nginx 2>&1
touch /results/server-up

# -- 2. the host's two boards train -----------------------------------------------------------
wait_rounds 1 600
fact "round1=$?"
stamp round1
sudo sleepfed-server boards list --config $CONFIG --json >/results/boards.json
sudo sleepfed-server status --config $CONFIG --json >/results/status.json
fact "status=$?"
sudo sleepfed-server report --config $CONFIG --out /results/report.html
fact "report=$?"
find /var/lib/sleepfed-server ! -user sleepfed >/results/not-the-services
python3 -c 'import socket; print(socket.socket().connect_ex(("127.0.0.1", 80)))' >/results/port80

# -- 3. upgrade: the run goes on --------------------------------------------------------------
before=$(rounds)
fact "rounds_before_upgrade=$before"
show before-upgrade
stamp upgrade
apt-get install -y ./@DEB2@ >/results/upgrade.log 2>&1
fact "upgrade=$?"
stamp upgraded
show after-upgrade
dpkg-query -W -f='${Version}\n' sleepfed-server >/results/version2
restarted=$(rounds)  # rounds may have ended while dpkg unpacked: count from the restart
fact "rounds_at_restart=$restarted"
wait_rounds $((restarted + 1)) 600
fact "round_after_upgrade=$?"
stamp round_after_upgrade
cp /results/history.json /results/history-after-upgrade.json

# -- 4. remove, then purge --------------------------------------------------------------------
stamp remove
apt-get remove -y sleepfed-server >/results/remove.log 2>&1
fact "remove=$?"
stamp removed
show after-remove
systemctl is-enabled sleepfed-server >/results/enabled-after-remove 2>&1
venv_pids >/results/pids-after-remove
for path in /var/lib/sleepfed-server/history.db /var/lib/sleepfed-server/boards.db \
            /etc/sleepfed/server.toml /etc/sleepfed/tls/ca.key /opt/sleepfed/venv \
            /usr/bin/sleepfed-server; do
  [ -e "$path" ] && echo "$path" >>/results/exists-after-remove
done
stamp purge
apt-get purge -y sleepfed-server >/results/purge.log 2>&1
fact "purge=$?"
stamp purged
for path in /var/lib/sleepfed-server /etc/sleepfed /opt/sleepfed; do
  [ -e "$path" ] && echo "$path" >>/results/exists-after-purge
done
"""
)


def quickstart_block() -> str:
    """The ```sh block after the server-quickstart mark in docs/operations.md."""
    text = DOCS.read_text()
    assert MARK in text, f"{DOCS}: no {MARK} mark"
    after = text[text.index(MARK) :]
    block = re.search(r"```sh\n(.*?)```", after, re.S)
    assert block is not None, "no ```sh block after the mark"
    return block.group(1)


def public_line(key_path: Path) -> str:
    key = serialization.load_ssh_private_key(key_path.read_bytes(), None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and systemd-nspawn need root")
@pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-container missing")
@pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap missing")
def test_server_package_quickstart_trains_upgrades_and_purges(
    tmp_path: Path, walch_dir: Path
) -> None:
    skip_unless_possible()
    times: dict[str, float] = {}
    out = tmp_path / "debs"
    first = build(out, package="server")
    second = build(out, "--build", "2", package="server")
    times["build (cached build root)"] = first.took
    check_package_contents(
        first.deb,
        [
            "./opt/sleepfed/venv/bin/sleepfed-server",
            "./opt/sleepfed/venv/bin/flower-superlink",
            "./lib/systemd/system/sleepfed-server.service",
            "./usr/bin/sleepfed-server",
        ],
    )
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(first.deb), "Depends", "Conflicts"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "nginx-light | nginx" in fields and "Conflicts: sleepfed-agent" in fields, fields
    script = quickstart_block()
    assert f"./{first.deb.name}" in script, (first.deb.name, script)

    lab = NetworkLab()
    agents: list[subprocess.Popen[bytes]] = []
    machine = None
    try:
        link = lab.add_board("srv")
        started = time.monotonic()
        root = machine_root(
            tmp_path / "root", ["systemd", "systemd-sysv", "dbus", "sudo", "curl", "python3"]
        )
        payload = install_runner(root, RUNNER.replace("@DEB2@", second.deb.name))
        for built in (first, second):
            shutil.copy(built.deb, payload / built.deb.name)
        (payload / "quickstart.sh").write_text(script.replace("fl.example.org", link.board_address))
        (root / "etc/apt/apt.conf.d/90sleepfed-test-yes").write_text(
            'APT::Get::Assume-Yes "true";\n'  # the operator answers apt's question with Y
        )
        fetched = run_in(
            root,
            ["apt-get", "install", "--download-only", "-y", f"/opt/payload/{first.deb.name}"],
            timeout=600,
        )
        assert fetched.returncode == 0, fetched.stdout[-2000:] + fetched.stderr[-2000:]
        times["fresh root + systemd + apt cache"] = time.monotonic() - started

        # The boards: their own keys and nights; their requests for the operator.
        (payload / "requests").mkdir()
        configs = []
        for board_id, subject in BOARDS.items():
            configs.append(
                write_board(
                    tmp_path, board_id, PORT, tmp_path / "ca.pem", walch_dir=walch_dir,
                    subject=subject, server_host=link.board_address,
                )
            )  # fmt: skip
            request = EnrollmentRequest(board_id, public_line(tmp_path / board_id / "node.key"))
            (payload / "requests" / f"{board_id}.txt").write_text(request.line() + "\n")

        results = root / "results"
        started = time.monotonic()
        machine = boot(
            root,
            tmp_path / "nspawn.log",
            "sleepfedsrv",
            [f"--network-namespace-path=/run/netns/{link.namespace}"],
        )
        while machine.poll() is None:
            if not agents and (results / "server-up").exists():
                shutil.copy(root / "etc/sleepfed/tls/ca.pem", tmp_path / "ca.pem")
                agents = [start_agent(config) for config in configs]
            time.sleep(0.5)
        times["booted machine (install to purge)"] = time.monotonic() - started
    finally:
        if machine is not None:
            halt(machine)
        stop(agents)
        lab.close()

    runner_log = (results / "runner.log").read_text() if (results / "runner.log").exists() else ""
    context = (tmp_path / "nspawn.log").read_text()[-2000:] + "\n" + runner_log[-5000:]
    assert machine.returncode == 0, context
    facts = props(results / "facts")
    times |= phase_times(
        facts,
        {
            "quickstart (install to status)": ("quickstart", "quickstart_done"),
            "first round": ("quickstart_done", "round1"),
            "upgrade": ("upgrade", "upgraded"),
            "a round after the upgrade": ("upgraded", "round_after_upgrade"),
            "apt-get remove": ("remove", "removed"),
            "apt-get purge": ("purge", "purged"),
        },
    )
    print("\nphases: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))

    # 1. The quickstart ran to its end: the unit enabled and running, the key the group's.
    quickstart_log = (results / "quickstart.log").read_text()
    assert facts.get("quickstart") == "0", quickstart_log[-4000:]
    assert "CA SHA-256 fingerprint" in quickstart_log
    assert "board-a: added" in quickstart_log and "board-b: added" in quickstart_log
    unit = props(results / "after-quickstart")
    assert (unit["ActiveState"], unit["UnitFileState"]) == ("active", "enabled"), unit
    assert unit["FragmentPath"].endswith("/lib/systemd/system/sleepfed-server.service"), unit
    modes = {line.split()[3].rsplit("/", 1)[-1]: line.split()[:3]
             for line in (results / "tls-modes").read_text().splitlines()}  # fmt: skip
    assert modes["tls"] == ["750", "root", "sleepfed"], modes
    assert modes["server.key"] == ["640", "root", "sleepfed"], modes
    assert modes["ca.key"] == ["600", "root", "root"], modes
    assert (results / "system-nginx").read_text().strip() == "inactive"

    # 2. Both boards registered and trained; status, report; the state is the service's.
    assert facts.get("round1") == "0", (results / "journal.txt").read_text()[-4000:]
    boards = {b["board_id"]: b for b in json.loads((results / "boards.json").read_text())}
    assert {b: boards[b]["status"] for b in boards} == dict.fromkeys(BOARDS, "registered")
    history = json.loads((results / "history.json").read_text())
    assert history[0]["global_round"] == 1 and history[0]["train_nodes"] == 2, history[0]
    assert facts.get("status") == "0", (results / "status.json").read_text()
    assert facts.get("report") == "0"
    assert (results / "report.html").stat().st_size > 10_000
    assert (results / "not-the-services").read_text() == ""
    assert (results / "port80").read_text().strip() == "111"  # ECONNREFUSED: no Debian nginx

    # 3. Upgraded: restarted with the new code, the history kept, a further round trained.
    assert facts.get("upgrade") == "0", (results / "upgrade.log").read_text()[-3000:]
    assert (results / "version2").read_text().strip() == "0.1.0+2"
    before, after = props(results / "before-upgrade"), props(results / "after-upgrade")
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"]
    assert facts.get("round_after_upgrade") == "0", (results / "journal.txt").read_text()[-4000:]
    rounds_after = json.loads((results / "history-after-upgrade.json").read_text())
    assert len(rounds_after) > int(facts["rounds_at_restart"]) >= 1
    assert [r["global_round"] for r in rounds_after] == list(range(1, len(rounds_after) + 1))

    # 4. Removed: stopped, disabled, history and certificates kept; purged: all gone.
    assert facts.get("remove") == "0", (results / "remove.log").read_text()[-3000:]
    removed = props(results / "after-remove")
    assert removed["ActiveState"] in ("inactive", "failed") and removed["MainPID"] == "0"
    assert (results / "pids-after-remove").read_text() == ""
    kept = (results / "exists-after-remove").read_text().split()
    assert kept == ["/var/lib/sleepfed-server/history.db", "/var/lib/sleepfed-server/boards.db",
                    "/etc/sleepfed/server.toml", "/etc/sleepfed/tls/ca.key"], kept  # fmt: skip
    assert facts.get("purge") == "0", (results / "purge.log").read_text()[-3000:]
    assert "sleepfed-server: purge deletes the round history" in (results / "purge.log").read_text()
    assert not (results / "exists-after-purge").exists(), (
        results / "exists-after-purge"
    ).read_text()
