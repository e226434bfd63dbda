"""What the Debian package tests share: building a package with ``packaging/deb/build.sh``,
a FRESH Debian 12 root (tests/support/fresh_root.py) made a machine that boots (systemd,
dbus, and whatever else the test's user would have), booting it under its own systemd with
``systemd-nspawn -b`` with a runner script as a oneshot unit, and reading what the runner
wrote to /results."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.fresh_root import CACHE as FRESH_CACHE
from tests.support.fresh_root import run_in, unpack
from tests.support.helpers import REPO

BUILD = REPO / "packaging" / "deb" / "build.sh"
DEB_CACHE = Path(os.environ.get("SLEEPFED_DEB_CACHE", "/var/lib/sleepfed-deb"))
BOOT_TIMEOUT = 1500
# How long a machine root (a fresh root with systemd and the like) is reused; its apt lists
# age with it, and a Debian point release removes the versions they name.
MACHINE_CACHE_DAYS = 3

RUNNER_UNIT = """[Unit]
Description=sleepfed test runner
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/opt/payload/runner.sh
"""


@dataclass(frozen=True)
class Built:
    deb: Path
    took: float
    cached_root: bool
    output: str


def build(out: Path, *extra: str, package: str = "agent", arch: str = "amd64") -> Built:
    """``build.sh --package PACKAGE --arch ARCH --out OUT EXTRA…``; the .deb it made."""
    cached = (DEB_CACHE / f"bookworm-{arch}-build.tar").exists()
    started = time.monotonic()
    done = subprocess.run(
        [str(BUILD), "--package", package, "--arch", arch, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    deb = Path(last.split()[0])
    assert deb.is_file() and deb.parent == out, done.stdout[-2000:]
    return Built(deb, took, cached, done.stdout)


# What no package may hold: the dev tools, the test extra, dbus-python.
FORBIDDEN = re.compile(
    r"site-packages/(sleepfed_tools|_?pytest|dbus|dbusmock|hypothesis|ruff|psutil)[/-]"
)


def check_package_contents(deb: Path, wanted: Sequence[str]) -> list[str]:
    """``dpkg-deb -c``: the ``wanted`` paths are there; nothing forbidden, no byte-code, no
    pip; every entry root's and writable by root alone (the root-run postinst and the
    service execute them). Returns the paths."""
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    entries = [line.split() for line in listing.splitlines()]
    paths = [e[5] for e in entries]
    for path in wanted:
        assert path in paths, path
    assert not [p for p in paths if FORBIDDEN.search(p)]
    assert not [p for p in paths if "__pycache__" in p or p.endswith("/pip")]
    assert {e[1] for e in entries} == {"root/root"}
    writable = [e[5] for e in entries if e[0][0] != "l" and "w" in (e[0][5], e[0][8])]
    assert not writable, writable[:5]
    return paths


def machine_root(dest: Path, packages: Sequence[str], *, arch: str = "amd64") -> Path:
    """A fresh bookworm of ``arch`` at ``dest`` with ``packages`` installed (what the test's
    user has besides the package); arm64 runs under QEMU. The root with those packages is
    cached beside the fresh root's tarball for MACHINE_CACHE_DAYS: its apt lists must stay
    current enough for ``apt install`` to fetch the package's dependencies."""
    key = hashlib.sha256(" ".join([arch, *sorted(packages)]).encode()).hexdigest()[:12]
    cached = FRESH_CACHE / f"machine-{arch}-{key}.tar"
    if cached.exists() and time.time() - cached.stat().st_mtime < MACHINE_CACHE_DAYS * 86400:
        dest.mkdir(parents=True)
        subprocess.run(["tar", "--numeric-owner", "-C", str(dest), "-xf", str(cached)], check=True)
        return dest
    root = unpack(dest, arch=arch)
    command = (
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        f"--no-install-recommends {' '.join(packages)} && apt-get clean"
    )
    prepared = run_in(root, ["bash", "-c", command], timeout=1500)
    assert prepared.returncode == 0, prepared.stdout[-2000:] + prepared.stderr[-2000:]
    subprocess.run(
        ["tar", "--numeric-owner", "-C", str(root), "-cf", f"{cached}.new", "."], check=True
    )
    os.replace(f"{cached}.new", cached)
    return root


def install_runner(root: Path, script: str) -> Path:
    """The runner at /opt/payload/runner.sh, started by the booted machine as a oneshot
    unit; /opt/payload (returned) takes what else it needs, /results what it finds."""
    payload = root / "opt" / "payload"
    payload.mkdir(parents=True, exist_ok=True)
    (root / "results").mkdir(exist_ok=True)
    runner = payload / "runner.sh"
    runner.write_text(script)
    runner.chmod(0o755)
    (root / "etc/systemd/system/sleepfed-runner.service").write_text(RUNNER_UNIT)
    return payload


def boot(
    root: Path, log_path: Path, name: str, nspawn_options: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """Boot ``root`` under its own systemd (the recipe of tests/system/test_systemd.py: a
    private mount namespace with a tmpfs on /run/systemd, --keep-unit --register=no); the
    runner unit is started by systemd.wants= and powers the machine off."""
    nspawn = [
        "timeout", str(BOOT_TIMEOUT), "systemd-nspawn", "--console=pipe", "--register=no",
        "--keep-unit", "--resolv-conf=copy-host", "-D", str(root), "-M", name,
        *nspawn_options, "-b", "--", "systemd.firstboot=off",
        "systemd.wants=sleepfed-runner.service", "systemd.show_status=0",
    ]  # fmt: skip
    script = "mount -t tmpfs tmpfs /run/systemd && exec " + " ".join(nspawn)
    with log_path.open("w") as log:
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # halt() reaches systemd-nspawn below `timeout`
        )


def halt(machine: subprocess.Popen[str]) -> None:
    """Stop a machine that is still running (a failed test): SIGTERM makes systemd-nspawn
    shut the machine down; whatever is left after 30 s is killed."""
    if machine.poll() is not None:
        return
    os.killpg(machine.pid, signal.SIGTERM)
    try:
        machine.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(machine.pid, signal.SIGKILL)
        machine.wait()


def props(path: Path) -> dict[str, str]:
    """``key=value`` lines (``systemctl show``, the runner's facts) as a dict."""
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split("=", 1) for line in lines if "=" in line)


def phase_times(facts: dict[str, str], phases: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Seconds between the runner's ``t_<name>`` stamps, per phase (first, last)."""
    stamps = {k[2:]: float(v) for k, v in facts.items() if k.startswith("t_")}
    return {
        phase: stamps[b] - stamps[a]
        for phase, (a, b) in phases.items()
        if a in stamps and b in stamps
    }


# The runner's shell helpers: facts and time stamps for the test, the journal at the end.
RUNNER_PRELUDE = r"""#!/bin/bash
# Runs inside the booted fresh root as a oneshot unit; writes its findings to /results.
exec >/results/runner.log 2>&1
set -x
export DEBIAN_FRONTEND=noninteractive
fact() { echo "$*" >>/results/facts; }
stamp() { fact "t_$1=$(date +%s.%N)"; }
"""
