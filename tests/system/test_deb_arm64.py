"""The board's Debian package for arm64 (a Raspberry Pi, a Jetson) on this amd64 host under
QEMU user emulation: ``packaging/deb/build.sh --arch arm64`` builds
``sleepfed-agent_…_arm64.deb`` (the cached arm64 build root and venv reused), and a FRESH arm64
Debian 12 root (tests/support/fresh_root.py, debootstrapped once and cached) with systemd and
dbus boots under its own, emulated systemd with ``systemd-nspawn -b``: ``apt-get install
./sleepfed-agent_…_arm64.deb``, ``sleepfed-enroll`` against a federation server this test runs
on the host (127.0.0.1, amd64), ``systemctl start sleepfed-agent``, a Walch night replayed
over a pseudo-terminal, one federated round.

It runs tests/system/test_deb_package.py's RUNNER (and its SENSOR, its night) up to the end of
its part 2: upgrade, remove and purge are the same architecture-independent maintainer
scripts, tested there on amd64. The assertions are those of parts 1-2.

Booted, not unbooted: the arm64 systemd 252 boots under qemu-user (binfmt_misc with the F
flag) in a few seconds and runs units, Type=notify included. One directive of the shipped
unit cannot work there, and a test-only drop-in turns it off: ``PrivateUsers=yes`` fails
with 217/USER, "Failed to set up user namespacing: Invalid argument". Every emulated process
has a second thread (qemu's own), and the kernel refuses ``unshare(CLONE_NEWUSER)`` to a
multithreaded process (``unshare --user true`` fails the same way in the arm64 root, works on
the host); a real arm64 board runs native code and keeps it. Also under emulation, systemd
installs no seccomp filter of its own (the agent has the container's 5 filters, like PID 1),
so SystemCallFilter=, MemoryDenyWriteExecute= and RestrictNamespaces= are not in force here:
this test shows the package installs and works on arm64, not that its sandbox holds there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.deb_machine import (
    build,
    check_package_contents,
    machine_root,
    phase_times,
    props,
)
from tests.system.test_deb_package import (
    BOARD_PHASES,
    RUNNER,
    check_installed_and_trained,
    run_board_machine,
)

# Parts 1-2 of the amd64 runner; its EXIT trap still collects the journal and powers off.
UPGRADE = "# -- 3. upgrade"
# Under QEMU only: the unit's PrivateUsers=yes fails with 217/USER (module docstring).
PTY_DROP_IN = "/etc/systemd/system/sleepfed-agent.service.d/pty.conf\n"
QEMU_DROP_IN = (
    "# QEMU user emulation: no user namespace for an emulated process (qemu's own thread)\n"
    "printf '[Service]\\nPrivateUsers=no\\n' "
    ">/etc/systemd/system/sleepfed-agent.service.d/qemu.conf\n"
)
assert UPGRADE in RUNNER and RUNNER.count(PTY_DROP_IN) == 1
RUNNER_ARM64 = RUNNER.split(UPGRADE)[0].replace(PTY_DROP_IN, PTY_DROP_IN + QEMU_DROP_IN) + (
    # the sandbox under emulation: the agent's seccomp filters against PID 1's (nspawn's)
    "grep -H Seccomp_filters /proc/1/status "
    '"/proc/$(systemctl show -p MainPID --value sleepfed-agent)/status" >/results/seccomp\n'
)
# The server's wait for the board's training reply: under QEMU the board took 29-33 s from
# its ingested night to a joined round (SuperNode, ClientApp, scikit-learn all emulated); the
# default 120 s leaves too little headroom on a shared 2-CPU runner.
ROUND_TIMEOUT = 300.0


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and systemd-nspawn need root")
@pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-container missing")
@pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap missing")
@pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None, reason="qemu-user-static missing")
def test_arm64_deb_installs_enrolls_and_trains_under_qemu(tmp_path: Path, walch_dir: Path) -> None:
    times: dict[str, float] = {}
    built = build(tmp_path / "debs", arch="arm64")
    times["build"] = built.took
    assert built.deb.name == "sleepfed-agent_0.1.0_arm64.deb", built.deb
    check_package_contents(
        built.deb, ["./opt/sleepfed/venv/bin/sleepfed-agent", "./usr/bin/sleepfed-enroll"]
    )
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(built.deb), "Architecture"], capture_output=True, text=True
    ).stdout
    assert fields.strip() == "arm64"

    started = time.monotonic()
    root = machine_root(tmp_path / "root", ["systemd", "systemd-sysv", "dbus"], arch="arm64")
    times["fresh arm64 root + systemd"] = time.monotonic() - started
    machine = subprocess.run(
        ["chroot", str(root), "uname", "-m"], capture_output=True, text=True, check=True
    )
    assert machine.stdout.strip() == "aarch64"  # emulated, not the host's amd64

    run = run_board_machine(
        tmp_path, root, walch_dir, RUNNER_ARM64, [built.deb], "sleepfedarm64", ROUND_TIMEOUT
    )
    results = run.results
    times["booted machine (boot to poweroff)"] = run.took
    times |= phase_times(props(results / "facts"), BOARD_PHASES)
    print("\narm64 phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    if (results / "seccomp").exists():
        print("seccomp: " + " ".join((results / "seccomp").read_text().split()))

    trained = check_installed_and_trained(
        tmp_path, results, run.server_rc, run.readings, run.labels
    )
    assert trained["rounds"]["joined"] == 1, trained["rounds"]
    assert props(results / "trained")["NRestarts"] == "0", props(results / "trained")
