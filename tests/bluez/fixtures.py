"""pytest fixture ``bluez``: a started :class:`BlueZStandIn`, stopped after the test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sleepfed_tools.bluez_standin import BlueZStandIn


@pytest.fixture(name="bluez")
def bluez_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlueZStandIn]:
    """A BlueZ stand-in on a private system bus (``DBUS_SYSTEM_BUS_ADDRESS`` set meanwhile).

    Import it as ``from tests.bluez.fixtures import bluez_fixture``
    (the fixture is named ``bluez``).
    The server's call log (every D-Bus call and signal) stays in pytest's temporary folder
    (``bluez.log_path``; ``bluez.log_text()``).
    """
    pytest.importorskip("dbusmock", reason="python-dbusmock is not installed")
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    from sleepfed_tools.bluez_standin import BlueZStandIn

    with BlueZStandIn(log_dir=tmp_path_factory.mktemp("bluez")) as standin:
        yield standin
