"""pytest fixture ``bluez``: a started :class:`BlueZStandIn`, stopped after the test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bluez.standin import BlueZStandIn


@pytest.fixture
def bluez() -> Iterator[BlueZStandIn]:
    """A BlueZ stand-in on a private system bus (``DBUS_SYSTEM_BUS_ADDRESS`` set meanwhile)."""
    pytest.importorskip("dbusmock", reason="python-dbusmock is not installed")
    pytest.importorskip("bleak", reason="bleak is not installed")
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    from bluez.standin import BlueZStandIn

    with BlueZStandIn() as standin:
        yield standin
