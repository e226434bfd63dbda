"""Fixtures shared by the test modules (helpers live in tests/support/helpers.py)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.support.helpers import data_root, start_agent, stop_agent

pytest_plugins = ["tests.support.ci_no_skips"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data folder; skips the test when it is missing."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found under {root} (set SLEEPFED_DATA)")
    return root


@pytest.fixture(scope="session")
def walch_dir(data_dir: Path) -> Path:
    folder = data_dir / "walch2019"
    if not any(folder.glob("*_psg_labels.out")):
        pytest.skip(f"Walch 2019 data not found under {folder}")
    return folder


@pytest.fixture
def agent_procs() -> Iterator[Callable[[Path], subprocess.Popen[bytes]]]:
    """``start(config_path) -> Popen``; every process started is stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config_path: Path) -> subprocess.Popen[bytes]:
        proc = start_agent(config_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_agent(proc, timeout=5)


# The folders a test unpacks a whole Debian root or builds packages in (1-2 GB each): removed
# as soon as the test has passed, so that a run's peak disk use is one machine, not all of them.
BULKY_FOLDERS = ("root", "debs")
CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    return report


def pytest_runtest_teardown(item: pytest.Item) -> None:
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if isinstance(tmp_path, Path) and item.stash.get(CALL_PASSED, False):
        for name in BULKY_FOLDERS:
            shutil.rmtree(tmp_path / name, ignore_errors=True)


# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup). The modules that
# boot Debian machines share debootstrap and package caches, and the Docker modules one
# dockerd: each kind runs on one worker, in order, and first, since each takes a third of the
# run; every other test goes to whichever worker is free.
SERIAL_GROUPS = {
    "debian_machines": (
        "test_deb_arm64.py", "test_deb_server_package.py", "test_deb_package.py",
        "test_fresh_machine.py",
    ),
    "docker": ("test_docker_images.py", "test_compose_isolation.py"),
}  # fmt: skip


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order = list(SERIAL_GROUPS)
    rank: dict[str, int] = {}
    for item in items:
        for group, modules in SERIAL_GROUPS.items():
            if item.path.name in modules:
                item.add_marker(pytest.mark.xdist_group(group))
                rank[item.nodeid] = order.index(group)
    items.sort(key=lambda item: rank.get(item.nodeid, len(order)))


from tests.bluez.fixtures import bluez_fixture  # noqa: E402, F401  (the `bluez` fixture)
