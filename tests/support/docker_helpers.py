"""Shared by the container tests (tests/system/test_docker_images.py,
tests/security/test_compose_isolation.py): their gate, the engine docker/build-local.sh
starts, and the ``images`` fixture that builds (or reuses) the images.

Gate: the tests run only with SLEEPFED_DOCKER_TESTS=1 (which .ci/run sets), and then they
fail, not skip, when the engine or the images cannot be had (build-local.sh installs
docker.io and docker-compose when missing, and the fixture asserts that it succeeded).
A test module opts in with::

    from tests.support.docker_helpers import DOCKER_TESTS, images  # noqa: F401  (the fixture)
    pytestmark = DOCKER_TESTS
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DOCKER_TESTS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("SLEEPFED_DOCKER_TESTS") != "1",
        reason="container image tests run only with SLEEPFED_DOCKER_TESTS=1",
    ),
]

REPO = Path(__file__).resolve().parents[2]
SOCK = "/run/sleepfed-docker.sock"
PIDFILE = Path("/var/lib/sleepfed-docker/dockerd.pid")
DOCKER = "/usr/bin/docker"  # Debian's client (20.10), as build-local.sh
COMPOSE = "/usr/bin/docker-compose"  # Debian's docker-compose 1.29, installed by build-local.sh
UID = 10001  # the images' sleepfed user


def docker_env() -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{SOCK}", "DOCKER_BUILDKIT": "1"}


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env=docker_env(),
    )


def daemon_running() -> bool:
    try:
        return PIDFILE.exists() and (Path("/proc") / PIDFILE.read_text().strip()).exists()
    except OSError:
        return False


@pytest.fixture(scope="module")
def images() -> Iterator[None]:
    """Build (or reuse) the images; stop the engine afterwards if this fixture started it."""
    was_running = daemon_running()
    started = time.time()
    result = subprocess.run(
        [str(REPO / "docker" / "build-local.sh"), "--arch", "amd64,arm64", "--keep-daemon"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"build-local.sh took {time.time() - started:.0f}s")
    try:
        yield
    finally:
        if not was_running and daemon_running():
            pid = int(PIDFILE.read_text().strip())
            os.kill(pid, 15)
            for _ in range(30):
                if not (Path("/proc") / str(pid)).exists():
                    break
                time.sleep(1)
