"""`make test` runs the suite on two pytest-xdist workers with ``--dist loadgroup``, and the
modules that share a cache or a dockerd must each stay on one worker (tests/conftest.py
SERIAL_GROUPS). This runs a small suite the same way and checks that they do: with pytest 9.2
and pytest-xdist 3.8 they did not (pyproject pins pytest below 9.2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = """
import pytest
GROUPS = {"machines": ("test_a.py", "test_b.py")}

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        for group, modules in GROUPS.items():
            if item.path.name in modules:
                item.add_marker(pytest.mark.xdist_group(group))
"""
MODULE = """
import os, time
from pathlib import Path

def test_{n}(tmp_path_factory):
    time.sleep(0.3)
    with open(Path(os.environ["GROUP_LOG"]), "a") as log:
        log.write(f"{{os.environ['PYTEST_XDIST_WORKER']}} {name}\\n")
"""


def test_grouped_modules_run_on_one_worker(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    for name in "abcdef":
        text = "".join(MODULE.format(n=f"{name}{i}", name=name) for i in range(3))
        (suite / f"test_{name}.py").write_text(text)
    log = tmp_path / "workers.log"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", str(suite)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**__import__("os").environ, "GROUP_LOG": str(log)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    ran = [line.split() for line in log.read_text().splitlines()]
    assert len(ran) == 18
    grouped = {worker for worker, module in ran if module in "ab"}
    assert len(grouped) == 1, ran  # a and b: one worker
    assert {worker for worker, _ in ran} == {"gw0", "gw1"}  # the rest spread over both
