"""The README's first command on a fresh machine (issue 13): a clone of this repository in a
fresh Debian 12 root file system (tests/support/fresh_root.py: minimal bookworm with Python
3.11, git, make, ca-certificates), the data sets beside it, and `make demo` typed as written.
Not root, it stops at once and says what to run; as root it installs what it needs itself
and the federation ends with every board's night predicted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.fresh_root import run_in, unpack
from tests.support.helpers import REPO

WORK = "/srv/work"  # the clone at WORK/sleepfed, the data sets at WORK/shared/data
DEMO_TIMEOUT = 2400


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn and debootstrap need root")
@pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-container missing")
@pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap missing")
def test_make_demo_on_a_fresh_bookworm(tmp_path: Path, data_dir: Path) -> None:
    root = unpack(tmp_path / "root")
    clone = root / WORK.lstrip("/") / "sleepfed"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    (root / WORK.lstrip("/") / "shared" / "data").mkdir(parents=True)
    binds = [(data_dir, f"{WORK}/shared/data")]
    subprocess.run(["chmod", "-R", "a+rwX", str(root / WORK.lstrip("/"))], check=True)

    # Not root: nothing is installed, one line says what to run, and make fails.
    refused = run_in(root, ["make", "demo"], binds_ro=binds, user="nobody",
                     chdir=f"{WORK}/sleepfed", timeout=120)  # fmt: skip
    # (the container's stdout and stderr both reach nspawn's stdout)
    told = refused.stdout + refused.stderr
    said = [line for line in told.splitlines() if line.startswith("sleepfed:")]
    assert refused.returncode != 0, told[-2000:]
    assert len(said) == 1 and re.search(
        r"run: sudo apt-get install -y --no-install-recommends .*python3-venv.*nginx-light",
        said[0],
    ), told[-2000:]
    assert not (clone / ".venv").exists()

    # As root, typed as the README has it.
    started = time.monotonic()
    demo = run_in(root, ["make", "demo"], binds_ro=binds, chdir=f"{WORK}/sleepfed",
                  timeout=DEMO_TIMEOUT)  # fmt: skip
    took = time.monotonic() - started
    output = demo.stdout + demo.stderr
    print(f"fresh bookworm → make demo result: {took:.0f} s")
    assert demo.returncode == 0, output[-5000:]
    assert "sleepfed: installing system packages:" in output
    agree = re.search(r"(\d)/5 boards' night quality agrees with PSG", output)
    assert agree and int(agree.group(1)) >= 4, output[-3000:]
    aucs = [float(a) for a in re.findall(r"round\s+5 .*held-out AUC (0\.\d+)", output)]
    assert aucs and aucs[-1] >= 0.8, output[-3000:]

    # Once there, the packages are not touched again (no apt-get, no output).
    demo_again = run_in(root, ["sh", "tools/system-packages.sh", "demo"],
                        chdir=f"{WORK}/sleepfed", timeout=60)  # fmt: skip
    assert (demo_again.returncode, demo_again.stdout + demo_again.stderr) == (0, "")
