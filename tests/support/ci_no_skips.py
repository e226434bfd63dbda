"""In CI (``CI=true``, which ``.ci/run`` exports) a test that would skip fails instead: a
missing data set, a missing declared dependency or a root-only test that cannot run must
turn CI red, not leave it green with less tested. Expected failures (xfail) stay as they are.
Loaded by tests/conftest.py; a plugin module of its own so that its test can load it alone."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        reason = str(reason).removeprefix("Skipped: ")
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
