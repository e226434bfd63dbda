"""The CI rule itself: under CI=true a skipping test fails; outside CI it skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "support"  # where the plugin module is
SKIPPING = """
import pytest

def test_needs_data():
    pytest.skip("data not found")

@pytest.mark.skipif(True, reason="needs root")
def test_needs_root():
    pass

@pytest.mark.xfail(strict=True, reason="a known gap")
def test_known_gap():
    assert False
"""


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "ci_no_skips", "-p", "no:cacheprovider",
         str(tmp_path / "test_skipping.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)},
    )  # fmt: skip


def test_a_skip_fails_in_ci(tmp_path: Path) -> None:
    result = _run(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "skipped in CI, where every test must run: data not found" in result.stdout
    assert "skipped in CI, where every test must run: needs root" in result.stdout
    assert "1 xfailed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]


def test_a_skip_skips_outside_ci(tmp_path: Path) -> None:
    result = _run(tmp_path, "")
    assert result.returncode == 0, result.stdout
    assert "2 skipped, 1 xfailed" in result.stdout
